"""The background build's output relay, on a real child process and a real pipe."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from slimserve.server.process.background_build import BackgroundBuild

# A megabyte of progress-bar redraws ('\r', never '\n'), then a publication and a failure.
CHILD = r"""
import sys
for i in range(20000):
    sys.stdout.write(f"\rbuilding: {i:>6} of 20000 steps " + "#" * 30)
sys.stdout.write("\nINFO variants.build: digits: published fp32, int8 after 3 s\n")
sys.stdout.flush()
sys.exit(3)
"""


def test_long_progress_lines_never_block_the_child_and_progress_is_relayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> BackgroundBuild:
        build = BackgroundBuild(tmp_path, command=[sys.executable, "-c", CHILD])
        await build.start()
        await asyncio.wait_for(build.wait(), timeout=60)  # the relay hung forever before the fix
        return build

    with caplog.at_level(logging.INFO, logger="slimserve.server.process.background_build"):
        build = asyncio.run(scenario())
    assert build.exit_code == 3 and not build.running
    messages = [r.getMessage() for r in caplog.records]
    assert "build: digits: published fp32, int8 after 3 s" in messages
    assert any("background build failed (exit code 3)" in m for m in messages)
    assert not any("building:" in m for m in messages)  # progress bars are not relayed


def test_what_is_still_building(tmp_path: Path) -> None:
    async def scenario() -> None:
        build = BackgroundBuild(tmp_path, command=[sys.executable, "-c", "import time; time.sleep(60)"])
        hosted = {"digits": ["fp32", "int8"]}
        assert build.building({}) == []  # not started: nothing is being built
        await build.start()
        try:
            assert ("minilm", "distilled") in build.building(hosted)
            assert ("digits", "int8") not in build.building(hosted)
        finally:
            await build.stop()
        assert build.building(hosted) == []  # stopped: nothing is being built any more

    asyncio.run(scenario())
