"""The wait inside gRPC, from channelz, on a real grpc.aio server.

The estimate reads a fake clock (tests/fake_clock.py): on the real server it moves with the
handlers' work, and elsewhere by hand, a day at a time where the state must be forgotten.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import pytest

from slimserve.server.observe.backlog import (
    MAX_TARGETS,
    SAMPLE_S,
    STANDING_S,
    WAIT_SHARE,
    CallCount,
    GrpcBacklog,
    _channelz_counts,
    newest_server_id,
)
from slimserve.server.transport.auth import MANAGEMENT, load_tokens, server_interceptors
from tests.fake_clock import FakeClock

HANDLER_S = 0.01
CALLS = 60
SAMPLE_EVERY = round(SAMPLE_S / HANDLER_S)  # calls handled between two samples: SAMPLE_S of the clock


def test_calls_waiting_for_their_handler_are_counted_and_priced() -> None:
    """Handlers that hold the event loop for 10 ms each, as a saturated server's do: the calls
    behind them wait as tasks before their handler starts, and the estimate sees them.

    grpc.aio's own threads rule out a fake-time event loop here; the estimate's clock moves
    10 ms with each handler instead (the wall time a call takes; the CPU time it really spins
    is no less), and it samples between two handlers every SAMPLE_S of it, as the server's
    sampler would."""
    clock = FakeClock()
    seen: list[int] = []
    waits: list[float] = []
    standing: list[bool] = []
    target_ms = WAIT_SHARE * 50.0

    async def scenario() -> None:
        backlog: GrpcBacklog

        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            backlog.handling += 1
            spin_until = time.thread_time() + HANDLER_S
            while time.thread_time() < spin_until:  # the loop's CPU time, as decoding and routing take it
                pass
            clock.advance(HANDLER_S)
            backlog.handling -= 1
            backlog.handled += 1
            if backlog.handled % SAMPLE_EVERY == 0:
                backlog.sample()
                seen.append(backlog.backlog)
                waits.append(backlog.wait_ms)
                standing.append(backlog.wait_limit_ms(50.0) == target_ms)
            return b"ok"

        count = CallCount()
        server = grpc.aio.server(interceptors=[count])
        service = grpc.method_handlers_generic_handler("t.S", {"M": grpc.unary_unary_rpc_method_handler(handler)})
        server.add_generic_rpc_handlers((service,))
        port = server.add_insecure_port("127.0.0.1:0")
        backlog = GrpcBacklog(newest_server_id(), clock, count)
        await server.start()
        assert backlog.server_id is not None and not backlog.busy()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = channel.unary_unary("/t.S/M")
            calls = [asyncio.ensure_future(method(b"x", timeout=30)) for _ in range(CALLS)]
            await asyncio.gather(*calls)
            assert len(seen) == CALLS // SAMPLE_EVERY
            assert max(seen) >= CALLS // 2  # most calls waited for their handler, not in it
            assert backlog.call_ms == pytest.approx(HANDLER_S * 1e3)  # 10 ms per call, learned
            assert max(waits) >= CALLS // 4 * HANDLER_S * 1e3  # hundreds of ms of waiting, seen
            assert not standing[0] and any(standing)  # a burst at first; standing once it lasted STANDING_S
            backlog.sample()
            assert backlog.backlog == 0 and backlog.wait_ms == 0 and not backlog.busy()
            clock.advance(3600)
            assert backlog.wait_limit_ms(50.0) == 50.0  # an hour later, quiet: only hopeless calls are refused
        await server.stop(None)

    asyncio.run(scenario())


def test_calls_taken_up_do_not_wait_and_calls_never_taken_up_leave_nothing_behind() -> None:
    """The rule on fed counts: backlog = started − ended − (taken − over), on a fake clock."""
    clock = FakeClock()
    calls = CallCount()
    backlog = GrpcBacklog(None, clock, calls)

    def waiting(started: int, ended: int) -> int:
        clock.advance(SAMPLE_S)
        backlog.record(clock(), started, ended)
        return backlog.backlog

    calls.taken = 200  # idle Watch streams, or calls whose message never comes: taken up, open
    assert waiting(200, 0) == 0
    assert waiting(210, 0) == 10  # 10 more arrived and the loop has not taken them up
    calls.taken += 4  # it takes 4 up; the callers of the other 6 give up first
    assert waiting(210, 6) == 0  # (started − taken would count those 6 for ever)
    calls.over += 4  # the 4 are answered
    assert waiting(210, 10) == 0
    started, ended = 210, 10
    for _ in range(1000):  # a thousand more whose callers give up before they are taken up
        started, ended = started + 1, ended + 1
    assert waiting(started, ended) == 0
    clock.advance(3 * 3600)  # hours later, the 200 still open: the counts neither drift nor decay
    assert waiting(started + 5, ended) == 5
    calls.over += 200  # the streams close
    assert waiting(started + 5, ended + 200) == 5
    assert waiting(started + 5, ended + 205) == 0  # the 5 ended before they were taken up


def test_calls_taken_up_are_counted_until_their_task_ends() -> None:
    """On a real grpc.aio server, the count first and the token check after it, as the app
    installs them: calls with the token whose request message never comes (client-streaming
    calls of a unary method that write nothing) are taken up and open until their callers
    cancel them, and never count as waiting; an answered call is over once answered; a call
    without a token is refused at once, its message unread (transport.auth), and is over."""
    token = "backlog-test-token-0123456789"
    tokens = load_tokens(None, {MANAGEMENT: token})  # /t.S/M is no method the table names: management

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await asyncio.sleep(0.005)

    async def scenario() -> None:
        calls = CallCount()
        server = grpc.aio.server(interceptors=[calls, *server_interceptors(tokens)])
        service = grpc.method_handlers_generic_handler("t.S", {"M": grpc.unary_unary_rpc_method_handler(echo)})
        server.add_generic_rpc_handlers((service,))
        port = server.add_insecure_port("127.0.0.1:0")
        backlog = GrpcBacklog(newest_server_id(), calls=calls)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                bearer = (("authorization", f"Bearer {token}"),)
                silent = [channel.stream_unary("/t.S/M")(metadata=bearer) for _ in range(3)]
                try:
                    await asyncio.wait_for(until(lambda: calls.taken == 3), 30)
                    backlog.sample()
                    assert calls.open == 3 and backlog.backlog == 0  # open, and waiting for their client
                    answered = await channel.unary_unary("/t.S/M")(b"x", metadata=bearer, timeout=30)
                    assert answered == b"x"
                    await asyncio.wait_for(until(lambda: calls.over == 1), 30)
                    refused = channel.stream_unary("/t.S/M")()  # no token, and no message ever
                    assert await asyncio.wait_for(refused.code(), 30) == grpc.StatusCode.UNAUTHENTICATED
                    await asyncio.wait_for(until(lambda: calls.over == 2), 30)
                finally:
                    for call in silent:
                        call.cancel()
                    await asyncio.gather(*(call.code() for call in silent))
            await asyncio.wait_for(until(lambda: calls.open == 0 and _ended(backlog.server_id) == 5), 30)
            backlog.sample()
            assert (calls.taken, calls.over, backlog.backlog) == (5, 5, 0)
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def _ended(server_id: int | None) -> int:
    counts = _channelz_counts(server_id) if server_id is not None else None
    return counts[1] if counts is not None else -1


def _feed(backlog: GrpcBacklog, clock: FakeClock, waiting: list[int], started: int) -> int:
    """Samples SAMPLE_S apart with these many calls waiting; 5 handled per sample (4 ms a call)."""
    for calls in waiting:
        clock.advance(SAMPLE_S)
        started += 5
        backlog.handled += 5
        backlog.record(clock(), started, started - calls)
    return started


def test_a_queue_stands_from_an_interval_above_the_target_to_an_interval_below_it() -> None:
    """CoDel's rule with hysteresis, on the counts channelz would give, with a fake clock
    (time is the subject)."""
    clock = FakeClock()
    backlog = GrpcBacklog(None, clock)
    slo_ms = 50.0
    target_ms = WAIT_SHARE * slo_ms  # 15 ms: about 4 calls at 4 ms each
    started = _feed(backlog, clock, [10, 10], 0)
    assert backlog.call_ms == pytest.approx(4.0)  # 0.02 s per 5 calls handled
    assert backlog.wait_limit_ms(slo_ms) == slo_ms  # a backlog that just appeared is a burst
    started = _feed(backlog, clock, [10] * 6, started)  # 40 ms of waiting for > STANDING_S
    assert backlog.window_ms() == (pytest.approx(40.0), pytest.approx(40.0))
    assert backlog.wait_limit_ms(slo_ms) == pytest.approx(target_ms)
    assert backlog.wait_limit_ms(200.0) == 200.0  # for a 200-ms SLO, 40 ms is not standing (target 60)
    # Shedding holds the wait around the target, dipping below it: the queue still stands.
    started = _feed(backlog, clock, [5, 3, 4, 3, 5, 3, 4, 3], started)
    assert backlog.wait_limit_ms(slo_ms) == pytest.approx(target_ms)
    # Below the target for a whole interval: over.
    started = _feed(backlog, clock, [2, 0, 3, 1, 0, 2, 1, 3], started)
    assert backlog.wait_limit_ms(slo_ms) == slo_ms
    # The light load of a shared machine: a small queue that keeps coming and going, now and
    # then above the target but never for a whole interval, stands for nobody.
    for _ in range(20):
        started = _feed(backlog, clock, [6, 1, 2, 0, 5, 2], started)
        assert backlog.wait_limit_ms(slo_ms) == slo_ms
    started = _feed(backlog, clock, [10] * 3, started)  # back above: not yet a whole interval
    assert backlog.wait_limit_ms(slo_ms) == slo_ms
    started = _feed(backlog, clock, [10] * 4, started)  # 140 ms above: the interval is covered
    assert backlog.wait_limit_ms(slo_ms) == pytest.approx(target_ms)
    clock.advance(2 * STANDING_S)
    assert backlog.wait_limit_ms(slo_ms) == slo_ms  # no samples since: nothing known
    # A day later, a new backlog is a new burst, not the old standing queue.
    clock.advance(86_400)
    started = _feed(backlog, clock, [10, 10], started)
    assert backlog.window_ms() is None and backlog.wait_limit_ms(slo_ms) == slo_ms


def test_the_targets_remembered_are_bounded() -> None:
    """A caller sending a new SLO on every call cannot grow the state without bound."""
    clock = FakeClock()
    backlog = GrpcBacklog(None, clock)
    _feed(backlog, clock, [10] * 8, 0)
    for slo_ms in range(1, 10 * MAX_TARGETS):
        backlog.wait_limit_ms(float(slo_ms))
    assert len(backlog.standing) == MAX_TARGETS
    assert backlog.wait_limit_ms(50.0) == pytest.approx(WAIT_SHARE * 50.0)


def test_without_channelz_nothing_is_estimated() -> None:
    backlog = GrpcBacklog(None)
    backlog.handling = 5
    backlog.sample()
    assert backlog.wait_ms == 0 and not backlog.busy()
