"""`make bench-router`: the router against pinned variants on real arrivals, with its ablations.

Three workloads, each in one run (`--runs` of them, for the run-to-run noise):
- *minilm on the trace*: arrivals from the Azure trace (loadtest.trace), time-compressed to
  `--scales` × fp32's capacity; each request one held-out sentence, padded (mask 0) to a
  length drawn from the trace's ContextTokens, clipped to 128 tokens. It is **correct** when
  it arrived within its SLO and its embedding retrieves the right sentence: searched in a
  fixed index of the held-out sentences embedded by fp32 offline (a vector store), itself
  excluded, its nearest hit must be the one fp32's own embedding retrieves.
- *digits on the trace*: the same arrivals; correct = the right label within the SLO.
- *burst* (minilm): Poisson arrivals at 0.3×, then 3×, then 0.3× fp32's capacity, per-second
  effective accuracy and SLO attainment, to see how fast the router degrades and recovers.
Half the requests are interactive (SLO = 3× fp32's batch-1 p50, measured first), half
background (10×); each carries its SLO as the `slo_ms` parameter and twice it as its gRPC
deadline, as a caller that gives up would.

Windows: by default every run replays the window of `--arrivals` arrivals from
`--trace-start`; with `--window-indices`, run k replays the k-th listed of the `--windows`
windows spread over the whole trace, the same windows the simulator numbers
(`loadtest.bench_router_sim --windows`, its check half is the odd ones), and the tables give
each figure as a mean over the runs with its 95 % t-interval.

Policies: a variant name pins it (any of the model's: int8mixed, pruned-int8, …); `router`
routes; `router-no-<mechanism>` routes with that mechanism off (`--router-off`,
router/config.py) — the ablation; `router-compute-<N>` routes on a server that runs N of the
model's session calls at once (SLIMSERVE_COMPUTE_WORKERS, its variants taking turns; by
default every variant's batch runs beside the others). Every policy runs on its own
server (pinned ones share the `router` server), all started at once and pinned to the first
core with one ONNX Runtime thread (`--hardware-profile edge`); the load generator runs
on the other cores. At each load level every policy runs in turn on the same arrivals,
kinds and inputs (common random numbers), so that their differences are the policies'.

Effective accuracy = correct within SLO / sent (the Model-Switching metric). Writes
bench_router.md / .csv / .png and bench_router_burst.csv / .png under `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtest.bench_router_report import Outcome, Segment, write_reports
from loadtest.decision_cost import decision_cost_us
from loadtest.interference import NO_READING, CoreReading, CoreWatch, pin_every_thread
from loadtest.messages import digits_request, minilm_request
from loadtest.serving import one_model_repository, server_process
from loadtest.trace import ATTRIBUTION, DEFAULT_TRACE, Trace
from slimserve.repository.format import load_model
from slimserve.repository.hardware import cpu_description
from slimserve.router.config import MECHANISMS
from slimserve.server.transport.tls import ClientSecurity

PINNED = ("fp32", "int8", "pruned", "distilled")  # the default pinned policies
ROUTERS = ("router", *(f"router-no-{m}" for m in MECHANISMS))
COMPUTE_PREFIX = "router-compute-"  # router-compute-N: the router, N of the model's calls at once
MAX_TOKENS = 128
INTERACTIVE_X, BACKGROUND_X = 3.0, 10.0  # SLOs, in fp32's batch-1 p50
DEADLINE_X = 2.0  # the caller's gRPC deadline, in its SLO
Scorer = Callable[[pb.ModelInferResponse], bool]


@dataclass(frozen=True)
class Request:
    """One arrival, built once and sent to every policy."""

    at_s: float
    kind: str
    slo_ms: float
    request: pb.ModelInferRequest
    correct: Scorer


class Inputs:
    """Requests of one model and a scorer for each answer."""

    model: str

    def request(
        self, rng: np.random.Generator, tokens: int, slo_ms: float | None = None
    ) -> tuple[pb.ModelInferRequest, Scorer]:
        raise NotImplementedError


class MinilmInputs(Inputs):
    """Held-out sentences; correct = retrieves what fp32 retrieves from an fp32 index."""

    model = "minilm"

    def __init__(self, repository: Path) -> None:
        from slimserve.repository.sessions import make_session, run_batched
        from slimserve.variants.data import documentation_sentences, minilm_tokenizer, split_sentences
        from slimserve.variants.evaluate import nearest_neighbours

        _, held_out = split_sentences(documentation_sentences())
        tokenizer = minilm_tokenizer(MAX_TOKENS)
        self.tokens = [tokenizer([sentence]) for sentence in held_out]
        batch = tokenizer(held_out)
        self.index = run_batched(make_session(str(repository / "minilm" / "fp32" / "model.onnx"), 2), batch)
        self.index /= np.linalg.norm(self.index, axis=1, keepdims=True)
        self.expected = nearest_neighbours(self.index)

    def request(
        self, rng: np.random.Generator, tokens: int, slo_ms: float | None = None
    ) -> tuple[pb.ModelInferRequest, Scorer]:
        row = int(rng.integers(len(self.tokens)))
        ids, mask = self.tokens[row]["input_ids"], self.tokens[row]["attention_mask"]
        length = max(ids.shape[1], min(tokens, MAX_TOKENS))
        pad = ((0, 0), (0, length - ids.shape[1]))
        request = minilm_request(np.pad(ids, pad), np.pad(mask, pad), slo_ms=slo_ms)

        def correct(response: pb.ModelInferResponse) -> bool:
            embedding = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
            similarity = self.index @ (embedding / max(float(np.linalg.norm(embedding)), 1e-12))
            similarity[row] = -np.inf
            return int(similarity.argmax()) == int(self.expected[row])

        return request, correct


class DigitsInputs(Inputs):
    """Held-out images; correct = the right label."""

    model = "digits"

    def __init__(self) -> None:
        from slimserve.variants.data import load_digits_split

        held_out = load_digits_split()[1]
        assert held_out.labels is not None
        self.images, self.labels = held_out.inputs["images"], held_out.labels

    def request(
        self, rng: np.random.Generator, tokens: int, slo_ms: float | None = None
    ) -> tuple[pb.ModelInferRequest, Scorer]:
        row = int(rng.integers(len(self.images)))
        request = digits_request(self.images[row : row + 1], slo_ms=slo_ms)
        label = int(self.labels[row])

        def correct(response: pb.ModelInferResponse) -> bool:
            return int(np.frombuffer(response.raw_output_contents[0], dtype=np.float32).argmax()) == label

        return request, correct


def trace_start(args: argparse.Namespace, trace: Trace, run: int) -> int:
    """The first arrival of run `run`'s window in `trace` (module docstring, Windows)."""
    if not args.window_indices:
        return int(args.trace_start)
    return trace.window_starts(args.arrivals, args.windows)[args.window_indices[run - 1]]


