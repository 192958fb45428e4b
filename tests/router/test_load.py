"""Rate meters with a fake clock: the window average, and the burst-aware recent rate."""

from __future__ import annotations

import pytest

from slimserve.router.load import RECENT_MIN_EVENTS, RateMeter
from tests.router.fakes import FakeClock


def test_rates_over_the_window_count_events_and_rows() -> None:
    clock = FakeClock()
    meter = RateMeter(window_s=1.0, clock=clock)
    clock.advance(1.0)
    for _ in range(100):
        clock.advance(0.01)
        meter.add(8)
    assert meter.per_second() == pytest.approx(100.0, rel=0.02)
    assert meter.rows_per_second() == pytest.approx(800.0, rel=0.02)
    clock.advance(2.0)
    assert meter.per_second() == 0.0


def test_after_a_quiet_spell_the_recent_rate_is_the_new_rate_at_once() -> None:
    clock = FakeClock()
    meter = RateMeter(window_s=1.0, clock=clock)
    clock.advance(5.0)  # quiet
    for _ in range(20):  # 0.1 s of 200 requests/s
        clock.advance(0.005)
        meter.add()
    assert meter.per_second() == pytest.approx(20.0)  # the window average still sees the quiet
    assert meter.recent_per_second() == pytest.approx(200.0, rel=0.06)


def test_a_handful_of_events_is_not_a_burst() -> None:
    clock = FakeClock()
    meter = RateMeter(window_s=1.0, clock=clock)
    for _ in range(RECENT_MIN_EVENTS - 1):
        clock.advance(0.0001)
        meter.add()
    assert meter.recent_per_second() == pytest.approx(RECENT_MIN_EVENTS - 1)
