"""A session-wide server over the tiny repository, and the reference sessions to compare with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.running import RunningServer


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(repository, tmp_path_factory.mktemp("server"))
    yield running
    assert running.stop() == 0