def build_requests(
    inputs: Inputs, times_s: np.ndarray, tokens: np.ndarray, slo_ms: dict[str, float], seed: int
) -> list[Request]:
    """The arrivals as requests: kinds and inputs drawn once, from `seed`."""
    rng = np.random.default_rng(seed)
    requests = []
    for at_s, size in zip(times_s, tokens, strict=True):
        kind = "interactive" if rng.random() < 0.5 else "background"
        request, correct = inputs.request(rng, int(size), slo_ms[kind])
        requests.append(Request(float(at_s), kind, slo_ms[kind], request, correct))
    return requests


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The generator's garbage collector off during a segment: a full collection of its heap
    of pending calls takes ~0.1 s, and every call in flight would then look 0.1 s late."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _send(stub: service_pb2_grpc.GRPCInferenceServiceStub, item: Request, scheduled_s: float) -> Outcome:
    try:
        response = await stub.ModelInfer(item.request, timeout=DEADLINE_X * item.slo_ms / 1e3)
    except grpc.aio.AioRpcError as exc:
        latency_ms = (time.perf_counter() - scheduled_s) * 1e3
        return Outcome(item.at_s, item.kind, item.slo_ms, latency_ms, False, False, "", exc.code().name)
    latency_ms = (time.perf_counter() - scheduled_s) * 1e3
    variant = response.parameters["variant"].string_param
    return Outcome(item.at_s, item.kind, item.slo_ms, latency_ms, True, item.correct(response), variant, "OK")


