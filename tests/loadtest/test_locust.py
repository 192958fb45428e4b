"""Locust, headless, for a few seconds against a real server: every user class, no failures."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.serving import RunningServer

USER_CLASSES = ("InteractiveUser", "BatchJobUser", "EmbeddingUser", "MixedUser")


@pytest.fixture
def server(repository: Path, tmp_path: Path) -> Iterator[RunningServer]:
    """A server of its own, with overload shedding off. This test is about the Locust users
    and the locustfile; with Locust and the server sharing CI's two cores, a moment's backlog
    has the server refuse a 15-ms call now and then, as it should (tests/server/test_backlog.py,
    `make soak`), and Locust counts that as a failure."""
    running = RunningServer(repository, tmp_path, env={"SLIMSERVE_SHED_LATE": "false"})
    yield running
    assert running.stop() == 0


def test_every_user_class_runs_without_failures(server: RunningServer, tmp_path: Path) -> None:
    prefix = tmp_path / "run"
    # Locust runs in its own process: it monkey-patches the standard library with gevent.
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless",
         "--host", server.address,
         "-u", "8", "-r", "8", "-t", "8s", "--stop-timeout", "10", "--csv", str(prefix), "--only-summary",
         *USER_CLASSES],
        capture_output=True, text=True, timeout=180, check=False, cwd=Path(__file__).parents[2],
        env={**os.environ, "LOCUST_QUIET_SUMMARY": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert summary["failures"] == 0
    for user_class in USER_CLASSES:
        assert summary["calls_per_user_class"].get(user_class, 0) > 0, (user_class, summary)
    assert summary["digits_rows_scored"] > 0 and 0.0 <= summary["digits_correct_share"] <= 1.0
    with open(f"{prefix}_stats.csv") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    # Request names carry the variant that served the call: statistics are per variant.
    names = set(rows) - {"Aggregated"}
    assert names and all(name.split("/")[0] in ("digits", "minilm") and "/" in name for name in names)
    assert all(name.split("/")[1] in ("fp32", "int8", "pruned", "distilled") for name in names)
