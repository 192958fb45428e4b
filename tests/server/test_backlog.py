"""The wait inside gRPC, from channelz, on a real grpc.aio server; and the SLO a caller states."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb

from server.backlog import STANDING_S, WAIT_SHARE, GrpcBacklog, newest_server_id
from server.parameters import stated_slo_ms

HANDLER_S = 0.01
CALLS = 60


def test_calls_waiting_for_their_handler_are_counted_and_priced() -> None:
    """Handlers that hold the event loop for 10 ms each, as a saturated server's do: the calls
    behind them wait as tasks before their handler starts, and the estimate sees them."""

    async def scenario() -> None:
        backlog: GrpcBacklog

        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            backlog.handling += 1
            time.sleep(HANDLER_S)  # the loop's CPU time, as decoding and routing would take it
            backlog.handling -= 1
            backlog.handled += 1
            return b"ok"

        server = grpc.aio.server()
        service = grpc.method_handlers_generic_handler("t.S", {"M": grpc.unary_unary_rpc_method_handler(handler)})
        server.add_generic_rpc_handlers((service,))
        port = server.add_insecure_port("127.0.0.1:0")
        backlog = GrpcBacklog(newest_server_id())
        await server.start()
        assert backlog.server_id is not None and not backlog.busy()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = channel.unary_unary("/t.S/M")
            calls = [asyncio.ensure_future(method(b"x", timeout=30)) for _ in range(CALLS)]
            seen, waits, standing = [], [], []
            for _ in range(30):
                await asyncio.sleep(HANDLER_S * 2)
                backlog.sample()
                seen.append(backlog.backlog)
                waits.append(backlog.wait_ms)
                standing.append(backlog.standing())
            assert max(seen) >= CALLS // 2  # most calls waited for their handler, not in it
            assert backlog.call_ms == pytest.approx(HANDLER_S * 1e3, rel=0.5)  # ~10 ms per call, learned
            assert max(waits) >= CALLS // 4 * HANDLER_S * 1e3  # hundreds of ms of waiting, seen
            assert not standing[0] and any(standing)  # a burst at first; standing once it lasted STANDING_S
            await asyncio.gather(*calls)
            backlog.sample()
            assert backlog.backlog == 0 and backlog.wait_ms == 0 and not backlog.busy()
            await asyncio.sleep(STANDING_S)
            assert not backlog.standing() and backlog.wait_limit_ms(50.0) == 50.0  # quiet: only hopeless calls
        await server.stop(None)

    asyncio.run(scenario())


def test_a_standing_queue_outlasts_short_quiet_spells_but_not_long_ones() -> None:
    """CoDel's rule, on the counts channelz would give, with a fake clock (time is the subject)."""
    backlog = GrpcBacklog(None)
    started = ended = 0
    now = 100.0
    for step in range(8):  # 0.14 s of 10 calls waiting, with one empty sample in it
        started += 10
        ended += 10 if step == 3 else 5  # at step 3 everything has drained
        backlog.handled += 5
        now += 0.02
        backlog.record(now, started, ended)
        if step == 0:
            assert not backlog.standing(now)  # a backlog that just appeared is a burst
    assert backlog.standing(now) and backlog.wait_limit_ms(50.0, now) == pytest.approx(WAIT_SHARE * 50.0)
    assert backlog.call_ms == pytest.approx(20.0 / 5)  # 0.02 s per 5 calls handled
    ended = started
    backlog.record(now + 0.05, started, ended)  # drained: still standing within STANDING_S
    assert backlog.standing(now + 0.05)
    assert not backlog.standing(now + STANDING_S + 0.01)  # quiet long enough: over
    assert backlog.wait_limit_ms(50.0, now + STANDING_S + 0.01) == 50.0
    # A day later, a new backlog is a new burst, not the old standing queue.
    backlog.record(now + 86_400, started + 10, ended)
    assert not backlog.standing(now + 86_400)


def test_without_channelz_nothing_is_estimated() -> None:
    backlog = GrpcBacklog(None)
    backlog.handling = 5
    backlog.sample()
    assert backlog.wait_ms == 0 and not backlog.busy()


def test_the_stated_slo_is_slo_ms_else_the_deadline() -> None:
    request = pb.ModelInferRequest()
    assert stated_slo_ms(request, None) is None
    assert stated_slo_ms(request, 2.0) == pytest.approx(2000.0)
    request.parameters["slo_ms"].double_param = 50.0
    assert stated_slo_ms(request, 2.0) == 50.0
    request.parameters["slo_ms"].int64_param = 20
    assert stated_slo_ms(request, None) == 20.0
    for bad in (pb.InferParameter(string_param="fast"), pb.InferParameter(bool_param=True),
                pb.InferParameter(double_param=-1.0)):  # fmt: skip
        request.parameters["slo_ms"].CopyFrom(bad)
        assert stated_slo_ms(request, 2.0) is None  # left for the router to refuse, with its message
