"""Faults against real servers: bad requests among good ones, a session that fails on some
inputs, clients that vanish mid-call, clients that abuse the transport, batchers that die."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.samples import Sample
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtest.messages import digits_request, minilm_request
from loadtest.serving import RunningServer, wait_until
from slimserve.variants.data import load_digits_split
from tests.server.scrape import scrape, value

TIMEOUT_S = 60.0
TOKENS = 16


def _minilm(first_id: int = 2000, length: int = TOKENS, variant: str = "fp32") -> pb.ModelInferRequest:
    ids = np.full((1, length), 101, dtype=np.int64)
    ids[0, 1] = first_id
    return minilm_request(ids, variant=variant)


def _digits(rows: int = 1, variant: str = "fp32") -> pb.ModelInferRequest:
    return digits_request(load_digits_split()[1].inputs["images"][:rows], variant=variant)


def _race(address: str, good: list[pb.ModelInferRequest], bad: list[pb.ModelInferRequest]) -> list[grpc.StatusCode]:
    """Send all at once from many threads (so the server batches them together); codes in order."""

    def call(request: pb.ModelInferRequest) -> grpc.StatusCode:
        with grpc.insecure_channel(address) as channel:
            try:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=TIMEOUT_S)
                return grpc.StatusCode.OK
            except grpc.RpcError as error:
                return error.code()

    mixed = [r for pair in zip(good, bad, strict=True) for r in pair]
    with ThreadPoolExecutor(max_workers=len(mixed)) as pool:
        return list(pool.map(call, mixed))


@pytest.fixture(scope="module")
def faults_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"SLIMSERVE_SHADOW_FRACTION": "0", "SLIMSERVE_KEEPALIVE_MIN_PING_INTERVAL_S": "5",
           "SLIMSERVE_MAX_METADATA_BYTES": "4096"}  # fmt: skip
    running = RunningServer(repository, tmp_path_factory.mktemp("faults"), env=env)
    yield running
    assert running.stop() == 0


def test_invalid_requests_racing_valid_ones_fail_alone(faults_server: RunningServer) -> None:
    """Declared ranges (model.yaml) refuse out-of-vocabulary ids and over-long inputs up front."""
    good = [_minilm(2000 + i) for i in range(32)]
    bad = [_minilm(10_000_000) if i % 2 else _minilm(length=600) for i in range(32)]
    codes = _race(faults_server.address, good, bad)
    assert codes[0::2] == [grpc.StatusCode.OK] * 32
    assert codes[1::2] == [grpc.StatusCode.INVALID_ARGUMENT] * 32
    with grpc.insecure_channel(faults_server.address) as channel, pytest.raises(grpc.RpcError) as refused:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_minilm(-5), timeout=TIMEOUT_S)
    assert "input 'input_ids'" in refused.value.details() and "[0, " in refused.value.details()


@pytest.fixture(scope="module")
def undeclared_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A copy of the repository whose minilm declares no value ranges (an older build, or a
    user model): out-of-vocabulary ids reach the session, which fails at run time on them."""
    copy = tmp_path_factory.mktemp("undeclared") / "repo"
    shutil.copytree(repository, copy)
    config_path = copy / "minilm" / "model.yaml"
    config = yaml.safe_load(config_path.read_text())
    for spec in config["inputs"]:
        for key in ("min_value", "max_value", "max_shape"):
            spec.pop(key, None)
    config_path.write_text(yaml.safe_dump(config))
    running = RunningServer(copy, tmp_path_factory.mktemp("undeclared-server"), env={"SLIMSERVE_SHADOW_FRACTION": "0"})
    yield running
    assert running.stop() == 0


