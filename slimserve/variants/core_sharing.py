"""A build that trains on every core while the machine is quiet and on one while it is not.

`make run` builds the default repository in a niced child process beside the server
(server/process/background_build.py). torch's OpenMP threads spin at their barriers before
they sleep. On a quiet machine that spinning is what makes a training step fast; once serving
takes a core, a thread spinning for a partner that lost its core burns the build's own share
(on a busy 2-core AMD EPYC a step took 2.8-7x the CPU seconds). Waiting passively
(OMP_WAIT_POLICY=PASSIVE, the fix until now) costs 7-28 % of a build's time on a quiet
machine (18 +- 10 % over six pairs of builds), about what the first build on an AVX2 EPYC
missed its budget by (docs/variants.md).

`CoreSharing` takes the other way out: it keeps the spinning and takes away the barrier.
At most once per SAMPLE_INTERVAL_S it reads how many cores the rest of the machine used since
its last reading (the machine's busy time, /proc/stat, less this process's own,
/proc/self/stat) and sets torch's intra-op threads to one while the others used more than
BUSY_CORES, back to all of them once they use less than QUIET_CORES (the gap between the two
keeps it from flapping). One thread has no partner to wait for. A reading older than
STALE_READING_S (a long stretch without torch work) is not averaged over: it becomes the
new base and the thread count stays until the next interval.

torch's thread count belongs to the thread that sets it, so the check runs in the thread that
computes: `share_cores_while_busy()` installs it as a global hook before every module's forward,
which covers inference as well as training (checked only before optimizer steps, the teacher's
token states beside one busy process took 176 s spinning on two threads against 53 s waiting
passively). ONNX Runtime's threads in the build (int8 timing, evaluation, profiling) are its
own and not affected. The int8 and int8mixed steps' quantizing worker processes
(variants.worker_processes) count as the rest of the machine: while they run the build trains
on one thread, but it runs no torch then. Only what a build process runs: the server never imports this module.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

log = logging.getLogger(__name__)
SAMPLE_INTERVAL_S = 1.0  # how often the others' load is read (a MiniLM training step: ~0.2 s)
STALE_READING_S = 10.0  # a base reading older than this is replaced, not averaged over
BUSY_CORES = 0.5  # the others used more than half a core: train on one thread
QUIET_CORES = 0.25  # the others used less than a quarter of a core: train on all of them
BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)  # /proc/stat's cpu line: user nice system (idle iowait) irq softirq steal
OWN_TIME_FIELDS = slice(11, 13)  # utime stime: proc(5)'s fields 14-15, counted after the command name


@dataclass(frozen=True)
class CpuReading:
    """Cumulative CPU seconds at one moment: the whole machine's busy time and this process's."""

    machine_busy_s: float
    own_s: float


def read_cpu(proc: Path = Path("/proc")) -> CpuReading:
    """The machine's busy CPU seconds (every core, every process) and this process's own."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    columns = [int(value) for value in (proc / "stat").read_text().split("\n", 1)[0].split()[1:]]
    busy_ticks = sum(columns[i] for i in BUSY_COLUMNS)  # guest time is already in user
    # The command name (field 2) may hold spaces and ')'; the fields after its last ')' are plain.
    own_fields = (proc / "self" / "stat").read_text().rsplit(")", 1)[1].split()
    own_ticks = sum(int(value) for value in own_fields[OWN_TIME_FIELDS])
    return CpuReading(busy_ticks / ticks_per_s, own_ticks / ticks_per_s)


class CoreSharing:
    """Decides the training threads from the others' load (the module docstring has the rule).

    `read` gives cumulative CPU seconds (`read_cpu`), `clock` the time in seconds, and
    `set_threads` applies a new count (torch.set_num_threads); all three are injected so that
    a test drives the rule with readings it chose. `all_threads` is the count on a quiet
    machine. Owned by the training thread: nothing else calls `check`."""

    def __init__(
        self,
        all_threads: int,
        set_threads: Callable[[int], None],
        read: Callable[[], CpuReading] = read_cpu,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.all_threads = all_threads
        self.threads = all_threads
        self._set_threads = set_threads
        self._read = read
        self._clock = clock
        self._base = (clock(), read())

    def others_cores(self, now: float, reading: CpuReading) -> float | None:
        """Cores the rest of the machine used on average since the base reading; None when the
        base is stale (too old to speak for now) or no time has passed."""
        then, base = self._base
        elapsed_s = now - then
        if elapsed_s <= 0 or elapsed_s > STALE_READING_S:
            return None
        others_s = (reading.machine_busy_s - base.machine_busy_s) - (reading.own_s - base.own_s)
        return max(0.0, others_s) / elapsed_s

    def check(self) -> int:
        """Read the load if SAMPLE_INTERVAL_S has passed, change the thread count if the rule
        says so, and return the count in force."""
        now = self._clock()
        if now - self._base[0] < SAMPLE_INTERVAL_S:
            return self.threads
        reading = self._read()
        others = self.others_cores(now, reading)
        self._base = (now, reading)
        if others is None or self.all_threads <= 1:
            return self.threads
        wanted = 1 if others > BUSY_CORES else self.all_threads if others < QUIET_CORES else self.threads
        if wanted != self.threads:
            log.info("training on %d thread(s): the rest of the machine used %.2f cores", wanted, others)
            self._set_threads(wanted)
            self.threads = wanted
        return self.threads


def share_cores_while_busy(sharing: CoreSharing | None = None) -> RemovableHandle:
    """Run `sharing.check` before every module's forward in this process (torch's global
    forward pre-hook; a check costs a clock reading until the interval has passed); by default
    a `CoreSharing` from torch's thread count now on the real machine. The handle removes it."""
    import torch
    from torch.nn.modules.module import register_module_forward_pre_hook

    checked = sharing or CoreSharing(torch.get_num_threads(), torch.set_num_threads)

    def before_forward(module: object, inputs: object) -> None:  # None: the inputs stay as they are
        if not torch.compiler.is_compiling():  # a compiled graph holds no Python side effects
            checked.check()

    return register_module_forward_pre_hook(before_forward)
