"""How busy the server is: the event loop's lateness and the process's CPU utilization.

A request is read, decoded and dispatched to its handler by the event loop, and its answer
is serialised and sent by it too; when the loop is busy (or shares a core with ONNX
Runtime) both wait. The handler cannot time that wait, but a timer that asks to wake every
PERIOD_S and notes how late it woke measures the same delay. The router adds it.

Every CPU_SAMPLE_S it reads the process's CPU time into the CPU account (`router.cpu`),
which the routers price CPU time from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from router.cpu import CpuAccount
from variants.hardware import usable_cores

log = logging.getLogger(__name__)
PERIOD_S = 0.005
LAG_WEIGHT = 0.2  # weight of one lateness sample in the running mean
CPU_SAMPLE_S = 0.25


class LoadMonitor:
    """The running mean of the event loop's lateness (ms), and the CPU account it feeds."""

    def __init__(self, cpu: CpuAccount) -> None:
        self.lag_ms = 0.0
        self.cpu = cpu
        self._task: asyncio.Task[None] | None = None

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
        wall = time.monotonic()
        self.cpu.sample(time.process_time(), wall, cores)
        while True:
            asked = time.monotonic()
            await asyncio.sleep(PERIOD_S)
            now = time.monotonic()
            try:
                self.lag_ms += LAG_WEIGHT * (max((now - asked - PERIOD_S) * 1e3, 0.0) - self.lag_ms)
                if now - wall >= CPU_SAMPLE_S:
                    self.cpu.sample(time.process_time(), now, cores)
                    wall = now
            except Exception:  # the router's view of the load must outlive any one bad sample
                log.exception("load monitor sample failed; sampling again")
