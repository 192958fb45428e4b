"""How busy the server is: the event loop's lateness and the process's CPU utilization.

A request is read, decoded and dispatched to its handler by the event loop, and its answer
is serialised and sent by it too; when the loop is busy (or shares a core with ONNX
Runtime) both wait. The handler cannot time that wait, but a timer that asks to wake every
PERIOD_S and notes how late it woke measures the same delay. The router adds it.

Every SAMPLE_PERIOD_S it reads the process's CPU time into the CPU account (`router.cpu`),
which the routers price CPU time from.

While no request arrives (`observe.activity`) it parks instead of ticking: an idle server
then spends no CPU on it. Parking and waking each take a CPU sample, so the idle gap enters
the utilization as one sample weighted by its length, and the lateness decays over the gap
as PERIOD_S ticks of zero lateness would have decayed it.

Time: the monitor reads the time only from `clock` (the router's `Clock`, monotonic seconds)
and waits only through the event loop (a PERIOD_S timer, or the next arrival), so the
lateness is what the clock says beyond the timer. In the server both are time.monotonic
(asyncio's loop time); tests run it on an event loop whose time is their fake clock
(tests/fake_clock.py), so ticks are exactly on time unless the test holds the loop, and hours
of parking are jumped, not slept. The CPU time it samples is the process's own
(time.process_time), which no clock stands for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from slimserve.repository.hardware import usable_cores
from slimserve.router.cpu import SAMPLE_PERIOD_S, CpuAccount
from slimserve.router.load import Clock
from slimserve.server.observe.activity import Activity

log = logging.getLogger(__name__)
PERIOD_S = 0.005
LAG_WEIGHT = 0.2  # weight of one lateness sample in the running mean


def decayed_lag_ms(lag_ms: float, gap_s: float) -> float:
    """The lateness after `gap_s` of ticks that were all on time."""
    return lag_ms * (1.0 - LAG_WEIGHT) ** (gap_s / PERIOD_S)


class LoadMonitor:
    """The running mean of the event loop's lateness (ms), and the CPU account it feeds."""

    def __init__(self, cpu: CpuAccount, activity: Activity, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.lag_ms = 0.0
        self.cpu = cpu
        self.activity = activity
        self.parked = 0  # how many times it has parked for lack of requests (tests read it)
        self._task: asyncio.Task[None] | None = None
        self._sampled_s = 0.0  # clock time of the last CPU sample

    @property
    def cpu_utilization(self) -> float:
        return self.cpu.utilization

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="load-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        cores = usable_cores()  # read after any pinning: the edge profile has one
        self._sampled_s = self._clock()
        self.cpu.sample(time.process_time(), self._sampled_s, cores)
        while True:
            try:
                await self._step(cores)
            except Exception:  # the router's view of the load must outlive any one bad sample
                log.exception("load monitor sample failed; sampling again")
                await asyncio.sleep(PERIOD_S)

    async def _step(self, cores: int) -> None:
        """One tick while requests arrive; or park until the next one and account for the gap."""
        asked = self._clock()
        if self.activity.idle(asked):
            self.cpu.sample(time.process_time(), asked, cores)
            self.parked += 1
            await self.activity.wait_for_arrival()
            self._sampled_s = self._clock()
            self.lag_ms = decayed_lag_ms(self.lag_ms, self._sampled_s - asked)
            self.cpu.sample(time.process_time(), self._sampled_s, cores)
            return
        await asyncio.sleep(PERIOD_S)
        now = self._clock()
        self.lag_ms += LAG_WEIGHT * (max((now - asked - PERIOD_S) * 1e3, 0.0) - self.lag_ms)
        if now - self._sampled_s >= SAMPLE_PERIOD_S:
            self.cpu.sample(time.process_time(), now, cores)
            self._sampled_s = now
