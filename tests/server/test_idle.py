"""An idle server's samplers park until the next request (`server.activity`).

On an event loop whose time is the monitor's fake clock (tests/fake_clock.py): its ticks are
exactly on time unless the test holds the loop, and hours of parking are jumped, not slept.
"""

from __future__ import annotations

import asyncio
from itertools import pairwise

import pytest

from slimserve.router.cpu import SAMPLE_PERIOD_S, CpuAccount
from slimserve.server.observe.activity import IDLE_AFTER_S, Activity
from slimserve.server.observe.load_monitor import LAG_WEIGHT, PERIOD_S, LoadMonitor, decayed_lag_ms
from tests.fake_clock import FakeClock, run_for, run_on


class CountingCpu(CpuAccount):
    """The CPU account, noting the clock time of every sample the monitor takes."""

    def __init__(self) -> None:
        super().__init__()
        self.sampled_s: list[float] = []

    def sample(self, cpu_s: float, wall_s: float, cores: int) -> None:
        self.sampled_s.append(wall_s)
        super().sample(cpu_s, wall_s, cores)


def test_the_load_monitor_parks_while_idle_and_wakes_at_the_next_arrival() -> None:
    clock = FakeClock()

    async def scenario() -> None:
        activity = Activity(clock)
        cpu = CountingCpu()
        monitor = LoadMonitor(cpu, activity, clock)
        activity.note_arrival()
        arrived_s = clock()
        monitor.start()
        try:
            await run_for(0.6)  # requests arrived: it samples at start, then every SAMPLE_PERIOD_S
            assert len(cpu.sampled_s) == 3 and cpu.sampled_s[0] == arrived_s
            assert all(SAMPLE_PERIOD_S <= b - a < SAMPLE_PERIOD_S + PERIOD_S for a, b in pairwise(cpu.sampled_s))
            assert monitor.parked == 0
            await run_for(IDLE_AFTER_S)
            assert monitor.parked == 1  # nothing arrived for IDLE_AFTER_S: parked, with a sample
            parked_s = cpu.sampled_s[-1]
            assert IDLE_AFTER_S < parked_s - arrived_s <= IDLE_AFTER_S + PERIOD_S
            samples = len(cpu.sampled_s)
            await run_for(3 * 3600)  # three idle hours
            assert len(cpu.sampled_s) == samples  # and parked means no samples at all
            monitor.lag_ms = 50.0
            activity.note_arrival()
            await asyncio.sleep(0)  # the monitor wakes, before its first tick
            assert cpu.sampled_s[-1] == clock() and monitor.parked == 1  # the gap's one sample
            assert monitor.lag_ms == decayed_lag_ms(50.0, clock() - parked_s) == 0.0  # decayed over the hours
            await run_for(0.6)
            assert len(cpu.sampled_s) == samples + 3  # sampling resumed: the wake, then every period
            assert monitor.parked == 1
        finally:
            await monitor.stop()

    run_on(clock, scenario())


def test_a_tick_the_loop_delays_is_measured_as_lateness() -> None:
    clock = FakeClock()

    async def scenario() -> None:
        activity = Activity(clock)
        monitor = LoadMonitor(CpuAccount(), activity, clock)
        activity.note_arrival()
        monitor.start()
        try:
            await run_for(10.5 * PERIOD_S)  # halfway between two ticks
            assert monitor.lag_ms == 0.0  # every tick so far on time
            clock.advance(0.008)  # a callback holds the loop for 8 ms: the tick due in 2.5 ms is 5.5 ms late
            await run_for(PERIOD_S / 2)
            assert monitor.lag_ms == pytest.approx(LAG_WEIGHT * 5.5)
        finally:
            await monitor.stop()

    run_on(clock, scenario())


def test_an_arrival_before_waiting_does_not_wake_the_wait() -> None:
    clock = FakeClock()

    async def scenario() -> None:
        activity = Activity(clock)
        activity.note_arrival()
        waiter = asyncio.create_task(activity.wait_for_arrival())
        await run_for(86_400)  # a day
        assert not waiter.done()  # the arrival came before: it waits for the next one
        assert activity.idle()
        activity.note_arrival()
        assert not activity.idle()
        await asyncio.wait_for(waiter, 1.0)

    run_on(clock, scenario())
