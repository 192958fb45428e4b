"""Locust, headless, against real servers: every user class runs; refused calls are retried
and reported as shed, not failures; a real failure, or a run that answered nothing, fails."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.outcomes import ANSWERED_TYPE, RETRY_POLICY, SHED_TYPE
from loadtest.serving import RunningServer, wait_until

ROOT = Path(__file__).parents[2]
USER_CLASSES = ("InteractiveUser", "BatchJobUser", "EmbeddingUser", "MixedUser")
LOCUST_TIMEOUT_S = 180.0  # a Locust run, its start (~15 s of imports on a busy 2-core machine) included
PHASE_TIMEOUT_S = 120.0  # for Locust's CSV files to show what a phase of a run is waiting for
DRAIN_S = 3600  # longer than any run: the server refuses every new call until the test kills it


def locust_command(host: str, prefix: Path, users: int, *extra: str) -> list[str]:
    """Locust, headless, quiet, its CSV files and summary at `prefix`; `extra`: run time,
    the locustfile's options and the user classes. It runs in its own process: it
    monkey-patches the standard library with gevent."""
    return [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless", "--host", host,
            "-u", str(users), "-r", str(users), "--stop-timeout", "10", "--csv", str(prefix), "--only-summary",
            *extra]  # fmt: skip


def run_locust(command: list[str]) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "LOCUST_QUIET_SUMMARY": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=LOCUST_TIMEOUT_S, check=False,
                          cwd=ROOT, env=environment)  # fmt: skip


def stats_rows(prefix: Path) -> list[dict[str, str]]:
    """Rows of Locust's `_stats.csv` (rewritten every second, flushed every few while it runs)."""
    try:
        with open(f"{prefix}_stats.csv") as handle:
            return list(csv.DictReader(handle))
    except (OSError, csv.Error):
        return []


def calls_of_type(prefix: Path, request_type: str) -> int:
    """Calls Locust reported with `request_type` so far (0 while the file is being rewritten)."""
    try:
        return sum(int(row["Request Count"]) for row in stats_rows(prefix) if row["Type"] == request_type)
    except (KeyError, ValueError):
        return 0