async def replay(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, requests: list[Request], variant: str
) -> tuple[list[Outcome], float]:
    """Send every request at its time (open loop), pinned to `variant` or routed (""); the
    outcomes and the worst lateness of a send against its schedule (ms)."""
    tasks, worst_slip_s = [], 0.0
    with _collector_paused():
        start = time.perf_counter() + 0.05
        for item in requests:
            item.request.model_version = variant
            scheduled = start + item.at_s
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            worst_slip_s = max(worst_slip_s, time.perf_counter() - scheduled)
            tasks.append(asyncio.create_task(_send(stub, item, scheduled)))
        outcomes = list(await asyncio.gather(*tasks))
    return outcomes, worst_slip_s * 1e3


def is_router(policy: str) -> bool:
    return policy in ROUTERS or _compute_workers(policy) is not None


def _compute_workers(policy: str) -> int | None:
    """N of a `router-compute-<N>` policy; None for any other."""
    count = policy.removeprefix(COMPUTE_PREFIX)
    return int(count) if policy.startswith(COMPUTE_PREFIX) and count.isdigit() and int(count) > 0 else None


def server_options(policy: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """What a router policy's server is started with beyond the edge profile: flags, environment."""
    workers = _compute_workers(policy)
    if workers is not None:
        return (), {"SLIMSERVE_COMPUTE_WORKERS": str(workers)}
    off = policy.removeprefix("router-no-") if policy != "router" else ""
    return ("--router-off", off) if off else (), {}


def policy_target(policy: str) -> tuple[str, str]:
    """(server, model_version) for a policy: pinned ones on the `router` server."""
    return (policy, "") if is_router(policy) else ("router", policy)


class Bench:
    """Servers, stubs and calibration of one model's workloads; `watch` reads what else ran
    on the servers' core (loadtest.interference)."""

    def __init__(
        self,
        stubs: dict[str, service_pb2_grpc.GRPCInferenceServiceStub],
        inputs: Inputs,
        watch: CoreWatch | None = None,
    ) -> None:
        self.stubs, self.inputs, self.watch = stubs, inputs, watch

    async def run_policy(self, policy: str, requests: list[Request]) -> tuple[list[Outcome], float, CoreReading]:
        """The outcomes, the generator's worst slip (ms) and what the servers' core did meanwhile."""
        server, variant = policy_target(policy)
        if self.watch is not None:
            self.watch.start()
        outcomes, slip_ms = await replay(self.stubs[server], requests, variant)
        return outcomes, slip_ms, NO_READING if self.watch is None else self.watch.reading()

    async def fp32_p50_ms(self, calls: int = 60) -> float:
        """Batch-1 fp32 round trip at the typical size, one call at a time."""
        rng = np.random.default_rng(7)
        latencies = []
        for _ in range(calls):
            request, _ = self.inputs.request(rng, MAX_TOKENS)
            request.model_version = "fp32"
            started = time.perf_counter()
            await self.stubs["router"].ModelInfer(request, timeout=30)
            latencies.append((time.perf_counter() - started) * 1e3)
        return float(np.percentile(latencies, 50))

    async def capacity_rps(self, variant: str, seconds: float, callers: int = 32) -> float:
        """Closed loop with many callers: requests/s `variant` serves at the typical size."""
        rng = np.random.default_rng(11)
        pool = [self.inputs.request(rng, MAX_TOKENS)[0] for _ in range(64)]
        for request in pool:
            request.model_version = variant
        done, stop_at = 0, time.perf_counter() + seconds

        async def caller(i: int) -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await self.stubs["router"].ModelInfer(pool[(i + done) % len(pool)], timeout=30)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(callers)))
        return done / (time.perf_counter() - started)


