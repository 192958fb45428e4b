"""How late the event loop runs its callbacks: time a call waits before and after its handler.

A request is read, decoded and dispatched to its handler by the event loop, and its answer
is serialised and sent by it too; when the loop is busy (or shares a core with ONNX
Runtime) both wait. The handler cannot time that wait, but a timer that asks to wake every
PERIOD_S and notes how late it woke measures the same delay. The router adds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

PERIOD_S = 0.005
WEIGHT = 0.2  # weight of one sample in the running mean
HALF_LIFE_S = 0.5


class LoopLag:
    """A running mean of the event loop's lateness, in milliseconds."""

    def __init__(self) -> None:
        self.lag_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(PERIOD_S)
            late_ms = max((time.monotonic() - asked - PERIOD_S) * 1e3, 0.0)
            self.lag_ms += WEIGHT * (late_ms - self.lag_ms)
