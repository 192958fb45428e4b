"""`make bench-router`: the router against pinned variants on one stepped, open-loop load ramp.

Layout (DESIGN.md's benchmark rule): the server runs as `--hardware-profile edge`, pinned to
the first core with one ONNX Runtime thread; this load generator runs on the other cores.
Arrivals are open-loop (Poisson, scheduled in advance), so slow answers do not slow the
offered load, and latency is measured from each request's *scheduled* send time.

Traffic is `digits` with a mix of SLOs: interactive requests (1 image, tight SLO) and batch
requests (8 images, loose SLO); every answer is scored against the image's true label.
The ramp goes from well below to about 2x the capacity of fp32, measured first with the
same mix. Steps are interleaved: at each load level every policy runs in turn, so that a
noisy neighbour hurts all of them alike, and every policy at a level gets the same arrival
times, request kinds and images (common random numbers): their differences are then the
policies', not the draw's. The generator's own garbage collector is off during a step.

Per step and policy: SLO attainment (requests answered within their SLO), mean quality
(accuracy of the answered images), effective accuracy (images answered correctly *and*
within SLO, over all images sent — the Model-Switching metric) and, for the router, the
share of images per variant. Writes Markdown, CSV and a PNG; also prints the cost of one
routing decision (a microbenchmark on the real repository's profiles).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtest.serving import one_model_repository, running_server
from router.build import build_model_router
from router.hints import RequestHints
from server.tls import ClientSecurity
from variants.data import load_digits_split
from variants.repository import load_model

MODEL = "digits"
POLICIES = ("fp32", "int8", "distilled", "router")  # a variant name pins it; "router" routes


@dataclass(frozen=True)
class RequestKind:
    """One kind of traffic in the mix."""

    name: str
    rows: int
    slo_ms: float
    share: float


@dataclass
class Outcome:
    """What happened to one request."""

    kind: RequestKind
    latency_ms: float
    ok: bool
    correct_rows: int
    variant: str


@dataclass
class StepResult:
    """One policy at one load level."""

    policy: str
    load: float  # fraction of fp32's capacity
    offered_rps: float
    outcomes: list[Outcome] = field(default_factory=list)

    def row(self) -> dict[str, float | str]:
        sent_rows = sum(o.kind.rows for o in self.outcomes)
        answered_rows = sum(o.kind.rows for o in self.outcomes if o.ok)
        in_slo = [o for o in self.outcomes if o.ok and o.latency_ms <= o.kind.slo_ms]
        shares = Counter[str]()
        for o in self.outcomes:
            if o.ok:
                shares[o.variant] += o.kind.rows
        row: dict[str, float | str] = {
            "load": self.load,
            "policy": self.policy,
            "offered_rps": self.offered_rps,
            "requests": len(self.outcomes),
            "failed": sum(not o.ok for o in self.outcomes),
            "slo_attainment": len(in_slo) / max(len(self.outcomes), 1),
            "mean_quality": sum(o.correct_rows for o in self.outcomes if o.ok) / max(answered_rows, 1),
            "effective_accuracy": sum(o.correct_rows for o in in_slo) / max(sent_rows, 1),
        }
        for kind in sorted({o.kind.name for o in self.outcomes}):
            latencies = [o.latency_ms for o in self.outcomes if o.kind.name == kind and o.ok]
            row[f"p95_ms_{kind}"] = float(np.percentile(latencies, 95)) if latencies else float("nan")
        for variant in ("fp32", "int8", "pruned", "distilled"):
            row[f"share_{variant}"] = shares[variant] / max(answered_rows, 1)
        return row


class Traffic:
    """Builds requests of each kind from held-out digits and scores the answers."""

    def __init__(self, kinds: list[RequestKind], seed: int) -> None:
        held_out = load_digits_split()[1]
        assert held_out.labels is not None
        self.images = held_out.inputs["images"]
        self.labels: np.ndarray = held_out.labels
        self.kinds = kinds
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Start the same sequence again: every policy at a load step gets the same arrival
        times, kinds and images (common random numbers), so that their differences are the
        policies', not the draw's."""
        self.rng = np.random.default_rng(seed)

    def pick(self) -> RequestKind:
        return self.kinds[int(self.rng.choice(len(self.kinds), p=[k.share for k in self.kinds]))]

    def request(self, kind: RequestKind, policy: str) -> tuple[pb.ModelInferRequest, np.ndarray]:
        rows = self.rng.choice(len(self.images), size=kind.rows, replace=False)
        images = np.ascontiguousarray(self.images[rows])
        request = pb.ModelInferRequest(model_name=MODEL, model_version="" if policy == "router" else policy)
        request.inputs.add(name="images", datatype="FP32", shape=list(images.shape))
        request.raw_input_contents.append(images.tobytes())
        request.parameters["slo_ms"].double_param = kind.slo_ms
        return request, self.labels[rows]


