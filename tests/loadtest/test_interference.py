"""The bench's interference reading (loadtest.interference): exact arithmetic on a /proc laid
out by hand, then the real /proc seeing a busy process on a core."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from loadtest.bench_router_report import interference_check
from loadtest.interference import CoreWatch, core_busy_s, pin_every_thread, tree_cpu_s

TICKS = os.sysconf("SC_CLK_TCK")


def _write_proc(proc: Path, busy_ticks: int, cpu_ticks: dict[int, tuple[int, int]]) -> None:
    """/proc/stat with cpu1 busy `busy_ticks` (split over user, system and steal) and an idle
    count; one /proc/PID/stat per process: pid → (parent, utime + stime ticks)."""
    third = busy_ticks // 3
    (proc / "stat").write_text(
        "cpu  1 2 3 4 5 6 7 8 0 0\n"
        "cpu0 9 9 9 9 9 9 9 9 0 0\n"
        f"cpu1 {third} 0 {third} 777 5 0 0 {busy_ticks - 2 * third} 0 0\n"
    )
    for pid, (parent, ticks) in cpu_ticks.items():
        folder = proc / str(pid)
        folder.mkdir(exist_ok=True)
        # pid (comm with a space and a ')') state ppid ... utime stime (fields 14, 15)
        fields = ["S", str(parent), *["0"] * 9, str(ticks - ticks // 2), str(ticks // 2), "0", "0"]
        (folder / "stat").write_text(f"{pid} (a (b) c) " + " ".join(fields) + "\n")


def test_the_foreign_share_is_the_cores_busy_time_less_its_owners_over_the_wall_time(tmp_path: Path) -> None:
    now = [100.0]
    # 10 owns the core; 11 is its child, 12 a grandchild; 20 is someone else's.
    _write_proc(tmp_path, 1000, {10: (1, 50), 11: (10, 20), 12: (11, 10), 20: (1, 400)})
    watch = CoreWatch(1, [10], proc=tmp_path, clock=lambda: now[0])
    watch.start()
    assert tree_cpu_s([10], tmp_path) == pytest.approx(80 / TICKS)
    now[0] += 4.0
    # Over 4 s: the core busy 3 s, the owners 1 s of it (10: 0.5 s, 11: 0.3 s, 12: 0.2 s).
    busy, owners = 3 * TICKS, {10: TICKS // 2, 11: 3 * TICKS // 10, 12: TICKS // 5}
    _write_proc(tmp_path, 1000 + busy, {10: (1, 50 + owners[10]), 11: (10, 20 + owners[11]),
                                         12: (11, 10 + owners[12]), 20: (1, 400 + 2 * TICKS)})  # fmt: skip
    assert watch.foreign_share() == pytest.approx((busy - sum(owners.values())) / TICKS / 4.0)
    assert watch.reading().owners_cpu_s == pytest.approx(sum(owners.values()) / TICKS)  # the whole tree, not 20
    assert core_busy_s(1, tmp_path) == (1000 + busy) / TICKS  # idle and iowait not counted


def test_an_unreadable_proc_gives_no_share_instead_of_failing_the_bench(tmp_path: Path) -> None:
    watch = CoreWatch(3, [10], proc=tmp_path)  # no /proc/stat here at all
    watch.start()
    assert math.isnan(watch.foreign_share()) and math.isnan(watch.reading().owners_cpu_s)


def test_a_busy_process_on_the_core_shows_as_foreign_and_its_owner_does_not() -> None:
    core = min(os.sched_getaffinity(0))
    spin = "import time\nend = time.monotonic() + 3.0\nwhile time.monotonic() < end: pass\n"
    busy = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\n{spin}"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    others = CoreWatch(core, [idle.pid])  # a sleeping process owns the core: the spinning one is foreign
    owners = CoreWatch(core, [busy.pid])  # or the spinning one owns it
    others.start()
    owners.start()
    time.sleep(1.0)
    # Read while the child lives (an exited process takes its CPU time with it). Not a timing:
    # CPU shares, the child spinning against this process sleeping.
    foreign_to_this, foreign_to_child = others.foreign_share(), owners.foreign_share()
    for process in (busy, idle):
        process.kill()
        process.wait(30)
    assert foreign_to_this > 0.5
    assert foreign_to_child < foreign_to_this  # by the spinning process's own share of the core


def test_the_report_names_the_segments_to_rerun() -> None:
    rows: list[dict[str, float | str | int]] = [
        {"workload": "minilm", "run": 1, "scale": 1.0, "policy": "router", "foreign_core_share": 0.01},
        {"workload": "minilm", "run": 1, "scale": 2.0, "policy": "int8", "foreign_core_share": 0.31},
        {"workload": "digits", "run": 1, "scale": 2.0, "policy": "int8", "foreign_core_share": 0.9},
    ]
    assert interference_check(rows, "minilm") == (
        "Interference: other programs took more than 5% of the servers' core in 1 of 2 segments, which should "
        "be rerun: run 1 × 2 int8 (31%)."
    )
    assert "at most 1.0%" in interference_check(rows[:1], "minilm")
    # A CSV from before the column:
    old: list[dict[str, float | str | int]] = [{"workload": "minilm", "run": 1, "scale": 1.0, "policy": "router"}]
    assert interference_check(old, "minilm") == "Interference: not measured (one core, or no /proc)."


def test_every_thread_of_the_process_is_pinned_not_only_the_calling_one() -> None:
    everywhere = os.sched_getaffinity(0)
    started, stop = threading.Event(), threading.Event()
    ids: list[int] = []

    def earlier_thread() -> None:  # as gRPC's, started before the generator pins itself
        ids.append(threading.get_native_id())
        started.set()
        stop.wait(30)

    thread = threading.Thread(target=earlier_thread)
    thread.start()
    assert started.wait(30)
    try:
        one = {min(everywhere)}
        pin_every_thread(one)
        assert os.sched_getaffinity(ids[0]) == one and os.sched_getaffinity(0) == one
        pin_every_thread(everywhere)
        assert os.sched_getaffinity(ids[0]) == everywhere == os.sched_getaffinity(0)
    finally:
        os.sched_setaffinity(0, everywhere)
        stop.set()
        thread.join(30)