def test_a_session_failing_on_some_inputs_fails_only_those_calls(undeclared_server: RunningServer) -> None:
    good = [_minilm(2000 + i) for i in range(32)]
    bad = [_minilm(10_000_000 + i) for i in range(32)]
    codes = _race(undeclared_server.address, good, bad)
    assert codes[0::2] == [grpc.StatusCode.OK] * 32  # 0 of the well-formed calls fail
    assert codes[1::2] == [grpc.StatusCode.INVALID_ARGUMENT] * 32
    with grpc.insecure_channel(undeclared_server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelInfer(_minilm(10_000_000), timeout=TIMEOUT_S)
        assert "variant 'fp32' could not run this input" in failed.value.details()
        assert stub.ModelInfer(_digits(2), timeout=TIMEOUT_S).raw_output_contents  # other models keep serving
        assert stub.ModelInfer(_minilm(2000, variant="int8"), timeout=TIMEOUT_S).raw_output_contents


def test_a_thousand_clients_vanishing_mid_call_leak_nothing(faults_server: RunningServer) -> None:
    async def vanish(count: int) -> int:
        """Start calls and cancel them after 0–12 ms; how many were answered first."""
        answered = 0
        async with grpc.aio.insecure_channel(faults_server.address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = _digits(8)
            for start in range(0, count, 50):
                calls = [stub.ModelInfer(request, timeout=TIMEOUT_S) for _ in range(50)]
                await asyncio.sleep(0.002 * (start % 7))  # some reach the queue, some the session
                for call in calls:
                    call.cancel()
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
                answered += sum(not isinstance(o, BaseException) for o in outcomes)
        return answered

    before = scrape(str(faults_server.metrics_url))
    answered = asyncio.run(vanish(1000))

    def idle() -> dict[str, list[Sample]] | None:  # the published state lags by up to a publish period
        samples = scrape(str(faults_server.metrics_url))
        empty = value(samples, "slimserve_queue_depth") == 0 and value(samples, "slimserve_inflight_requests") == 0
        return samples if empty else None

    after = wait_until(idle, TIMEOUT_S, "an empty queue and no call in flight")

    def delta(code: str) -> float:
        return value(after, "slimserve_requests", "slimserve_requests_total", model="digits", code=code) - value(
            before, "slimserve_requests", "slimserve_requests_total", model="digits", code=code
        )

    # A cancelled call is counted CANCELLED, never OK (before the fix it was: CancelledError
    # is not an Exception). The server's OK count may exceed the client's only by answers the
    # cancel crossed on the wire.
    assert delta("CANCELLED") > 0
    assert answered <= delta("OK") <= answered + 50
    assert delta("OK") + delta("CANCELLED") <= 1000
    with grpc.insecure_channel(faults_server.address) as channel:
        assert service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_digits(), timeout=TIMEOUT_S)


def test_transport_abuse_is_refused_and_other_clients_are_unaffected(faults_server: RunningServer) -> None:
    with grpc.insecure_channel(faults_server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as oversized:
            stub.ModelInfer(_digits(), metadata=[("x-junk", "j" * 8192)], timeout=TIMEOUT_S)
        assert oversized.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
        assert stub.ModelInfer(_digits(), timeout=TIMEOUT_S).raw_output_contents  # same channel still works
    # A client that pings every 50 ms (the server allows one per 5 s here) is sent GOAWAY.
    pinger_options = [("grpc.keepalive_time_ms", 50), ("grpc.keepalive_permit_without_calls", 1),
                      ("grpc.http2.max_pings_without_data", 0)]  # fmt: skip
    with grpc.insecure_channel(faults_server.address, options=pinger_options) as pinger:
        states: list[grpc.ChannelConnectivity] = []
        pinger.subscribe(states.append, try_to_connect=True)
        health_pb2_grpc.HealthStub(pinger).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        # Connectivity callbacks arrive on gRPC's own thread, some time after the call: wait for
        # READY to be reported, then for the GOAWAY to take the channel out of it.
        ready = grpc.ChannelConnectivity.READY
        wait_until(lambda: ready in states, 30, lambda: f"READY among {states}", interval_s=0.05)
        ready_at = states.index(ready)
        wait_until(lambda: len(states) > ready_at + 1, 30, lambda: f"a state after READY: {states}")
    with grpc.insecure_channel(faults_server.address) as channel:
        assert service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_digits(), timeout=TIMEOUT_S)


def test_health_turns_not_serving_when_no_model_can_serve(repository: Path) -> None:
    """In a process of its own (it imports the server's protos, which clash with
    tritonclient's in this one): kill each batcher loop past its restarts, then probe."""
    scenario = subprocess.run(
        [sys.executable, "-m", "tests.server.health_scenario", str(repository)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert scenario.returncode == 0, scenario.stdout + scenario.stderr
    assert "digits not ready, minilm ready, SERVING; both dead: NOT_SERVING" in scenario.stdout