async def _send(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    kind: RequestKind,
    request: pb.ModelInferRequest,
    labels: np.ndarray,
    scheduled_s: float,
    timeout_s: float,
) -> Outcome:
    try:
        response = await stub.ModelInfer(request, timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return Outcome(kind, (time.perf_counter() - scheduled_s) * 1e3, False, 0, "")
    latency_ms = (time.perf_counter() - scheduled_s) * 1e3
    logits = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(kind.rows, -1)
    correct = int((logits.argmax(axis=1) == labels).sum())
    return Outcome(kind, latency_ms, True, correct, response.parameters["variant"].string_param)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The load generator's own garbage collector, off (collected first, on again after): a
    full collection of its heap of pending calls takes ~0.1 s on this machine, and every call
    in flight then looks 0.1 s late, whichever policy happens to be running."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def open_loop(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    traffic: Traffic,
    policy: str,
    rate_rps: float,
    seconds: float,
    timeout_s: float,
) -> tuple[list[Outcome], float]:
    """Poisson arrivals at `rate_rps` for `seconds`; returns outcomes and the rate really sent."""
    with _collector_paused():
        tasks = []
        start = time.perf_counter()
        scheduled = start
        while True:
            scheduled += traffic.rng.exponential(1.0 / rate_rps)
            if scheduled - start > seconds:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = traffic.pick()
            request, labels = traffic.request(kind, policy)  # drawn here, in order: the same for every policy
            tasks.append(asyncio.create_task(_send(stub, kind, request, labels, scheduled, timeout_s)))
        sent_rps = len(tasks) / (time.perf_counter() - start)
        return list(await asyncio.gather(*tasks)), sent_rps


