"""The build's training threads: one while the rest of the machine is busy, all when it is quiet."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from slimserve.variants.core_sharing import (
    BUSY_CORES,
    QUIET_CORES,
    SAMPLE_INTERVAL_S,
    CoreSharing,
    CpuReading,
    read_cpu,
    share_cores_while_busy,
)

HOUR_S = 3600.0


class Machine:
    """Cumulative CPU seconds that a test advances: the others' load and this process's own."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.others_s = 0.0
        self.own_s = 0.0

    def run(self, seconds: float, others_cores: float, own_cores: float = 2.0) -> None:
        self.now_s += seconds
        self.others_s += others_cores * seconds
        self.own_s += own_cores * seconds

    def read(self) -> CpuReading:
        return CpuReading(machine_busy_s=self.others_s + self.own_s, own_s=self.own_s)


def sharing_on(machine: Machine, all_threads: int = 2) -> tuple[CoreSharing, list[int]]:
    applied: list[int] = []
    return CoreSharing(all_threads, applied.append, read=machine.read, clock=lambda: machine.now_s), applied


def test_one_thread_while_the_others_are_busy_and_all_again_once_they_are_quiet() -> None:
    machine = Machine()
    sharing, applied = sharing_on(machine)
    machine.run(SAMPLE_INTERVAL_S / 2, others_cores=1.0)
    assert sharing.check() == 2 and applied == []  # not read before the interval has passed
    machine.run(SAMPLE_INTERVAL_S / 2, others_cores=1.0)
    assert sharing.check() == 1 and applied == [1]
    machine.run(SAMPLE_INTERVAL_S, others_cores=(BUSY_CORES + QUIET_CORES) / 2)
    assert sharing.check() == 1 and applied == [1]  # between the thresholds: unchanged
    machine.run(SAMPLE_INTERVAL_S, others_cores=QUIET_CORES / 2)
    assert sharing.check() == 2 and applied == [1, 2]
    machine.run(SAMPLE_INTERVAL_S, others_cores=(BUSY_CORES + QUIET_CORES) / 2)
    assert sharing.check() == 2 and applied == [1, 2]


def test_the_load_is_the_others_not_the_builds_own() -> None:
    """A build spinning on both cores leaves nothing idle; that alone is no reason to yield."""
    machine = Machine()
    sharing, applied = sharing_on(machine)
    machine.run(5 * SAMPLE_INTERVAL_S, others_cores=0.05, own_cores=2.0)
    assert sharing.check() == 2 and applied == []


def test_a_reading_from_hours_ago_is_not_averaged_over() -> None:
    """Hours without torch work (ONNX Runtime's evaluation and profiling): the first check
    after them only takes a new base; the load over the gap says nothing about now."""
    machine = Machine()
    sharing, applied = sharing_on(machine)
    machine.run(3 * HOUR_S, others_cores=1.0)  # busy over the gap ...
    assert sharing.check() == 2 and applied == []  # ... but stale
    machine.run(SAMPLE_INTERVAL_S, others_cores=1.0)
    assert sharing.check() == 1 and applied == [1]
    machine.run(24 * HOUR_S, others_cores=0.0)  # a day later, quiet over the gap
    assert sharing.check() == 1
    machine.run(SAMPLE_INTERVAL_S, others_cores=0.0)
    assert sharing.check() == 2 and applied == [1, 2]


def test_a_single_thread_build_is_left_alone() -> None:
    machine = Machine()
    sharing, applied = sharing_on(machine, all_threads=1)
    machine.run(SAMPLE_INTERVAL_S, others_cores=1.5)
    assert sharing.check() == 1 and applied == []


def test_read_cpu_parses_proc_with_a_command_name_holding_spaces_and_parentheses(tmp_path: Path) -> None:
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    (tmp_path / "self").mkdir()
    # user nice system idle iowait irq softirq steal guest guest_nice
    (tmp_path / "stat").write_text("cpu  100 20 30 999 50 1 2 3 7 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n")
    own = ["S", *["0"] * 10, "40", "6", *["0"] * 30]  # field 3 on; utime 40 and stime 6 ticks
    (tmp_path / "self" / "stat").write_text(f"4242 (python (a) b) {' '.join(own)}\n")
    reading = read_cpu(tmp_path)
    assert reading.machine_busy_s == pytest.approx((100 + 20 + 30 + 1 + 2 + 3) / ticks_per_s)
    assert reading.own_s == pytest.approx((40 + 6) / ticks_per_s)


def test_read_cpu_counts_this_process_burning_cpu() -> None:
    before = read_cpu()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    after = read_cpu()
    assert after.own_s - before.own_s >= 0.2
    # The machine's busy time holds this process's; both are sampled in clock ticks (10 ms).
    assert after.machine_busy_s - before.machine_busy_s >= after.own_s - before.own_s - 0.1


def test_the_hook_sets_torchs_threads_before_a_forward_in_training_and_inference() -> None:
    machine = Machine()
    start = torch.get_num_threads()
    sharing = CoreSharing(max(start, 2), torch.set_num_threads, read=machine.read, clock=lambda: machine.now_s)
    handle = share_cores_while_busy(sharing)
    layer = torch.nn.Linear(4, 1)
    try:
        machine.run(SAMPLE_INTERVAL_S, others_cores=1.0)
        layer(torch.ones(4)).sum().backward()  # a training step's forward
        assert torch.get_num_threads() == 1
        machine.run(SAMPLE_INTERVAL_S, others_cores=0.0)
        with torch.inference_mode():
            layer(torch.ones(4))
        assert torch.get_num_threads() == max(start, 2)
    finally:
        handle.remove()
        torch.set_num_threads(start)
    machine.run(SAMPLE_INTERVAL_S, others_cores=1.0)
    layer(torch.ones(4))
    assert torch.get_num_threads() == start  # removed: no longer consulted
