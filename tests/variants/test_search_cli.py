"""`slimserve build --search` end to end on the tiny minilm build: it stops within its time
budget, says how far it is, and prints a front; a model it has no data for is a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TIME_BUDGET_S = 15.0


@pytest.mark.slow
def test_search_prints_progress_and_a_front_within_its_budget(repository: Path) -> None:
    command = [sys.executable, "-m", "slimserve.cli", "build", "--search", "--repository", str(repository),
               "--models", "minilm", "--time-budget-s", str(TIME_BUDGET_S)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    front = [line for line in done.stdout.splitlines() if "\tagreement " in line]
    assert front, done.stdout
    assert "remaining_s=" in done.stderr  # progress in the log
    refused = subprocess.run([*command[:-4], "--models", "digits"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "knows minilm's data only" in refused.stderr