async def capacity_rps(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, traffic: Traffic, policy: str, seconds: float
) -> float:
    """Closed loop with many callers: requests/s the policy serves with this mix."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            request, _ = traffic.request(traffic.pick(), policy)
            await stub.ModelInfer(request, timeout=30)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(32)))
    return done / (time.perf_counter() - started)


@dataclass
class _StaticQueue:
    queued_rows: int
    running_rows: int
    running_started_s: float


def decision_cost_us(repository: Path, calls: int = 20_000) -> float:
    """Mean cost of one `route` call on the real profiles and a busy-looking queue."""
    entry = load_model(repository / MODEL)
    key = next(iter(entry.variants[entry.config.reference_variant].manifest.profiles))
    queues = {name: _StaticQueue(3, 8, time.monotonic()) for name in entry.variants}
    router = build_model_router(entry, key, queues)
    hints = RequestHints(slo_ms=10.0, slo_source="parameter")
    for _ in range(1000):
        router.route(hints, 1)
    started = time.perf_counter()
    for _ in range(calls):
        router.route(hints, 1)
    return (time.perf_counter() - started) / calls * 1e6


def write_reports(rows: list[dict[str, float | str]], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench_router.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| load × fp32 capacity | policy | offered rps | SLO attainment | mean quality | effective accuracy "
        "| p95 interactive / batch ms | router shares fp32 / int8 / pruned / distilled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shares = (
            " / ".join(f"{float(r[f'share_{v}']):.0%}" for v in ("fp32", "int8", "pruned", "distilled"))
            if r["policy"] == "router"
            else ""
        )
        lines.append(
            f"| {float(r['load']):.2f} | {r['policy']} | {float(r['offered_rps']):.0f} | "
            f"{float(r['slo_attainment']):.1%} | {float(r['mean_quality']):.2%} | "
            f"{float(r['effective_accuracy']):.2%} | {float(r.get('p95_ms_interactive', np.nan)):.1f} / "
            f"{float(r.get('p95_ms_batch', np.nan)):.1f} | {shares} |"
        )
    table = "\n".join(lines)
    (out / "bench_router.md").write_text(table + "\n")
    _plot(rows, out / "bench_router.png")
    return table


def _plot(rows: list[dict[str, float | str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for policy in POLICIES:
        mine = [r for r in rows if r["policy"] == policy]
        loads = [float(r["load"]) for r in mine]
        left.plot(loads, [float(r["effective_accuracy"]) for r in mine], marker="o", label=policy)
    left.set_xlabel("offered load (× fp32 capacity)")
    left.set_ylabel("effective accuracy (correct and within SLO)")
    # The policies worth comparing differ by tenths of a point; a pinned variant past its
    # capacity falls towards 0 and leaves the plot (the table has every figure).
    left.set_ylim(0.97, 1.001)
    left.set_title("effective accuracy per policy (zoomed: 97–100 %)")
    left.grid(alpha=0.3)
    left.legend()
    routed = [r for r in rows if r["policy"] == "router"]
    loads = [float(r["load"]) for r in routed]
    bottom = np.zeros(len(routed))
    for variant in ("fp32", "int8", "pruned", "distilled"):
        share = np.array([float(r[f"share_{variant}"]) for r in routed])
        right.bar(loads, share, bottom=bottom, width=0.15, label=variant)
        bottom += share
    right.set_xlabel("offered load (× fp32 capacity)")
    right.set_ylabel("share of images")
    right.set_title("router: variant shares over the ramp")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


async def run(args: argparse.Namespace) -> list[dict[str, float | str]]:
    kinds = [
        RequestKind("interactive", 1, args.interactive_slo_ms, 0.5),
        RequestKind("batch", 8, args.batch_slo_ms, 0.5),
    ]
    traffic = Traffic(kinds, seed=0)
    rows: list[dict[str, float | str]] = []
    async with ClientSecurity.from_environment().aio_channel(args.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await capacity_rps(stub, traffic, "router", 2.0)  # warm-up: sessions and the router's corrections
        fp32_capacity = await capacity_rps(stub, traffic, "fp32", args.capacity_seconds)
        print(f"fp32 capacity with this mix: {fp32_capacity:.0f} requests/s", flush=True)
        for step, load in enumerate(args.loads):
            for policy in POLICIES:
                traffic.reseed(1000 + step)
                outcomes, sent = await open_loop(
                    stub, traffic, policy, load * fp32_capacity, args.step_seconds, args.timeout_s
                )
                result = StepResult(policy, load, sent, outcomes)
                rows.append(result.row())
                r = rows[-1]
                print(
                    f"load {load:.2f} {policy:>9}: {sent:6.0f} rps sent, SLO {float(r['slo_attainment']):6.1%}, "
                    f"effective accuracy {float(r['effective_accuracy']):6.2%}, failed {r['failed']}",
                    flush=True,
                )
                await asyncio.sleep(args.pause_seconds)  # let queues drain between segments
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=Path("docs/bench"), help="where the table, CSV and PNG go")
    parser.add_argument("--loads", type=float, nargs="+", default=[0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
    parser.add_argument("--step-seconds", type=float, default=8.0)
    parser.add_argument("--pause-seconds", type=float, default=1.5)
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument("--interactive-slo-ms", type=float, default=15.0)
    parser.add_argument("--batch-slo-ms", type=float, default=50.0)
    parser.add_argument("--timeout-s", type=float, default=1.0, help="client deadline of every request")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"routing decision: {decision_cost_us(args.repository):.1f} µs per request (microbenchmark)")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print("warning: one core; server and load generator share it", file=sys.stderr)
    log = args.out / "bench_router_server.log"
    with (
        one_model_repository(args.repository, MODEL) as repo,
        running_server(repo, "--hardware-profile", "edge", log=log) as address,
    ):
        if len(cores) >= 2:
            os.sched_setaffinity(0, set(cores[1:]))  # the server pinned itself to cores[0]
        args.address = address
        rows = asyncio.run(run(args))
    print(write_reports(rows, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
