"""`serve --workers N`: real worker processes on one port, one merged /metrics, SIGTERM drains all.

Each test starts its own supervisor (exact counts are asserted). Clients open one connection
per channel (a local subchannel pool), since the kernel spreads connections, not calls.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtest.messages import digits_request
from loadtest.serving import RunningServer, wait_until
from slimserve.repository.format import VariantEntry, load_model
from slimserve.repository.hardware import fingerprint, usable_cores
from slimserve.server.process.metrics_merge import merge
from slimserve.server.process.settings import Settings
from slimserve.server.process.workers import Supervisor, WorkersConfigError, worker_count
from tests.conftest import tiny_digits_recipe
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


def test_each_worker_routes_for_its_share_of_the_cores(tmp_path: Path) -> None:
    supervisor = Supervisor(Settings(repository=tmp_path, workers=4), 4, None)
    try:
        worker = Settings.model_validate(json.loads(supervisor._worker_settings(2, 8001, None)))
    finally:
        shutil.rmtree(supervisor._scratch)
    assert (worker.workers, worker.worker_index, worker.worker_count) == (1, 2, 4)
    assert worker.cpu_share == 0.25
    assert Settings(repository=tmp_path).cpu_share == 1.0


def test_two_workers_serve_one_port_with_one_metrics_endpoint(digits_repo: Path, tmp_path: Path) -> None:
    running = RunningServer(digits_repo, tmp_path, "--workers", "2")
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


def test_sigterm_drains_every_worker_and_a_dead_worker_is_replaced(digits_repo: Path, tmp_path: Path) -> None:
    running = RunningServer(digits_repo, tmp_path, "--workers", "2")
    supervisor = running.process.pid
    first, second = _worker_pids(supervisor)
    os.kill(second, signal.SIGKILL)

    def replaced() -> list[int] | None:
        pids = _worker_pids(supervisor)
        return pids if len(pids) >= 2 and second not in pids else None

    pids = wait_until(replaced, 120, lambda: f"a worker in place of the killed one; its log:\n{running.log_tail(3000)}")
    assert first in pids  # the other worker kept serving throughout
    # Once it serves: a SIGTERM during its start would stop it unstarted (test_supervisor.py).
    wait_until(lambda: running.log_path.read_text().count("worker 1 serving") == 2, 120,
               lambda: f"the new worker serving; the log:\n{running.log_tail(3000)}")  # fmt: skip
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


def test_one_worker_measures_and_stores_the_profile_the_build_lacks_and_the_others_read_it(
    digits_repo: Path, tmp_path: Path
) -> None:
    """`make run` on a built repository: the build (every core) profiled other threads than
    the workers use. No worker measures on its own; once the build is done, worker 0 measures
    once and stores, and worker 1 loads what it stored."""
    recipe = tmp_path / "digits.yaml"  # digits is built: the background build finds nothing to do
    recipe.write_text(yaml.safe_dump(tiny_digits_recipe().model_dump(mode="json")))
    threads = 1 if usable_cores() > 1 else 2  # not the build's thread count
    env = {"SLIMSERVE_BUILD_RECIPES": json.dumps([str(recipe)]), "SLIMSERVE_SESSION_THREADS": str(threads)}
    running = RunningServer(digits_repo, tmp_path, "--workers", "2", "--build-missing", env=env)
    key = fingerprint(threads).key

    def served() -> list[VariantEntry]:
        return list(load_model(digits_repo / "digits").variants.values())

    try:
        wait_until(lambda: all(key in v.manifest.profiles for v in served()), 120,
                   lambda: f"the stored profiles; the log:\n{running.log_tail()}")  # fmt: skip
        # Worker 1 borrowed the build's profile at start-up (unless worker 0 had stored its own
        # by then): it loads the stored one when its poller sees the files change.
        borrowed = re.compile(r"^\[worker 1\] INFO [\w.]+: digits: routing on this machine's profile", re.M)
        reloaded = re.compile(r"^\[worker 1\] INFO [\w.]+: reloaded digits", re.M)
        if borrowed.search(running.log_path.read_text()):
            wait_until(lambda: reloaded.search(running.log_path.read_text()), 60, "worker 1 loading the stored profile")
    finally:
        assert running.stop() == 0
    log = running.log_path.read_text()
    assert "measured one at start-up" not in log  # no worker measured on its own
    (stored,) = [line for line in log.splitlines() if "measured this machine's profile" in line]
    assert stored.startswith("[worker 0] ") and f"for {threads} session thread(s)" in stored
    assert all(v.manifest.profiles[key].hardware.threads == threads for v in served())
    assert "%|" not in log  # no progress bar
