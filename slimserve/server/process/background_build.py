"""`serve --build-missing`: build the default repository while serving what is already built.

The server starts on whatever the repository holds (possibly nothing: health NOT_SERVING)
and runs `slimserve build --skip-existing --staged` as a child process, at a lower CPU
priority than serving. The build publishes every model's fp32 and int8 first, then the
other variants; the server's repository poller loads each publication as it appears, so
the first answers come within minutes of a fresh clone instead of after the whole build.
The child's progress lines go to the server's log; SIGTERM to the server stops the build.

Thread: owned by the event loop (an asyncio subprocess and the task relaying its output).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from slimserve.variants.recipes import default_recipes, load_recipes, planned_variants

log = logging.getLogger(__name__)
LOG_PREFIX = re.compile(r"^(DEBUG|INFO|WARNING|ERROR) [\w.]+: ")  # the child's own log format
CHUNK_BYTES = 64 * 1024
STOP_TIMEOUT_S = 10.0  # for the build to exit after SIGTERM
BUILD_NICENESS = 10  # the build yields the CPU to serving
RELAYED = ("published", "built", "already built", "missing", "error", "Error", "Traceback")  # progress bars are not


class BackgroundBuild:
    """The build child process, and which variants it has still to publish.

    `command` is the child's argv: by default `slimserve build --skip-existing --staged` of
    `repository` with `recipe_files`; a test gives another program to run and relay."""

    def __init__(
        self, repository: Path, recipe_files: list[Path] | None = None, command: Sequence[str] | None = None
    ) -> None:
        self.repository = repository
        self.recipe_files = recipe_files or []
        self.command = list(command) if command is not None else [
            sys.executable, "-m", "slimserve.cli", "build", "--repository", str(repository),
            "--skip-existing", "--staged", *(f"--recipe={path}" for path in self.recipe_files),
        ]  # fmt: skip
        recipes = [r for path in self.recipe_files for r in load_recipes(path)] or default_recipes()
        self.planned = {recipe.name: planned_variants(recipe) for recipe in recipes}
        self.exit_code: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._relay: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self.exit_code is None

    def building(self, hosted: dict[str, list[str]]) -> list[tuple[str, str]]:
        """(model, variant) planned and not yet hosted, while the build runs."""
        if not self.running:
            return []
        return [(m, v) for m, variants in self.planned.items() for v in variants if v not in hosted.get(m, [])]

    async def start(self) -> None:
        self.repository.mkdir(parents=True, exist_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            *self.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=lambda: os.nice(BUILD_NICENESS),
        )  # fmt: skip
        log.info("building the missing models in the background (pid %d); serving what is ready meanwhile",
                 self._process.pid)  # fmt: skip
        self._relay = asyncio.get_running_loop().create_task(self._follow(), name="background-build")

    async def _follow(self) -> None:
        """Relay the child's progress lines, and drain everything else: a pipe nobody reads
        fills and blocks the child. Read in chunks, not lines: progress bars redraw with '\r'
        and never end a line, which overruns asyncio's line reader (that hung a first build)."""
        assert self._process is not None and self._process.stdout is not None
        pending = ""
        while chunk := await self._process.stdout.read(CHUNK_BYTES):
            *lines, pending = (pending + chunk.decode(errors="replace")).replace("\r", "\n").split("\n")
            pending = pending[-CHUNK_BYTES:]  # a line that never ends is cut, never hoarded
            for line in lines:
                if any(word in line for word in RELAYED):
                    log.info("build: %s", LOG_PREFIX.sub("", line.strip()))
        self.exit_code = await self._process.wait()
        if self.exit_code == 0:
            log.info("background build finished: every variant is built")
        else:
            log.error("background build failed (exit code %d); serving what was published", self.exit_code)

    async def wait(self) -> int | None:
        """Wait until the child has exited and all its output is relayed; its exit code (None
        if it was never started). Waiting is cancelled alone: the relay goes on."""
        if self._relay is not None:
            await asyncio.shield(self._relay)
        return self.exit_code

    async def stop(self) -> None:
        """Terminate the build (it resumes next time: --skip-existing); never raises, so that
        the server's shutdown goes on whatever happened to the build."""
        try:
            if self._process is not None and self.exit_code is None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.terminate()
                try:
                    await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    self._process.kill()
            if self._relay is not None:
                await asyncio.wait_for(self._relay, STOP_TIMEOUT_S)
        except Exception:
            log.exception("stopping the background build failed; shutting down anyway")
