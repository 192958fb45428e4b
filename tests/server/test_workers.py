"""`serve --workers N`: real worker processes on one port, one merged /metrics, SIGTERM drains all.

Each test starts its own supervisor (exact counts are asserted). Clients open one connection
per channel (a local subchannel pool), since the kernel spreads connections, not calls.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtest.messages import digits_request
from loadtest.serving import RunningServer, wait_until
from slimserve.repository.hardware import usable_cores
from slimserve.server.process.metrics_merge import merge
from slimserve.server.process.settings import Settings
from slimserve.server.process.workers import WorkersConfigError, worker_count
from tests.server.scrape import scrape, value

CONNECTIONS = 16


def _digits(variant: str = "int8") -> pb.ModelInferRequest:
    """One blank image: these tests count calls and processes, not answers."""
    return digits_request(variant=variant)


def _channels(address: str) -> list[grpc.Channel]:
    return [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(CONNECTIONS)]


def _worker_pids(supervisor: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()]


def _registry_text(requests: float, depth: float) -> str:
    registry = CollectorRegistry()
    Counter("calls", "calls", ["model"], registry=registry).labels("digits").inc(requests)
    Gauge("depth", "queue depth", ["model"], registry=registry).labels("digits").set(depth)
    histogram = Histogram("latency_seconds", "latency", buckets=(0.01, 0.1), registry=registry)
    histogram.observe(0.005 * requests)
    return generate_latest(registry).decode()


def test_merging_sums_counters_and_histograms_and_labels_gauges_per_worker() -> None:
    families = {f.name: f for f in merge({0: _registry_text(3, 5), 1: _registry_text(4, 7)})}
    calls = {s.name: s.value for s in families["calls"].samples}
    assert calls["calls_total"] == 7
    assert sorted((s.labels["worker"], s.value) for s in families["depth"].samples) == [("0", 5.0), ("1", 7.0)]
    buckets = {s.labels["le"]: s.value for s in families["latency_seconds"].samples if s.name.endswith("_bucket")}
    assert buckets == {"0.01": 0.0, "0.1": 2.0, "+Inf": 2.0}  # 0.015 s and 0.02 s: both in (0.01, 0.1]
    (count,) = [s.value for s in families["latency_seconds"].samples if s.name.endswith("_count")]
    assert count == 2


def test_worker_count_is_the_usable_cores_and_one_on_the_edge_profile() -> None:
    assert worker_count(Settings(workers=0)) == usable_cores()
    assert worker_count(Settings(workers=3)) == 3
    assert worker_count(Settings(workers=0, hardware_profile="edge")) == 1
    with pytest.raises(WorkersConfigError, match="edge"):
        worker_count(Settings(workers=2, hardware_profile="edge"))


def test_two_workers_serve_one_port_with_one_metrics_endpoint(repository: Path, tmp_path: Path) -> None:
    running = RunningServer(repository, tmp_path, "--workers", "2")
    try:
        assert len(_worker_pids(running.process.pid)) == 2
        channels = _channels(running.address)
        calls = 0
        for channel in channels:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(4):
                stub.ModelInfer(_digits(), timeout=30)
                calls += 1
        assert running.metrics_url is not None
        samples = scrape(running.metrics_url)
        requests = value(samples, "slimserve_requests", "slimserve_requests_total", model="digits", variant="int8")
        assert requests == calls
        assert [value(samples, "slimserve_worker_up", worker=w) for w in ("0", "1")] == [1, 1]
        # Both workers took connections (16 connections all on one: 2⁻¹⁵): each one's own gauge,
        # from the snapshot its event loop publishes every 0.25 s while requests arrive.
        url = running.metrics_url

        def both_arriving() -> bool:
            nonlocal samples
            if all(value(samples, "slimserve_arrival_rate", model="digits", worker=w) > 0 for w in ("0", "1")):
                return True
            stub.ModelInfer(_digits(), timeout=30)  # keep each worker's arrivals coming
            for channel in channels:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_digits(), timeout=30)
            samples = scrape(url)
            return False

        wait_until(both_arriving, 10, lambda: f"arrivals on both workers: {samples.get('slimserve_arrival_rate')}")
        for channel in channels:
            channel.close()
    finally:
        assert running.stop() == 0


def test_sigterm_drains_every_worker_and_a_dead_worker_is_replaced(repository: Path, tmp_path: Path) -> None:
    running = RunningServer(repository, tmp_path, "--workers", "2")
    supervisor = running.process.pid
    first, second = _worker_pids(supervisor)
    os.kill(second, signal.SIGKILL)

    def replaced() -> list[int] | None:
        pids = _worker_pids(supervisor)
        return pids if len(pids) >= 2 and second not in pids else None

    pids = wait_until(replaced, 120, lambda: f"a worker in place of the killed one; its log:\n{running.log_tail(3000)}")
    assert first in pids  # the other worker kept serving throughout
    channels = _channels(running.address)

    def call(index: int) -> str:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channels[index % CONNECTIONS])
        try:
            stub.ModelInfer(_digits("fp32"), timeout=60)
            return "OK"
        except grpc.RpcError as error:
            return error.code().name

    with ThreadPoolExecutor(max_workers=CONNECTIONS) as pool:
        futures = [pool.submit(call, i) for i in range(400)]
        time.sleep(0.2)
        os.kill(supervisor, signal.SIGTERM)
        outcomes = [f.result() for f in futures]
    assert running.process.wait(timeout=120) == 0
    # Admitted calls are answered; calls after the drain began are refused cleanly, never lost.
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
    assert outcomes.count("OK") > 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    log = running.log_path.read_text()
    assert log.count("drained: every admitted call was answered") == 2, log[-3000:]
    for channel in channels:
        channel.close()
