"""The wait inside gRPC, from channelz, on a real grpc.aio server; and the SLO a caller states."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb

from server.backlog import GrpcBacklog, newest_server_id
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
            seen, waits = [], []
            for _ in range(30):
                await asyncio.sleep(HANDLER_S * 2)
                backlog.sample()
                seen.append(backlog.backlog)
                waits.append(backlog.wait_ms)
            assert max(seen) >= CALLS // 2  # most calls waited for their handler, not in it
            assert backlog.call_ms == pytest.approx(HANDLER_S * 1e3, rel=0.5)  # ~10 ms per call, learned
            assert max(waits) >= CALLS // 4 * HANDLER_S * 1e3  # hundreds of ms of waiting, seen
            await asyncio.gather(*calls)
            backlog.sample()
            assert backlog.backlog == 0 and backlog.wait_ms == 0 and not backlog.busy()
        await server.stop(None)

    asyncio.run(scenario())


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
