"""Whether requests are arriving, so that the server's samplers can sleep while it is idle.

The load monitor and the gRPC backlog sampler wake every few milliseconds to measure the
event loop and the calls waiting inside gRPC. That is what routing and shedding need under
load, and waste when nothing arrives: an idle replica would burn a share of a core on timers
for hours. They park on `wait_for_arrival()` once nothing has arrived for IDLE_AFTER_S, and
the first request wakes them.

Time is read from `clock` (the router's `Clock`, monotonic seconds) where a caller does not
say it. Parking waits on an event, not a timer: a test on a fake clock jumps a day of
idleness and then notes an arrival.

Thread: owned by the event loop (the data plane notes arrivals, the samplers wait there).
"""

from __future__ import annotations

import asyncio
import math
import time

from slimserve.router.load import Clock

IDLE_AFTER_S = 1.0  # no request for this long: the samplers park until the next one


class Activity:
    """The time of the latest request arrival, and an event that wakes parked samplers."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.last_arrival_s = -math.inf
        self._arrived = asyncio.Event()

    def note_arrival(self, now_s: float | None = None) -> None:
        """A request reached its handler at `now_s` on the clock (default: now; called once per
        request)."""
        self.last_arrival_s = self._clock() if now_s is None else now_s
        if not self._arrived.is_set():
            self._arrived.set()

    def idle(self, now_s: float | None = None) -> bool:
        """No request for IDLE_AFTER_S at `now_s` on the clock (default: now)."""
        now_s = self._clock() if now_s is None else now_s
        return now_s - self.last_arrival_s > IDLE_AFTER_S

    async def wait_for_arrival(self) -> None:
        """Returns at the next arrival (not one that came before this call)."""
        self._arrived.clear()
        await self._arrived.wait()
