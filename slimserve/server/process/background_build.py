"""`serve --build-missing`: build the default repository while serving what is already built.

The server starts on whatever the repository holds (possibly nothing: health NOT_SERVING)
and runs `slimserve build --skip-existing --staged` as a child process, at a lower CPU
priority than serving. The build publishes every model's fp32 and int8 first, then the
other variants; the server's repository poller loads each publication as it appears, so
the first answers come within minutes of a fresh clone instead of after the whole build.
The child's progress goes to the server's log: its publications, errors and the progress
lines of `slimserve.variants.progress` (stage, step, epoch, elapsed, remaining estimate per
model, a line at each change and at most one per PROGRESS_INTERVAL_S otherwise). tqdm bars
are switched off in the child (TQDM_DISABLE) and never relayed. The progress lines are also
parsed into a snapshot per (model, variant) that ListVariants reports for the variants still
being built. SIGTERM to the server stops the build.

The child trains with `--share-cores` (variants.core_sharing): on every core while the rest of
the machine is quiet, on one thread while serving keeps it busy. torch's OpenMP threads spin at
their barriers; once the niced build loses a core to serving, a thread spinning for a partner
that lost its core burns the build's own share (a MiniLM-sized step on a busy 2-core AMD EPYC:
2.8-7x the CPU seconds), and one thread has no partner to wait for. The child used to wait
passively instead (OMP_WAIT_POLICY=PASSIVE), which cost 7-28 % of its time on a quiet
machine (docs/variants.md, "Sharing the cores"); an OMP_WAIT_POLICY in the server's
environment still reaches the child.

Thread: owned by the event loop (an asyncio subprocess and the task relaying its output).
The relay task is the only writer of the progress snapshot: it replaces the whole mapping
(an immutable one) at each line, so a reader holds one consistent snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from slimserve.server.process.workers import WORKER_SETTINGS_ENV
from slimserve.variants.progress import PREFIX, ProgressLine
from slimserve.variants.recipes import default_recipes, load_recipes, planned_variants

log = logging.getLogger(__name__)
LOG_PREFIX = re.compile(r"^(DEBUG|INFO|WARNING|ERROR) [\w.]+: ")  # the child's own log format
CHUNK_BYTES = 64 * 1024
STOP_TIMEOUT_S = 10.0  # for the build to exit after SIGTERM
BUILD_NICENESS = 10  # the build yields the CPU to serving
# What is relayed to the server's log (progress bars are not; nor is the int8 selection chatter);
# "training on": variants.core_sharing changing the build's thread count.
RELAYED = (f"{PREFIX} model=", "published", "built", "already built", "missing", "error", "Error", "Traceback",
           "training on")  # fmt: skip
CHILD_ENV = {"TQDM_DISABLE": "1"}  # bars redraw for a terminal; the child writes into a pipe
NICE = shutil.which("nice") or "/usr/bin/nice"  # coreutils: on every Debian system and image


def _withheld(variable: str) -> bool:
    """Not for the build child: the worker settings and every token (server or client)."""
    return variable == WORKER_SETTINGS_ENV or (variable.startswith("SLIMSERVE_") and "TOKEN" in variable)


class BackgroundBuild:
    """The build child process, and which variants it has still to publish.

    `command` is the child's argv: by default `slimserve build --skip-existing --staged` of
    `repository` with `recipe_files`; a test gives another program to run and relay. The
    child's progress lines, stamped with `clock` when read, are kept per (model, variant);
    `progress()` ages them to the moment it is asked (variants.progress.ProgressLine.aged),
    so ListVariants shows a stage's elapsed time growing between the child's lines."""

    def __init__(
        self,
        repository: Path,
        recipe_files: list[Path] | None = None,
        command: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        self.recipe_files = recipe_files or []
        self.command = list(command) if command is not None else [
            sys.executable, "-m", "slimserve.cli", "build", "--repository", str(repository),
            "--skip-existing", "--staged", "--share-cores", *(f"--recipe={path}" for path in self.recipe_files),
        ]  # fmt: skip
        recipes = [r for path in self.recipe_files for r in load_recipes(path)] or default_recipes()
        self.planned = {recipe.name: planned_variants(recipe) for recipe in recipes}
        self.exit_code: int | None = None
        self._clock = clock
        self._progress: Mapping[tuple[str, str], tuple[ProgressLine, float]] = MappingProxyType({})
        self._process: asyncio.subprocess.Process | None = None
        self._relay: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._process is not None and self.exit_code is None

    def building(self, hosted: dict[str, list[str]]) -> list[tuple[str, str]]:
        """(model, variant) planned and not yet hosted, while the build runs."""
        if not self.running:
            return []
        return [(m, v) for m, variants in self.planned.items() for v in variants if v not in hosted.get(m, [])]

    def progress(self) -> Mapping[tuple[str, str], ProgressLine]:
        """The latest progress line of each (model, variant) the running build has reported
        on, aged to now: its elapsed time grown and its estimate shrunk by the time since."""
        if not self.running:
            return {}
        snapshot, now = self._progress, self._clock()
        return {key: line.aged(now - read_at) for key, (line, read_at) in snapshot.items()}

    def _record(self, line: ProgressLine) -> None:
        """Publish a new snapshot holding `line` for each of its variants."""
        read_at = self._clock()
        updated = dict(self._progress)
        updated.update({(line.model, variant): (line, read_at) for variant in line.variants})
        self._progress = MappingProxyType(updated)

    async def start(self) -> None:
        self.repository.mkdir(parents=True, exist_ok=True)
        # The child is no worker of `--workers` (its log lines would carry worker 0's prefix),
        # and it serves nothing: it gets no token. It is niced by `nice`, not by a preexec_fn,
        # which runs Python between fork and exec in a process whose other threads (gRPC's,
        # ONNX Runtime's) may hold locks the forked copy can never release.
        env = {k: v for k, v in os.environ.items() if not _withheld(k)} | CHILD_ENV
        self._process = await asyncio.create_subprocess_exec(
            NICE, "-n", str(BUILD_NICENESS), *self.command, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env,
        )  # fmt: skip
        log.info("building the missing models in the background (pid %d); serving what is ready meanwhile",
                 self._process.pid)  # fmt: skip
        self._relay = asyncio.get_running_loop().create_task(self._follow(), name="background-build")

    async def _follow(self) -> None:
        """Relay the child's progress lines (and keep the parsed ones), and drain everything
        else: a pipe nobody reads fills and blocks the child. Read in chunks, not lines:
        progress bars redraw with '\r' and never end a line, which overruns asyncio's line
        reader (that hung a first build)."""
        assert self._process is not None and self._process.stdout is not None
        pending = ""
        while chunk := await self._process.stdout.read(CHUNK_BYTES):
            *lines, pending = (pending + chunk.decode(errors="replace")).replace("\r", "\n").split("\n")
            pending = pending[-CHUNK_BYTES:]  # a line that never ends is cut, never hoarded
            for line in lines:
                if any(word in line for word in RELAYED):
                    text = LOG_PREFIX.sub("", line.strip())
                    log.info("build: %s", text)
                    if (progress := ProgressLine.parse(text)) is not None:
                        self._record(progress)
        self.exit_code = await self._process.wait()
        if self.exit_code == 0:
            log.info("background build finished: every variant is built")
        elif self._stopping:
            log.info("background build stopped (exit code %d); the next one builds what is missing", self.exit_code)
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
        self._stopping = True
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
