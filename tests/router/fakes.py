"""A settable clock and queues for router tests: time is the subject there, so it is faked."""

from __future__ import annotations

from dataclasses import dataclass


class FakeClock:
    """monotonic() replacement; advance it by hand."""

    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@dataclass
class FakeQueue:
    """A batcher's queue state, set by the test."""

    queued_rows: int = 0
    running_rows: int = 0
    running_started_s: float | None = None
