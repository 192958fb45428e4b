"""How much of the servers' core other programs took during a benchmark segment.

The router bench pins its servers to one core and its load generator to the others, on a
machine others share. A program that runs on the servers' core meanwhile (another job, a
test suite, the hypervisor's steal) slows every policy it overlaps and moves a cell by more
than the policies differ — and nothing in the segment's own figures says so. So each segment
reads, from /proc, the core's busy time (steal included) and the CPU time of the servers'
processes (and their children) over the segment: what the core spent on anything else is the
*foreign share* of the segment's wall time. The report names segments above
FOREIGN_SHARE_WARN, to be rerun rather than averaged.

The first reading found the bench itself on the servers' core: 16–39 % of it in every
segment, with nothing else running. The generator pinned itself with
`os.sched_setaffinity(0, …)`, which moves only the calling thread, after gRPC had started its
threads (waiting for the servers to come up) on every core. `pin_every_thread` moves them
all; with it the share is 0–1 %.

The same reading gives the servers' own CPU seconds over the segment: per answered call, what
a call costs the server on top of its share of a session call — the event loop's cost, which the
simulator's calibration (slimserve.simulate.calibration) otherwise has to infer, and the
server's background work, which a fit across loads separates from it.

Linux only (/proc); elsewhere `CoreWatch` reads nothing and the share is NaN.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
FOREIGN_SHARE_WARN = 0.05  # of the servers' core over a segment: above this, rerun it
# /proc/stat's per-CPU fields counted as busy: user nice system (idle iowait) irq softirq steal
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
MAX_DEPTH = 64  # of a process tree walked up to its root


def pin_every_thread(cores: set[int], proc: Path = PROC) -> None:
    """Pin every thread of this process to `cores`. `os.sched_setaffinity(0, …)` moves only
    the calling thread: threads started before it (a tokenizer's, ONNX Runtime's, torch's)
    stay on every core, the servers' included. Threads started after inherit their starter's."""
    for task in (proc / "self" / "task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cores)


def core_busy_s(core: int, proc: Path = PROC) -> float:
    """CPU seconds `core` has been busy since boot (guest time is inside user)."""
    for line in (proc / "stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            fields = [int(value) for value in line.split()[1:]]
            return sum(fields[i] for i in _BUSY_FIELDS if i < len(fields)) / os.sysconf("SC_CLK_TCK")
    raise ValueError(f"/proc/stat has no line for cpu{core}")


def tree_cpu_s(roots: Sequence[int], proc: Path = PROC) -> float:
    """CPU seconds (user + system, every thread) of the processes `roots` and their descendants."""
    parent_of: dict[int, int] = {}
    cpu_of: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
        parent_of[int(entry.name)] = int(fields[1])
        cpu_of[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    wanted, total = set(roots), 0.0
    for pid in cpu_of:
        ancestor, seen = pid, 0
        while ancestor not in wanted and ancestor in parent_of and seen < MAX_DEPTH:
            ancestor, seen = parent_of[ancestor], seen + 1
        if ancestor in wanted:
            total += cpu_of[pid]
    return total


@dataclass(frozen=True)
class CoreReading:
    """What the servers' core did over an interval: the share of its wall time other programs
    took, and the CPU seconds the servers themselves spent (on any core; they are pinned to
    this one). NaN where /proc could not be read."""

    foreign_share: float
    owners_cpu_s: float


NO_READING = CoreReading(math.nan, math.nan)


class CoreWatch:
    """The foreign share of `core` and its owners' CPU time over an interval, given the
    processes that own it."""

    def __init__(
        self, core: int, pids: Sequence[int], proc: Path = PROC, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.core, self.pids, self._proc, self._clock = core, tuple(pids), proc, clock
        self._started: tuple[float, float, float] | None = None

    def _read(self) -> tuple[float, float, float]:
        return self._clock(), core_busy_s(self.core, self._proc), tree_cpu_s(self.pids, self._proc)

    def start(self) -> None:
        try:
            self._started = self._read()
        except (OSError, ValueError):
            self._started = None

    def reading(self) -> CoreReading:
        """The core since `start`, from one read of /proc."""
        if self._started is None:
            return NO_READING
        try:
            now, busy_s, owners_s = self._read()
        except (OSError, ValueError):
            return NO_READING
        began, busy0_s, owners0_s = self._started
        wall_s, owners_cpu_s = now - began, owners_s - owners0_s
        if wall_s <= 0:
            return NO_READING
        return CoreReading(max(0.0, (busy_s - busy0_s) - owners_cpu_s) / wall_s, owners_cpu_s)

    def foreign_share(self) -> float:
        """Share of the wall time since `start` that the core spent on other processes; NaN
        where it cannot be read."""
        return self.reading().foreign_share