async def trace_workload(
    bench: Bench, name: str, policies: tuple[str, ...], args: argparse.Namespace, run: int
) -> list[Segment]:
    """Every policy at every scale on the same time-compressed trace window."""
    p50_ms = await bench.fp32_p50_ms()
    slo_ms = {"interactive": INTERACTIVE_X * p50_ms, "background": BACKGROUND_X * p50_ms}
    capacity = await bench.capacity_rps("fp32", args.capacity_seconds)
    print(f"[{name} run {run}] fp32 batch-1 p50 {p50_ms:.2f} ms (SLOs {slo_ms['interactive']:.1f} / "
          f"{slo_ms['background']:.1f} ms), fp32 capacity {capacity:.1f} requests/s", flush=True)  # fmt: skip
    trace = Trace.load(args.trace)
    window = trace.window(trace_start(args, trace, run), args.arrivals)
    segments = []
    # Each segment inherits the server's state from the one before (a queue standing, the
    # ratio histogram); the order alternates between runs so that no policy always follows
    # the same neighbour.
    order = policies if run % 2 else tuple(reversed(policies))
    for step, scale in enumerate(args.scales):
        times = window.at_rate(scale * capacity)
        requests = build_requests(bench.inputs, times, window.context_tokens, slo_ms, seed=1000 * run + step)
        for policy in order:
            outcomes, slip_ms, core = await bench.run_policy(policy, requests)
            segment = Segment(name, run, scale, policy, float(times[-1]), outcomes, slip_ms, capacity, slo_ms, core)
            segments.append(segment)
            print(segment.summary(), flush=True)
            await asyncio.sleep(args.pause_seconds)
    return segments


async def burst_workload(bench: Bench, policies: tuple[str, ...], args: argparse.Namespace, run: int) -> list[Segment]:
    """Poisson arrivals at 0.3×, 3×, 0.3× fp32's capacity (20, 10, 20 s): same draw per policy."""
    p50_ms = await bench.fp32_p50_ms()
    slo_ms = {"interactive": INTERACTIVE_X * p50_ms, "background": BACKGROUND_X * p50_ms}
    capacity = await bench.capacity_rps("fp32", args.capacity_seconds)
    rng = np.random.default_rng(5000 + run)
    times, now = [], 0.0
    for seconds, scale in args.burst:
        end = now + seconds
        while True:
            now += rng.exponential(1.0 / (scale * capacity))
            if now >= end:
                now = end
                break
            times.append(now)
    arrivals = np.array(times)
    tokens = np.full(len(arrivals), MAX_TOKENS)
    requests = build_requests(bench.inputs, arrivals, tokens, slo_ms, seed=6000 + run)
    segments = []
    for policy in policies if run % 2 else tuple(reversed(policies)):
        outcomes, slip_ms, core = await bench.run_policy(policy, requests)
        segment = Segment("burst", run, 0.0, policy, now, outcomes, slip_ms, capacity, slo_ms, core)
        segments.append(segment)
        print(segment.summary(), flush=True)
        await asyncio.sleep(args.pause_seconds)
    return segments


@contextmanager
def servers(
    repository: Path, model: str, names: tuple[str, ...], out: Path
) -> Iterator[tuple[dict[str, str], list[int]]]:
    """One server per router configuration, all pinned to the first core; their addresses
    and process ids."""
    with ExitStack() as stack:
        repo = stack.enter_context(one_model_repository(repository, model))
        addresses, pids = {}, []
        for name in names:
            log = out / f"bench_router_{model}_{name}_server.log"
            flags, env = server_options(name)
            server = stack.enter_context(server_process(repo, "--hardware-profile", "edge", *flags, log=log, env=env))
            addresses[name] = server.address
            pids.append(server.process.pid)
        yield addresses, pids


def _watch(cores: list[int], pids: list[int]) -> CoreWatch | None:
    """What else runs on the servers' core; None with one core, which the generator shares."""
    return CoreWatch(cores[0], pids) if len(cores) >= 2 else None


