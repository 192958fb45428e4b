"""An idle server's samplers park until the next request (`server.activity`), on a real event loop."""

from __future__ import annotations

import asyncio

from slimserve.router.cpu import CpuAccount
from slimserve.server.observe.activity import IDLE_AFTER_S, Activity
from slimserve.server.observe.load_monitor import PERIOD_S, LoadMonitor


async def _ticks(monitor: LoadMonitor, seconds: float) -> int:
    """How many CPU samples the monitor takes in `seconds` (each sample moves the account's clock)."""
    before = monitor.cpu._last
    changes = 0
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(PERIOD_S)
        if monitor.cpu._last != before:
            changes, before = changes + 1, monitor.cpu._last
    return changes


def test_the_load_monitor_parks_while_idle_and_wakes_at_the_next_arrival() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        activity = Activity()
        monitor = LoadMonitor(CpuAccount(), activity)
        activity.note_arrival(loop.time())  # asyncio's clock is time.monotonic
        monitor.start()
        try:
            assert await _ticks(monitor, 0.6) >= 1  # requests arrived: it samples every SAMPLE_PERIOD_S
            assert monitor.parked == 0
            await asyncio.sleep(IDLE_AFTER_S)
            assert monitor.parked == 1  # nothing arrived for IDLE_AFTER_S: parked
            assert await _ticks(monitor, 0.6) == 0  # and parked means no samples at all
            monitor.lag_ms = 50.0
            activity.note_arrival(loop.time())
            await asyncio.sleep(0.05)
            assert monitor.lag_ms < 50.0  # woke: the gap's lateness decayed, sampling resumed
            assert await _ticks(monitor, 0.6) >= 1
            assert monitor.parked == 1
        finally:
            await monitor.stop()

    asyncio.run(scenario())


def test_an_arrival_before_waiting_does_not_wake_the_wait() -> None:
    async def scenario() -> None:
        activity = Activity()
        activity.note_arrival(asyncio.get_running_loop().time())
        waiter = asyncio.create_task(activity.wait_for_arrival())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # the arrival came before: it waits for the next one
        activity.note_arrival(asyncio.get_running_loop().time())
        await asyncio.wait_for(waiter, 1.0)

    asyncio.run(scenario())
