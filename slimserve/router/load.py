"""Arrival and completion rates over a sliding window, with an injectable clock."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]
WINDOW_S = 2.0
RECENT_MIN_EVENTS = 8  # fewer events than this give no rate of their own


class RateMeter:
    """Events (and rows) per second over the last `window_s` seconds.

    Keeps one entry per event; at the rates one Python process serves (a few thousand per
    second) the deque stays small, and pruning is amortised O(1).
    """

    def __init__(self, window_s: float = WINDOW_S, clock: Clock = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._events: deque[tuple[float, float]] = deque()
        self._rows = 0.0
        self._started_s = clock()

    def add(self, rows: float = 1.0) -> None:
        now = self._clock()
        self._events.append((now, rows))
        self._rows += rows
        self._prune(now)

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        while self._events and self._events[0][0] < horizon:
            self._rows -= self._events.popleft()[1]

    def _span_s(self, now: float) -> float:
        # Right after start-up the window is not full yet: divide by the time observed.
        return max(min(self.window_s, now - self._started_s), 1e-3)

    def per_second(self) -> float:
        now = self._clock()
        self._prune(now)
        return len(self._events) / self._span_s(now)

    def recent_per_second(self) -> float:
        """Events per second since the oldest event in the window: after a quiet spell, the
        new rate at once rather than averaged with the quiet (`per_second` is, for a window)."""
        now = self._clock()
        self._prune(now)
        if len(self._events) < RECENT_MIN_EVENTS:
            return len(self._events) / self.window_s  # a handful of events: too few to call it a burst
        return (len(self._events) - 1) / max(now - self._events[0][0], 1e-3)

    def rows_per_second(self) -> float:
        now = self._clock()
        self._prune(now)
        return self._rows / self._span_s(now)