async def _with_stubs(
    addresses: dict[str, str],
    body: Callable[[Bench], Awaitable[list[Segment]]],
    inputs: Inputs,
    watch: CoreWatch | None,
) -> list[Segment]:
    security = ClientSecurity.from_environment()
    async with AsyncExitStack() as stack:
        stubs = {}
        for name, address in addresses.items():
            channel = await stack.enter_async_context(security.aio_channel(address))
            stubs[name] = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for name in stubs:  # warm-up: every server's sessions and its router's corrections
            await Bench({"router": stubs[name]}, inputs).capacity_rps("", 2.0)
        return await body(Bench(stubs, inputs, watch))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=Path("docs/bench"), help="where the tables, CSV and PNG go")
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--trace-start", type=int, default=2000, help="first arrival of the trace window")
    parser.add_argument("--arrivals", type=int, default=600, help="arrivals per segment")
    parser.add_argument("--digits-arrivals", type=int, default=10000, help="arrivals per digits segment")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    parser.add_argument("--workloads", nargs="+", default=["minilm", "digits", "burst"])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--windows", type=int, default=50, help="with --window-indices: windows spread over the trace")
    parser.add_argument("--window-indices", type=int, nargs="+",
                        help="run k replays the k-th of these windows (of --windows); sets --runs")  # fmt: skip
    parser.add_argument("--policies", nargs="+", default=[*PINNED, *ROUTERS],
                        help=f"pinned variants and routers: {', '.join(ROUTERS)}, {COMPUTE_PREFIX}N")  # fmt: skip
    parser.add_argument("--pause-seconds", type=float, default=2.0)
    parser.add_argument("--capacity-seconds", type=float, default=6.0)
    args = parser.parse_args()
    args.burst = [(20.0, 0.3), (10.0, 3.0), (20.0, 0.3)]
    if args.window_indices:
        args.runs = len(args.window_indices)
        if not all(0 <= i < args.windows for i in args.window_indices):
            parser.error(f"--window-indices must be in 0..{args.windows - 1}")
    if {"minilm", "burst"} & set(args.workloads):
        known = set(load_model(args.repository / "minilm").variants)
        unknown = [p for p in args.policies if not is_router(p) and p not in known]
        if unknown:
            parser.error(f"minilm has no variant {', '.join(unknown)}; it has {', '.join(sorted(known))}")
    args.out.mkdir(parents=True, exist_ok=True)
    decision = decision_cost_us(args.repository)
    print(f"CPU: {cpu_description()}; {ATTRIBUTION}")
    print(f"routing decision: {decision.text()}")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print("warning: one core; servers and load generator share it", file=sys.stderr)
    segments: list[Segment] = []
    # One server per router asked (the plain router always: the workloads calibrate on it).
    router_names = tuple(dict.fromkeys(["router", *(p for p in args.policies if is_router(p))]))
    minilm_workloads = [w for w in args.workloads if w in ("minilm", "burst")]
    if minilm_workloads:
        inputs = MinilmInputs(args.repository)
        with servers(args.repository, "minilm", router_names, args.out) as (addresses, pids):
            if len(cores) >= 2:
                pin_every_thread(set(cores[1:]))  # the servers pinned themselves to cores[0]

            async def minilm(bench: Bench) -> list[Segment]:
                done: list[Segment] = []
                for run in range(1, args.runs + 1):
                    if "minilm" in minilm_workloads:
                        done += await trace_workload(bench, "minilm", tuple(args.policies), args, run)
                    if "burst" in minilm_workloads:
                        burst = tuple(p for p in args.policies if not is_router(p) or p == "router")
                        done += await burst_workload(bench, burst, args, run)
                return done

            segments += asyncio.run(_with_stubs(addresses, minilm, inputs, _watch(cores, pids)))
            pin_every_thread(set(cores))
    if "digits" in args.workloads:
        digits_args = argparse.Namespace(**{**vars(args), "arrivals": args.digits_arrivals})
        digits_variants = set(load_model(args.repository / "digits").variants)
        # digits serves the variants it has of those asked for minilm, and every router asked
        digits_policies = tuple(p for p in args.policies if is_router(p) or p in digits_variants)
        left_out = [p for p in args.policies if p not in digits_policies]
        if left_out:
            print(f"digits: not run: {', '.join(left_out)} (variants digits does not serve)", flush=True)
        with servers(args.repository, "digits", router_names, args.out) as (addresses, pids):
            if len(cores) >= 2:
                pin_every_thread(set(cores[1:]))

            async def digits(bench: Bench) -> list[Segment]:
                done: list[Segment] = []
                for run in range(1, args.runs + 1):
                    done += await trace_workload(bench, "digits", digits_policies, digits_args, run)
                return done

            segments += asyncio.run(_with_stubs(addresses, digits, DigitsInputs(), _watch(cores, pids)))
            pin_every_thread(set(cores))
    header = [
        f"Machine: {cpu_description()}, {len(cores)} cores; servers pinned to core {cores[0]} (edge profile, one ONNX "
        f"Runtime thread), load generator on the others. Routing decision: {decision.text()}.",
        ATTRIBUTION,
    ]
    print(write_reports(segments, args.out, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
