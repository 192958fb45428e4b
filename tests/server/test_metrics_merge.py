"""The merged `/metrics` of `--workers` never lets a counter fall (issue 23, M6) and survives a
worker whose exposition does not parse (L9): unit cases on real prometheus-client expositions,
and a real supervisor with a SIGSTOP'd worker and a killed one."""

from __future__ import annotations

import os
import signal
from itertools import pairwise
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from tritonclient.grpc import service_pb2_grpc

from loadtest.messages import digits_request
from loadtest.serving import RunningServer, wait_until
from slimserve.server.process.metrics_merge import CounterCarry, merge

URLS = {0: "http://127.0.0.1:1/metrics", 1: "http://127.0.0.1:2/metrics"}


def _text(calls: float, depth: float, latencies: list[float]) -> str:
    registry = CollectorRegistry()
    Counter("calls", "calls", ["model"], registry=registry).labels("digits").inc(calls)
    Gauge("depth", "queue depth", ["model"], registry=registry).labels("digits").set(depth)
    histogram = Histogram("latency_seconds", "latency", buckets=(0.01, 0.1), registry=registry)
    for seconds in latencies:
        histogram.observe(seconds)
    return generate_latest(registry).decode()


def _values(families: list) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def _calls(families: list) -> float:
    return _values(families)[("calls_total", (("model", "digits"),))]


def _buckets(families: list) -> list[float]:
    values = _values(families)
    return [values[("latency_seconds_bucket", (("le", le),))] for le in ("0.01", "0.1", "+Inf")]


def test_a_worker_that_misses_a_scrape_is_summed_with_what_it_last_reported() -> None:
    carry = CounterCarry()
    both = merge({0: _text(3, 5, [0.005]), 1: _text(4, 7, [0.05])}, carry, URLS)
    assert _calls(both) == 7
    alone = merge({0: _text(5, 6, [0.005])}, carry, URLS)  # worker 1 stopped, or too slow to answer
    assert _calls(alone) == 9  # 5 + the 4 worker 1 last reported, not 5
    gauges = [(s.labels["worker"], s.value) for f in alone if f.name == "depth" for s in f.samples]
    assert gauges == [("0", 6.0)]  # a gauge is never carried: it says nothing once stale
    back = merge({0: _text(5, 6, [0.005]), 1: _text(6, 7, [0.05])}, carry, URLS)
    assert _calls(back) == 11


def test_a_restarted_worker_adds_to_what_it_counted_before() -> None:
    carry = CounterCarry()
    merge({0: _text(3, 5, [0.005]), 1: _text(40, 7, [0.05] * 4)}, carry, URLS)
    restarted = {0: URLS[0], 1: "http://127.0.0.1:3/metrics"}  # a new process on a new port
    # It counted 50 since its restart: more than before, so only the new port tells.
    after = merge({0: _text(3, 5, [0.005]), 1: _text(50, 1, [0.05])}, carry, restarted)
    assert _calls(after) == 3 + 40 + 50
    assert _buckets(after) == [1, 6, 6]  # the histogram stays one histogram: 1 + 4 + 1 observations
    # A restart on the same port shows as counts that fell.
    fell = merge({0: _text(3, 5, [0.005]), 1: _text(2, 1, [])}, carry, restarted)
    assert _calls(fell) == 3 + 40 + 50 + 2
    assert _buckets(fell) == [1, 6, 6]


def test_the_sums_never_fall_across_a_long_sequence_of_misses_and_restarts() -> None:
    carry, reported, ports = CounterCarry(), [], {0: 10, 1: 20}
    counts = {0: 0.0, 1: 0.0}
    for scrape in range(200):  # a worker misses every 7th scrape, one restarts every 30th
        for worker in counts:
            counts[worker] += 1 + (scrape * worker) % 3
        if scrape % 30 == 29:
            counts[1] = scrape % 4  # counts again from (almost) zero
            ports[1] += 1
        urls = {w: f"http://127.0.0.1:{p}/metrics" for w, p in ports.items()}
        texts = {w: _text(c, 0, []) for w, c in counts.items() if not (w == 0 and scrape % 7 == 3)}
        reported.append(_calls(merge(texts, carry, urls)))
    assert all(later >= earlier for earlier, later in pairwise(reported)), reported


def test_an_exposition_that_does_not_parse_leaves_the_others_served() -> None:
    carry = CounterCarry()
    merge({0: _text(3, 5, []), 1: _text(4, 7, [])}, carry, URLS)
    families = merge({0: _text(4, 5, []), 1: "calls_total{model=digits 4\n"}, carry, URLS)  # broken label
    assert _calls(families) == 8  # worker 0's 4 and worker 1's last 4


def _workers(supervisor: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()]


def _calls_total(url: str) -> float:
    from tests.server.scrape import scrape, value

    return float(value(scrape(url), "slimserve_requests", "slimserve_requests_total", model="digits", variant="fp32"))


def test_merged_counters_never_fall_across_a_stopped_and_a_restarted_worker(digits_repo: Path, tmp_path: Path) -> None:
    running = RunningServer(digits_repo, tmp_path, "--workers", "2")
    try:
        assert running.metrics_url is not None
        url = running.metrics_url
        channels = [grpc.insecure_channel(running.address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(8)]  # fmt: skip
        for channel in channels:  # connections on both workers (all 8 on one: 2⁻⁷)
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(digits_request(variant="fp32"), timeout=30)
        seen = [_calls_total(url)]
        assert seen[0] == 8
        supervisor = running.process.pid
        workers = _workers(supervisor)
        os.kill(workers[1], signal.SIGSTOP)  # it misses the next scrape (its fetch times out)
        try:
            seen.append(_calls_total(url))
        finally:
            os.kill(workers[1], signal.SIGCONT)
        os.kill(workers[1], signal.SIGKILL)  # the supervisor starts another, which counts from zero
        wait_until(lambda: len(now := _workers(supervisor)) == 2 and workers[1] not in now, 120, "a new worker")
        seen.append(_calls_total(url))
        for channel in channels:
            channel.close()
        print(f"\nslimserve_requests_total (digits fp32) at each scrape: {seen}")
        assert seen == sorted(seen) and seen[-1] >= 8, seen
    finally:
        assert running.stop() == 0
