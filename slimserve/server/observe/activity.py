"""Whether requests are arriving, so that the server's samplers can sleep while it is idle.

The load monitor and the gRPC backlog sampler wake every few milliseconds to measure the
event loop and the calls waiting inside gRPC. That is what routing and shedding need under
load, and waste when nothing arrives: an idle replica would burn a share of a core on timers
for hours. They park on `wait_for_arrival()` once nothing has arrived for IDLE_AFTER_S, and
the first request wakes them.

Thread: owned by the event loop (the servicer notes arrivals, the samplers wait there).
"""

from __future__ import annotations

import asyncio
import math

IDLE_AFTER_S = 1.0  # no request for this long: the samplers park until the next one


class Activity:
    """The time of the latest request arrival, and an event that wakes parked samplers."""

    def __init__(self) -> None:
        self.last_arrival_s = -math.inf
        self._arrived = asyncio.Event()

    def note_arrival(self, now_s: float) -> None:
        """A request reached its handler at monotonic time `now_s` (called once per request)."""
        self.last_arrival_s = now_s
        if not self._arrived.is_set():
            self._arrived.set()

    def idle(self, now_s: float) -> bool:
        return now_s - self.last_arrival_s > IDLE_AFTER_S

    async def wait_for_arrival(self) -> None:
        """Returns at the next arrival (not one that came before this call)."""
        self._arrived.clear()
        await self._arrived.wait()
