"""Overload soak: open-loop arrivals at 3× the server's capacity for minutes, then SIGTERM.

The server (one model, `--hardware-profile edge`: one core, one thread) runs on the first
core and this load generator on the second. Steps, in one run:
1. capacity: 32 closed-loop callers pinned to fp32 with no SLO of their own, for
   --capacity-seconds: the requests/s the server carries;
2. overload: Poisson arrivals at --overload × capacity for --seconds, every call pinned to
   fp32 with `slo_ms` --slo-ms and a gRPC deadline of --deadline-s, pre-serialised
   (`digits`: one image; `minilm`: one 32-token sentence);
3. drain: the queue and in-flight gauges on /metrics must return to 0;
4. SIGTERM while the overload goes on: every call must end answered or refused, never lost.

Reported: offered rate, goodput (answers within their SLO per second, against capacity),
admitted p50/p99, refusal p99, the share of calls that timed out, the server's RSS at 1 and
5 minutes, the gauges after the load, and the SIGTERM outcome. Loopback only; it stops by
itself. `make soak` runs it with the fuzzing suite.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from loadtest.interference import pin_every_thread
from loadtest.messages import digits_request, minilm_request
from loadtest.serving import RunningServer, one_model_repository, rss_mib, server_process
from slimserve.repository.hardware import cpu_description
from slimserve.server.transport.tls import ClientSecurity

INFER = "/inference.GRPCInferenceService/ModelInfer"
CHANNELS = 4  # connections the generator spreads calls over (the server allows 256 streams each)
# Refusals: the call was never admitted, so nothing was lost. REFUSED_STREAM (HTTP/2 error
# code 7) guarantees the stream was not processed; the rest are the server's own words, or
# a connection refused after it exited.
REFUSALS = ("overloaded", "shutting down", "not accepting", "queue of variant", "failed to connect",
            "Connection refused", "connections to all backends failing", "error code 7")  # fmt: skip
SENTENCE_TOKENS = 32


def _request(model: str, slo_ms: float | None) -> bytes:
    """One call pinned to fp32, serialised (`digits`: a blank image; `minilm`: one sentence)."""
    if model == "minilm":
        ids = np.full((1, SENTENCE_TOKENS), 1000, dtype=np.int64)
        ids[0, 0], ids[0, -1] = 101, 102
        return minilm_request(ids, variant="fp32", slo_ms=slo_ms).SerializeToString()
    return digits_request(variant="fp32", slo_ms=slo_ms).SerializeToString()


def _gauges(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    wanted = ("slimserve_queue_depth", "slimserve_inflight_requests")
    return {
        family.name: sum(s.value for s in family.samples)
        for family in text_string_to_metric_families(text)
        if family.name in wanted
    }


@dataclass
class Calls:
    """Every call of a phase: when it was due, how long it took, how it ended."""

    due_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    codes: list[grpc.StatusCode] = field(default_factory=list)
    details: Counter[str] = field(default_factory=Counter)  # non-OK outcomes, by code and message
    messages: list[str] = field(default_factory=list)
    generator_lag_p99_ms: float = 0.0

    def record(self, due_s: float, code: grpc.StatusCode, detail: str = "") -> None:
        self.due_s.append(due_s)
        self.latency_s.append(time.perf_counter() - due_s)
        self.codes.append(code)
        self.messages.append(detail)
        if code != grpc.StatusCode.OK:
            self.details[f"{code.name}: {detail[:90]}"] += 1


async def _call(method: grpc.aio.UnaryUnaryMultiCallable, message: bytes, due_s: float, timeout_s: float,
                calls: Calls) -> None:  # fmt: skip
    try:
        await method(message, timeout=timeout_s)
        calls.record(due_s, grpc.StatusCode.OK)
    except grpc.aio.AioRpcError as error:
        calls.record(due_s, error.code(), error.details() or "")


async def capacity_rps(methods: list[grpc.aio.UnaryUnaryMultiCallable], message: bytes, seconds: float) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def caller(method: grpc.aio.UnaryUnaryMultiCallable) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            try:
                await method(message, timeout=30)
                done += 1
            except grpc.aio.AioRpcError as error:  # refused (a stream or queue limit): not capacity
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise

    started = time.perf_counter()
    await asyncio.gather(*(caller(methods[i % len(methods)]) for i in range(32)))
    return done / (time.perf_counter() - started)


async def open_loop(
    methods: list[grpc.aio.UnaryUnaryMultiCallable],
    message: bytes,
    rate_rps: float,
    seconds: float,
    timeout_s: float,
    at: Mapping[float, Callable[[], object]] | None = None,
) -> tuple[Calls, float]:
    """Poisson arrivals; `at` maps seconds into the phase to callables run then (RSS, SIGTERM)."""
    rng = np.random.default_rng(7)
    calls = Calls()
    pending: set[asyncio.Task[None]] = set()
    lateness_s: list[float] = []  # how late the generator's own loop runs: its latencies include it
    running = True

    async def probe() -> None:
        while running:
            asked = time.perf_counter()
            await asyncio.sleep(0.01)
            lateness_s.append(time.perf_counter() - asked - 0.01)

    prober = asyncio.create_task(probe())
    hooks = sorted((at or {}).items())
    start = time.perf_counter()
    due = start
    sent = 0
    while True:
        due += rng.exponential(1.0 / rate_rps)
        if due - start > seconds:
            break
        while hooks and due - start >= hooks[0][0]:
            hooks.pop(0)[1]()
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(_call(methods[sent % len(methods)], message, due, timeout_s, calls))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent += 1
    offered = sent / (time.perf_counter() - start)
    await asyncio.gather(*pending)
    running = False
    await prober
    calls.generator_lag_p99_ms = float(np.percentile(lateness_s, 99) * 1e3) if lateness_s else 0.0
    return calls, offered


def _summary(calls: Calls, capacity: float, seconds: float, slo_ms: float) -> dict[str, float]:
    latency_ms = np.array(calls.latency_s) * 1e3
    codes = np.array([c.value[0] for c in calls.codes])
    ok = codes == grpc.StatusCode.OK.value[0]
    refused = np.isin(codes, [grpc.StatusCode.UNAVAILABLE.value[0], grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]])
    refused_stream = np.array(["error code 7" in d for d in calls.messages], dtype=bool)
    timed_out = codes == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    good = ok & (latency_ms <= slo_ms)
    return {
        "calls": len(codes),
        "goodput_rps": good.sum() / seconds,
        "goodput_share_of_capacity": good.sum() / seconds / capacity,
        "answered_rps": ok.sum() / seconds,
        "admitted_p50_ms": float(np.percentile(latency_ms[ok], 50)) if ok.any() else float("nan"),
        "admitted_p99_ms": float(np.percentile(latency_ms[ok], 99)) if ok.any() else float("nan"),
        "refused_share": refused.mean(),
        "refused_by_http2_share": refused_stream.mean(),  # REFUSED_STREAM: over the stream limit
        "refusal_p99_ms": float(np.percentile(latency_ms[refused], 99)) if refused.any() else float("nan"),
        "timed_out_share": timed_out.mean(),
        "other_codes": float((~(ok | refused | timed_out)).sum()),
        "generator_lag_p99_ms": calls.generator_lag_p99_ms,
    }


async def soak(server: RunningServer, args: argparse.Namespace) -> dict[str, object]:
    report: dict[str, object] = {"cpu": cpu_description(), "model": args.model, "slo_ms": args.slo_ms}
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel, not one shared
    security = ClientSecurity.from_environment()
    channels = [security.aio_channel(server.address, options=options) for _ in range(CHANNELS)]
    methods = [channel.unary_unary(INFER) for channel in channels]
    pid = server.process.pid
    capacity = await capacity_rps(methods, _request(args.model, None), args.capacity_seconds)
    rate = args.overload * capacity
    report.update(capacity_rps=capacity, target_rps=rate)
    print(f"capacity {capacity:.0f} requests/s; offering {rate:.0f}/s for {args.seconds:.0f} s", flush=True)
    rss: dict[str, float] = {}
    checkpoints = {10.0: lambda: rss.update(rss_10s_mib=rss_mib(pid)),
                   60.0: lambda: rss.update(rss_1min_mib=rss_mib(pid)),
                   args.seconds - 1: lambda: rss.update(rss_end_mib=rss_mib(pid))}  # fmt: skip
    gc.collect()
    gc.disable()  # the generator's own pauses would look like server latency
    try:
        calls, offered = await open_loop(methods, _request(args.model, args.slo_ms), rate, args.seconds,
                                         args.deadline_s, checkpoints)  # fmt: skip
    finally:
        gc.enable()
    report.update(offered_rps=offered, **rss, **_summary(calls, capacity, args.seconds, args.slo_ms))
    report["outcomes"] = dict(calls.details.most_common(8))
    await asyncio.sleep(2.0)  # a few publish periods
    assert server.metrics_url is not None
    report["gauges_after"] = _gauges(server.metrics_url)

    sigterm_at = 1.0
    term = {sigterm_at: lambda: os.kill(pid, signal.SIGTERM)}
    final, _ = await open_loop(methods, _request(args.model, args.slo_ms), rate, 4.0, args.deadline_s, term)
    lost = {d: n for d, n in final.details.items() if not any(r in d for r in REFUSALS) and "DEADLINE" not in d}
    report["sigterm"] = {
        "calls": len(final.codes),
        "answered": sum(c == grpc.StatusCode.OK for c in final.codes),
        "refused_or_after_exit": sum(final.details.values()) - sum(lost.values()),
        "lost": sum(lost.values()),
        "lost_outcomes": lost,
        "exit_code": server.process.wait(timeout=60),
        "server_says": _drain_line(args.log),
    }
    for channel in channels:
        await channel.close()
    return report


def _drain_line(log: Path) -> str:
    """The server's own account of its shutdown: admitted calls answered, or cut off."""
    lines = [line for line in log.read_text().splitlines() if "drained" in line or "cut off" in line]
    return lines[-1] if lines else "(no drain line in the server log)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--model", choices=["digits", "minilm"], default="digits")
    parser.add_argument("--seconds", type=float, default=300.0, help="length of the overload phase")
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--overload", type=float, default=3.0, help="offered rate as a multiple of capacity")
    parser.add_argument("--slo-ms", type=float, default=50.0)
    parser.add_argument("--deadline-s", type=float, default=2.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))
    with one_model_repository(args.repository, args.model) as repo:
        args.log = args.out / f"soak_overload_{args.model}_server.log"
        with server_process(repo, "--hardware-profile", "edge", log=args.log) as server:
            if len(cores) >= 2:
                pin_every_thread(set(cores[1:]))  # the server pinned itself to cores[0]; gRPC's threads too
            else:
                print("warning: one core; server and load generator share it", file=sys.stderr)
            report = asyncio.run(soak(server, args))
    text = json.dumps(report, indent=2, default=float)
    (args.out / f"soak_overload_{args.model}.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
