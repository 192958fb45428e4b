"""An event loop whose time is a fake clock, for tests of the server's timekeepers.

The batcher, the load monitor, activity and the backlog estimate read the time from an
injected `Clock` and wait through the event loop; in the server both are time.monotonic
(asyncio's loop time). `run_on(clock, main())` makes both one `FakeClock` (the router tests'
clock): it runs `main` on a `FakeTimeLoop`, which, whenever it would wait for its next timer
with nothing to do, moves the clock to that timer instead. A test therefore waits out a 50-ms
batching delay, a second of idleness or hours of parking in microseconds, and every time a
timekeeper reads is exact. `run_for(seconds)` lets everything on the loop run for that much
fake time; `clock.advance(seconds)` moves it at once, as a callback holding the loop would.

While an executor call is in flight (an ONNX Runtime session in a worker thread) the clock
stands still and the loop really waits for it: compute takes no fake time, and no timeout
fires early because a thread was slow. Not for code whose own threads call back into the
loop (grpc.aio's poller): the loop cannot see them working, and would jump past their
timeouts.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple

from tests.router.fakes import FakeClock

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

__all__ = ["FakeClock", "FakeTimeLoop", "run_for", "run_on"]


class _JumpingSelector(selectors.DefaultSelector):
    """Polls for I/O; where the loop would block until its next timer instead, jumps the clock."""

    def __init__(self, loop: FakeTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # asyncio passes the time to its next timer, 0 when callbacks are ready, None when no
        # timer is set (then only I/O or another thread can wake it: wait for real).
        if timeout is None or timeout <= 0:
            return super().select(timeout)
        ready = super().select(0)
        if ready or self._loop.executor_calls:
            return ready or super().select(timeout)  # a thread will write the loop's self-pipe
        self._loop.clock.advance(timeout)
        return []


class FakeTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose `time()` is `clock`, jumped to each timer when idle."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.executor_calls = 0  # run_in_executor futures not yet done: the clock waits for them
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.clock()

    def run_in_executor(self, executor: Executor | None, func: Callable[[*Ts], T], *args: *Ts) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.executor_calls += 1
        future.add_done_callback(self._executor_call_done)
        return future

    def _executor_call_done(self, _future: asyncio.Future[Any]) -> None:
        self.executor_calls -= 1


def run_on(clock: FakeClock, main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) on a FakeTimeLoop over `clock`."""
    with asyncio.Runner(loop_factory=lambda: FakeTimeLoop(clock)) as runner:
        return runner.run(main)


async def run_for(seconds: float) -> None:
    """Let everything on the loop run for `seconds` of its fake time: jumped, not waited."""
    if not isinstance(asyncio.get_running_loop(), FakeTimeLoop):
        raise RuntimeError("run_for jumps fake time: run the test with run_on, or it would really sleep")
    await asyncio.sleep(seconds)
