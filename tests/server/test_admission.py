"""Admission over real gRPC: a refused call is told which rule refused it and why.

A fresh server (nothing else calls it: the SLO below would teach a shared server's traffic
SLO) gets CONCURRENT digits calls at once with an SLO no variant can meet, routed and pinned.
Calls that find work ahead are refused UNAVAILABLE by one of two rules:
it waited for the event loop longer than its SLO (before decoding), or the router's
decision sheds it, and the message then names the variant, the SLO and the probability the
router gave it (as Explain does). Which calls meet which rule depends on the machine's
timing, so each refusal must carry one of the two messages, exactly.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc

from loadtest.messages import digits_request
from loadtest.serving import RunningServer

CONCURRENT = 64
UNREACHABLE_SLO_MS = 1e-6
CALL_TIMEOUT_S = 30.0
DECIDED = re.compile(
    r"overloaded: variant '(?P<variant>[\w-]+)' would answer within the 1e-06 ms SLO with probability "
    r"(?P<p>[\d.]+) \(predicted [\d.]+ ms\) behind the work ahead of it; retry later or elsewhere"
)
WAITED = re.compile(
    r"overloaded: calls wait about \d+ ms for the server, too long for the 1e-06 ms SLO; retry later or elsewhere"
)


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(repository, tmp_path_factory.mktemp("admission"))
    yield running
    assert running.stop() == 0, running.log_tail()


async def _at_once(address: str, variant: str) -> list[tuple[grpc.StatusCode, str]]:
    """CONCURRENT calls sent together: each one's status code and message."""
    request = digits_request(variant=variant, slo_ms=UNREACHABLE_SLO_MS)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def call() -> tuple[grpc.StatusCode, str]:
            try:
                await stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or ""
            return grpc.StatusCode.OK, ""

        return await asyncio.gather(*(call() for _ in range(CONCURRENT)))


@pytest.mark.parametrize("variant", ["", "fp32"], ids=["routed", "pinned"])
def test_a_call_refused_behind_work_names_its_chance_of_making_the_slo(server: RunningServer, variant: str) -> None:
    answers = asyncio.run(_at_once(server.address, variant))
    assert {code for code, _ in answers} <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, answers
    refusals = [details for code, details in answers if code == grpc.StatusCode.UNAVAILABLE]
    assert refusals
    assert all(DECIDED.fullmatch(r) or WAITED.fullmatch(r) for r in refusals), refusals
    decided = [m for m in map(DECIDED.fullmatch, refusals) if m]
    assert all(float(m["p"]) == 0.0 for m in decided)  # nothing answers in a nanosecond
    if variant:
        assert {m["variant"] for m in decided} <= {variant}
