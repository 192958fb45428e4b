"""Every worker's CPU time from /proc (observe.workers_cpu): a fake tree for the parsing,
this test process and real children for the reading."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from slimserve.server.observe.workers_cpu import CLOCK_TICKS_PER_S, workers_cpu_s

BURN = (
    "import time\nend = time.process_time() + 0.3\n"
    "while time.process_time() < end: pass\nprint('done', flush=True)\ninput()"
)


def _stat(pid: int, command: str, utime: int, stime: int) -> str:
    # proc(5): pid (comm) state ppid ... utime (14) stime (15) ...
    return f"{pid} ({command}) S 1 " + " ".join(["0"] * 9) + f" {utime} {stime} 0 0 20 0 1 0 0 0 0\n"


def test_the_children_of_every_thread_are_summed_and_a_gone_one_left_out(tmp_path: Path) -> None:
    supervisor = tmp_path / "100" / "task"
    for tid, children in (("100", "201 202"), ("101", "203 204")):  # 204 has exited
        (supervisor / tid).mkdir(parents=True)
        (supervisor / tid / "children").write_text(children)
    for pid, command, ticks in ((201, "slimserve (w) 0", 100), (202, "x", 50), (203, "y)", 25)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(_stat(pid, command, ticks, ticks))
    assert workers_cpu_s(100, tmp_path) == (2 * (100 + 50 + 25)) / CLOCK_TICKS_PER_S


def test_no_children_to_read_is_none_and_no_children_is_zero(tmp_path: Path) -> None:
    assert workers_cpu_s(100, tmp_path) is None  # not a Linux /proc, or the supervisor is gone
    (tmp_path / "100" / "task" / "100").mkdir(parents=True)
    (tmp_path / "100" / "task" / "100" / "children").write_text("")
    assert workers_cpu_s(100, tmp_path) == 0.0


def test_the_cpu_of_real_children_counts_and_this_process_does_not() -> None:
    """This process's own CPU is not a child's: a worker's siblings and itself are the children
    of its supervisor."""
    before = workers_cpu_s(os.getpid())
    assert before is not None
    children = [
        subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "done"
        after = workers_cpu_s(os.getpid())
        assert after is not None and after - before >= 2 * 0.3 - 2 / CLOCK_TICKS_PER_S
    finally:
        for child in children:
            child.kill()
            child.wait()