def read_summary(prefix: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(Path(f"{prefix}_summary.json").read_text())
    return summary


@pytest.fixture
def server(repository: Path, tmp_path: Path) -> Iterator[RunningServer]:
    """A server of its own with the default settings, overload shedding on: with Locust
    and the server sharing CI's two cores, a moment's backlog has the server refuse a
    15-ms call now and then, as it should (tests/server/test_backlog.py, `make soak`)."""
    running = RunningServer(repository, tmp_path)
    yield running
    assert running.stop() == 0


@pytest.fixture
def digits_server(digits_repo: Path, tmp_path: Path) -> Iterator[RunningServer]:
    """A server whose repository holds `digits` alone: a call to `minilm` is NOT_FOUND."""
    running = RunningServer(digits_repo, tmp_path)
    yield running
    assert running.stop() == 0


def test_every_user_class_runs_without_failures(server: RunningServer, tmp_path: Path) -> None:
    prefix = tmp_path / "run"
    result = run_locust(locust_command(server.address, prefix, 8, "-t", "8s", *USER_CLASSES))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(prefix)
    assert summary["failures"] == 0 and summary["answered"] > 0
    assert summary["requests"] == summary["answered"] + summary["shed"]
    for user_class in USER_CLASSES:
        assert summary["calls_per_user_class"].get(user_class, 0) > 0, (user_class, summary)
    assert summary["digits_rows_scored"] > 0 and 0.0 <= summary["digits_correct_share"] <= 1.0
    rows = stats_rows(prefix)
    assert rows and all(int(row["Failure Count"]) == 0 for row in rows)
    # Answered calls are named after the variant that served them: statistics are per variant.
    names = {row["Name"] for row in rows if row["Type"] == ANSWERED_TYPE}
    assert names and all(name.split("/")[0] in ("digits", "minilm") and "/" in name for name in names)
    assert all(name.split("/")[1] in ("fp32", "int8", "pruned", "distilled") for name in names)


def test_refused_calls_are_retried_reported_as_shed_and_do_not_fail_the_run(digits_repo: Path, tmp_path: Path) -> None:
    """Calls are answered, then the server drains (SIGTERM): for DRAIN_S it refuses every
    new call UNAVAILABLE, as it refuses a call it sheds under load — deterministically
    here, where load shedding depends on timing. Each such call is retried up to the
    policy's attempts, then reported as shed with the SLO it stated; Locust exits 0."""
    server = RunningServer(digits_repo, tmp_path, env={"SLIMSERVE_DRAIN_S": str(DRAIN_S)})
    prefix, log_path = tmp_path / "run", tmp_path / "locust.log"
    command = locust_command(server.address, prefix, 4, "--slo-ms", "50", "InteractiveUser", "BatchJobUser")
    with open(log_path, "w") as log:
        locust = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  env={**os.environ, "LOCUST_QUIET_SUMMARY": "1"})  # fmt: skip

    def reported(request_type: str, calls: int) -> bool:
        if locust.poll() is not None:
            raise AssertionError(f"Locust exited {locust.returncode} early:\n{log_path.read_text()[-3000:]}")
        return calls_of_type(prefix, request_type) >= calls

    try:
        wait_until(lambda: reported(ANSWERED_TYPE, 20), PHASE_TIMEOUT_S, "20 answered calls")
        server.process.send_signal(signal.SIGTERM)  # drain: every new call is refused UNAVAILABLE
        wait_until(lambda: reported(SHED_TYPE, 5), PHASE_TIMEOUT_S, "5 shed calls")
        locust.send_signal(signal.SIGTERM)  # as Ctrl-C would: Locust stops, reports and exits
        locust.wait(timeout=LOCUST_TIMEOUT_S)
    finally:
        if locust.poll() is None:
            locust.kill()
            locust.wait()
        server.process.kill()  # still draining
        server.stop()
    output = log_path.read_text()
    assert locust.returncode == 0, output[-3000:]
    summary = read_summary(prefix)
    assert summary["failures"] == 0 and summary["run_failure"] is None
    assert summary["answered"] >= 20 and summary["shed"] >= 5
    assert summary["requests"] == summary["answered"] + summary["shed"]
    # Shed calls are their own entries, named after what was asked and the SLO it stated.
    assert summary["shed_per_name"] == {"digits/routed slo_ms=50": summary["shed"]}
    shed_rows = [row for row in stats_rows(prefix) if row["Type"] == SHED_TYPE]
    assert [row["Name"] for row in shed_rows] == ["digits/routed slo_ms=50"]
    # Locust's CSV is its last once-a-second snapshot; the summary counts every call.
    assert 0 < int(shed_rows[0]["Request Count"]) <= summary["shed"] and int(shed_rows[0]["Failure Count"]) == 0
    # Every shed call was refused on each of the policy's attempts: retried that often less one.
    assert summary["retries"] >= summary["shed"] * (RETRY_POLICY.max_attempts - 1)


def test_a_real_failure_fails_the_run_whatever_else_was_answered(digits_server: RunningServer, tmp_path: Path) -> None:
    """`minilm` is not in the repository: the EmbeddingUser's calls end NOT_FOUND, a
    failure, not retried; the InteractiveUser's are answered; Locust exits 1."""
    prefix = tmp_path / "run"
    users = ("InteractiveUser", "EmbeddingUser")
    result = run_locust(locust_command(digits_server.address, prefix, 2, "-t", "3s", *users))
    assert result.returncode == 1, result.stderr[-3000:]
    summary = read_summary(prefix)
    assert summary["answered"] > 0 and summary["failures"] > 0 and summary["run_failure"] is None
    assert summary["failures_by_code"] == {"NOT_FOUND": summary["failures"]}
    rows = {row["Name"]: row for row in stats_rows(prefix) if row["Type"] == ANSWERED_TYPE}
    assert int(rows["minilm/routed"]["Failure Count"]) == int(rows["minilm/routed"]["Request Count"]) > 0


def test_a_run_that_answered_nothing_fails(tmp_path: Path) -> None:
    """Nothing listens on the port (bound, never listening: connections are refused).
    gRPC reports that UNAVAILABLE, as it reports a refusal: every call is shed after its
    retries, no call failed, and still the run fails — it measured nothing."""
    prefix = tmp_path / "run"
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{bound.getsockname()[1]}"
        result = run_locust(locust_command(host, prefix, 1, "-t", "2s", "InteractiveUser"))
    assert result.returncode == 1, result.stderr[-3000:]
    summary = read_summary(prefix)
    assert summary["answered"] == 0 and summary["failures"] == 0 and summary["shed"] > 0
    assert summary["retries"] >= summary["shed"] * (RETRY_POLICY.max_attempts - 1)
    assert "no call was answered" in summary["run_failure"] and "the run fails" in result.stderr
