"""`slimserve plan`: capacity planning on the calibrated simulator — which load each policy
sustains, and how many cores a traffic needs at a quality — without a server or a GPU.

It answers two questions for one model of a repository, on each hardware profile asked:

1. **Sustainable load per policy.** For the router and each pinned served variant, the
   trace's windows are replayed at loads that are multiples of fp32's simulated capacity
   (`loads_x`), and a policy *meets the target* at a load when its mean effective accuracy
   and mean SLO attainment over the windows are both at least the targets. Its sustainable
   load is where it stops meeting them: the crossing of the targets interpolated linearly
   between the last grid load at which it met them (and at every lower one) and the next.
   Taking the first failure, not the last success, makes the answer monotone: a higher
   target can only fail earlier.
2. **Cores for a rate.** At the traffic's rate, each core count in `cores` runs every
   policy; the answer is the fewest cores at which the router meets the target, with the
   variant shares it served there.

Topologies (what "n cores" means per profile, as `slimserve serve` runs them): `cloud-cpu`
is one machine with n cores and `workers` serving processes (default one per core, as the
server defaults) whose sessions get max(1, n ÷ workers) threads, every thread on any core
(processor sharing over the pool); `edge` is n one-core boxes (the edge profile refuses
more than one worker), each call sent to one at random, each simulated on its own.

Service times come from the repository's profile for the hardware label (also the router's
starting belief) or, with `service_curves`, from a measurement by input length (the profile
is at one length, 32 tokens for text); either is scaled by the calibrated speed, and the
event loop costs the calibrated CPU per call (`calibration`). A minimum quality leaves the
variants below it out, of the router's choices and of the pinned policies. The hindsight
mix of `ceiling` is not run: it costs ~20 replays per window, and on the bench's workload
it was within 0.3 points of the best static variant (docs/bench/router_sim.md).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimserve.repository.format import ModelEntry, load_model
from slimserve.simulate.calibration import Calibration, read_service_curves
from slimserve.simulate.engine import Arrival, Pinned, Policy, Result, Routed, simulate
from slimserve.simulate.plan_inputs import PlanError, SloMix, Traffic
from slimserve.simulate.server import ServerParams, VariantSpec, variants_from_entry, with_physics
from slimserve.simulate.stats import Interval
from slimserve.simulate.trace import Trace
from slimserve.simulate.workload import MAX_TOKENS, PAUSE_S, WARM_UP_S, capacity_rps

HARDWARE_PROFILES = ("cloud-cpu", "edge")
ROUTER = "router"
DEFAULT_LOADS_X = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
DEFAULT_WINDOWS = 10
DEFAULT_ARRIVALS = 300  # per window: ~5 s of traffic at fp32's capacity, ~0.1 s to simulate
PROGRESS_PERIOD_S = 2.0  # wall seconds between progress lines
# Warm-up calls per core before each window: enough for the router's corrections and ratios
# to settle (tens of calls each), where the bench's 2 s at capacity would double the work.
WARM_UP_CALLS_PER_CORE = 100


# -- the model as simulated -------------------------------------------------------------------


@dataclass(frozen=True)
class SimModel:
    """One model on one hardware profile: the variants routed and pinned, and fp32's spec."""

    name: str
    hardware: str
    default_slo_ms: float
    reference: VariantSpec  # fp32 (the reference variant): loads are multiples of its capacity
    specs: tuple[VariantSpec, ...]  # the variants at or above the minimum quality
    notes: tuple[str, ...] = ()


def _profile_labels(entry: ModelEntry) -> list[str]:
    seen = {(p.label, p.hardware.threads) for v in entry.variants.values() for p in v.manifest.profiles.values()}
    return [f"{label} ({threads} thread{'s' * (threads != 1)})" for label, threads in sorted(seen)]


def load_sim_model(
    repository: Path,
    model: str,
    hardware: str,
    min_quality: float = 0.0,
    service_curves: Path | None = None,
    variants: Sequence[str] | None = None,
) -> SimModel:
    """The variants of `model` with their `hardware` profile as the router's belief and, as
    physics, that profile or the `service_curves` measurement; PlanError names what is missing."""
    path = repository / model
    if not (path / "model.yaml").is_file():
        known = (
            sorted(p.name for p in repository.iterdir() if (p / "model.yaml").is_file()) if repository.is_dir() else []
        )
        raise PlanError(f"no model '{model}' in {repository} (it has: {', '.join(known) or 'no models'})")
    entry = load_model(path)
    served = list(variants) if variants else list(entry.variants)
    unknown = [v for v in served if v not in entry.variants]
    if unknown:
        raise PlanError(f"{model} serves no variant {', '.join(unknown)} (it serves {', '.join(entry.variants)})")
    lacking = [v for v in served if not any(p.label == hardware for p in entry.variants[v].manifest.profiles.values())]
    if lacking:
        raise PlanError(
            f"{model}/{lacking[0]} has no '{hardware}' latency profile (the repository has: "
            f"{', '.join(_profile_labels(entry)) or 'none'}). Add one by running, on the machine to plan for: "
            f"slimserve profile {repository} --hardware-profile {hardware}"
        )
    reference = entry.config.reference_variant
    specs = variants_from_entry(entry, hardware, list(dict.fromkeys([reference, *served])))
    notes = []
    if service_curves is not None:
        curves = read_service_curves(service_curves)
        missing = [s.name for s in specs if s.name not in curves]
        if missing:
            raise PlanError(f"{service_curves}: no service times for {', '.join(missing)}")
        specs = with_physics(specs, {s.name: curves[s.name] for s in specs})
        notes.append(f"service times from {service_curves} (by input length); the router's belief: the profile")
    else:
        threads = {
            p.hardware.threads for p in entry.variants[reference].manifest.profiles.values() if p.label == hardware
        }
        notes.append(
            f"service times: the {hardware} profile ({'/'.join(map(str, sorted(threads)))} session thread(s), "
            "at its own input length)"
        )
    by_name = {s.name: s for s in specs}
    kept = tuple(by_name[v] for v in served if by_name[v].quality >= min_quality)
    if not kept:
        raise PlanError(f"no variant of {model} reaches --min-quality {min_quality:g}")
    left_out = [v for v in served if by_name[v].quality < min_quality]
    if left_out:
        notes.append(f"below the minimum quality {min_quality:g}, left out: {', '.join(left_out)}")
    return SimModel(model, hardware, entry.config.default_slo_ms, by_name[reference], kept, tuple(notes))


# -- setups and one replay ----------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """A hardware profile at a core count (module docstring: topologies)."""

    hardware: str
    cores: int
    workers: int  # cloud-cpu: serving processes; edge: boxes (one per core)

    def params(self, calibration: Calibration) -> ServerParams:
        """One simulated server: the whole machine (cloud-cpu) or one edge box."""
        if self.hardware == "edge":
            return calibration.params()
        return calibration.params(self.cores, self.workers, max(1, self.cores // self.workers))

    @property
    def servers(self) -> int:
        return self.cores if self.hardware == "edge" else 1

    def capacity_rps(self, reference: VariantSpec, calibration: Calibration, tokens: int) -> float:
        """fp32's capacity on this setup: every server's, full batches, every core busy."""
        return self.servers * capacity_rps(reference, self.params(calibration), tokens)


def arrivals_for(
    window: Trace, rate_rps: float, slo: SloMix, seed: int, warm_rate_rps: float, warm_calls: int
) -> list[Arrival]:
    """Warm-up calls (Poisson at `warm_rate_rps`, at most `warm_calls` and WARM_UP_S, not
    measured: the router starts the window having learned, as a server that has been
    running), a pause, then the window at `rate_rps`; SLOs drawn from the mix, the same for
    every policy (seeded)."""
    rng = np.random.default_rng(seed)
    tokens = np.clip(window.context_tokens, 1, MAX_TOKENS).astype(int)
    warm_s = min(WARM_UP_S, warm_calls / warm_rate_rps)
    warm_times = np.cumsum(rng.exponential(1.0 / warm_rate_rps, size=max(warm_calls * 2, 1)))
    warm_times = warm_times[warm_times < warm_s]
    warm_slos, warm_tokens = slo.draw(len(warm_times), rng), rng.choice(tokens, size=len(warm_times))
    times = window.at_rate(rate_rps) + warm_s + PAUSE_S
    slos = slo.draw(len(times), rng)
    warm = zip(warm_times, warm_slos, warm_tokens, strict=True)
    return [
        *(Arrival(float(t), float(s), int(n), measured=False) for t, s, n in warm),
        *(Arrival(float(t), float(s), int(n)) for t, s, n in zip(times, slos, tokens, strict=True)),
    ]


@dataclass(frozen=True)
class Outcome:
    """One policy on one window: effective accuracy, SLO attainment, answers by variant."""

    effective_accuracy: float
    slo_attainment: float
    answered: Counter[str]


def replay(model: SimModel, setup: Setup, calibration: Calibration, policy: Policy, calls: list[Arrival],
           seed: int) -> Outcome:  # fmt: skip
    """`calls` on `setup`; on edge, each call goes to one of the boxes at random (seeded),
    and each box is simulated alone: pinned to its core, it cannot borrow a neighbour's."""
    params = setup.params(calibration)
    if setup.servers == 1:
        parts = [calls]
    else:
        picks = np.random.default_rng(seed + 1).integers(setup.servers, size=len(calls))
        parts = [[c for c, p in zip(calls, picks, strict=True) if p == box] for box in range(setup.servers)]
    results: list[Result] = [
        simulate(model.specs, params, policy, part, model.default_slo_ms, seed=seed + box)
        for box, part in enumerate(parts)
        if part
    ]
    count = sum(len(r.slo_ms) for r in results)
    if count == 0:
        return Outcome(0.0, 0.0, Counter())
    answered = Counter(v for r in results for v, o in zip(r.variants, r.outcomes, strict=True) if o == "OK")
    return Outcome(
        sum(float((r.quality * r.in_time).sum()) for r in results) / count,
        sum(int(r.in_time.sum()) for r in results) / count,
        answered,
    )


# -- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRequest:
    """Everything `slimserve plan` was asked (the CLI's flags, parsed)."""

    repository: Path
    model: str
    hardware: tuple[str, ...]
    traffic: Traffic
    slo: SloMix | None  # None: every call with the model's default_slo_ms
    target_accuracy: float
    target_slo: float
    cores: tuple[int, ...]
    workers: int | None = None  # cloud-cpu serving processes; None: one per core
    min_quality: float = 0.0
    loads_x: tuple[float, ...] = DEFAULT_LOADS_X
    windows: int = DEFAULT_WINDOWS
    arrivals: int = DEFAULT_ARRIVALS
    max_seconds: float | None = None
    calibration: Calibration = field(default_factory=Calibration)
    service_curves: Path | None = None
    variants: tuple[str, ...] | None = None
    seed: int = 0


@dataclass(frozen=True)
class Cell:
    """One policy at one rate on one setup, over the windows; `load_x` in fp32's capacity there."""

    hardware: str
    cores: int
    policy: str
    rate_rps: float
    load_x: float
    kind: str  # "sweep" (question 1) or "rate" (question 2)
    effective_accuracy: Interval
    slo_attainment: Interval
    shares: dict[str, float]

    def meets(self, target_accuracy: float, target_slo: float) -> bool:
        return self.effective_accuracy.mean >= target_accuracy and self.slo_attainment.mean >= target_slo


@dataclass(frozen=True)
class Sustained:
    """Where a policy stops meeting the target on a setup (module docstring, question 1).
    `bound`: "crossing" (interpolated between two grid loads), "below" (it fails at the lowest
    load: rate 0), "at least" (it met the target at every load run: the highest is a lower bound)."""

    hardware: str
    cores: int
    policy: str
    rate_rps: float
    load_x: float
    bound: str


@dataclass
class PlanResult:
    """What `slimserve plan` found; `complete` is False when the time budget cut it short."""

    request: PlanRequest
    models: dict[str, SimModel]
    capacity_rps: dict[tuple[str, int], float]  # fp32's, by (hardware, cores)
    cells: list[Cell]
    complete: bool
    elapsed_s: float
    simulations: int

    def sweep(self, hardware: str, cores: int, policy: str) -> list[Cell]:
        found = [c for c in self.cells if (c.kind, c.hardware, c.cores, c.policy) == ("sweep", hardware, cores, policy)]
        return sorted(found, key=lambda c: c.load_x)

    def at_rate(self, hardware: str, cores: int, policy: str) -> Cell | None:
        return next((c for c in self.cells if (c.kind, c.hardware, c.cores, c.policy) == ("rate", hardware, cores,
                                                                                           policy)), None)  # fmt: skip

    def policies(self, hardware: str) -> list[str]:
        return [ROUTER, *(s.name for s in self.models[hardware].specs)]

    def sustained(self, hardware: str, cores: int, policy: str) -> Sustained | None:
        return sustained_load(self.sweep(hardware, cores, policy), self.request.target_accuracy,
                              self.request.target_slo, self.capacity_rps[(hardware, cores)])  # fmt: skip

    def fewest_cores(self, hardware: str, policy: str) -> int | None:
        """The fewest cores at which `policy` meets the target at the traffic's rate."""
        for cores in sorted(self.request.cores):
            cell = self.at_rate(hardware, cores, policy)
            if cell is not None and cell.meets(self.request.target_accuracy, self.request.target_slo):
                return cores
        return None


def sustained_load(cells: list[Cell], target_accuracy: float, target_slo: float,
                   capacity: float) -> Sustained | None:  # fmt: skip
    """The crossing of the targets after the last load met with every lower one (docstring)."""
    if not cells:
        return None
    first = cells[0]

    def made(rate: float, bound: str) -> Sustained:
        return Sustained(first.hardware, first.cores, first.policy, rate, rate / capacity, bound)

    passed: Cell | None = None
    for cell in cells:
        if cell.meets(target_accuracy, target_slo):
            passed = cell
            continue
        if passed is None:
            return made(0.0, "below")
        crossing = cell.rate_rps
        for value, was, target in (
            (cell.effective_accuracy.mean, passed.effective_accuracy.mean, target_accuracy),
            (cell.slo_attainment.mean, passed.slo_attainment.mean, target_slo),
        ):
            if value < target:
                share = (was - target) / (was - value) if was > value else 0.0
                crossing = min(crossing, passed.rate_rps + share * (cell.rate_rps - passed.rate_rps))
        return made(crossing, "crossing")
    assert passed is not None
    return made(passed.rate_rps, "at least")


Progress = Callable[[str], None]


class Planner:
    """Runs a PlanRequest: the cores question first (it answers the traffic at hand), then the
    load sweep at the first core count (every load: the plot's curves), then the sweeps at the
    other core counts, where a policy stops at its first failure (nothing above it changes its
    answer). Stops before a replay that would start past `max_seconds`; `clock` is injected."""

    def __init__(self, request: PlanRequest, progress: Progress, clock: Callable[[], float] = time.monotonic) -> None:
        self.request = request
        self.progress = progress
        self.clock = clock
        self.models = {h: load_sim_model(request.repository, request.model, h, request.min_quality,
                                         request.service_curves, request.variants)
                       for h in request.hardware}  # fmt: skip
        trace = request.traffic.trace
        arrivals = min(request.arrivals, len(trace))
        self.windows = [trace.window(start, arrivals) for start in trace.window_starts(arrivals, request.windows)]
        self.tokens = int(np.median(np.clip(trace.context_tokens, 1, MAX_TOKENS)))
        self.setups = {(h, n): Setup(h, n, n if h == "edge" else (request.workers or n))
                       for h in request.hardware for n in request.cores}  # fmt: skip
        self.capacity = {key: s.capacity_rps(self.models[s.hardware].reference, request.calibration, self.tokens)
                         for key, s in self.setups.items()}  # fmt: skip
        # Progress and budget: set again when `run` starts.
        self.started = self.last_report = 0.0
        self.done = self.total = 0

    def _cell(self, setup: Setup, policy: str, rate_rps: float, kind: str) -> Cell | None:
        """Every window at `rate_rps`; None if the time budget ran out first."""
        request, model = self.request, self.models[setup.hardware]
        capacity = self.capacity[(setup.hardware, setup.cores)]
        accuracy, attainment, answered = [], [], Counter[str]()
        for index, window in enumerate(self.windows):
            if request.max_seconds is not None and self.clock() - self.started >= request.max_seconds:
                return None
            seed = 10_000 * request.seed + index  # the same calls for every policy: paired comparisons
            slo = request.slo or SloMix(((model.default_slo_ms, 1.0),))
            calls = arrivals_for(window, rate_rps, slo, seed, capacity, WARM_UP_CALLS_PER_CORE * setup.cores)
            chosen: Policy = Routed() if policy == ROUTER else Pinned(policy)
            outcome = replay(model, setup, request.calibration, chosen, calls, seed)
            accuracy.append(outcome.effective_accuracy)
            attainment.append(outcome.slo_attainment)
            answered.update(outcome.answered)
            self.done += 1
            self._report(f"{setup.hardware}, {setup.cores} core(s), {policy} at {rate_rps:.1f} req/s")
        total = sum(answered.values())
        shares = {v: n / total for v, n in answered.most_common()} if total else {}
        return Cell(setup.hardware, setup.cores, policy, rate_rps, rate_rps / capacity, kind,
                    Interval.of(accuracy), Interval.of(attainment), shares)  # fmt: skip

    def _report(self, what: str) -> None:
        now = self.clock()
        # The first replay always reports (a first estimate at once), then every period.
        if self.done > 1 and now - self.last_report < PROGRESS_PERIOD_S and self.done < self.total:
            return
        self.last_report = now
        elapsed = now - self.started
        left = elapsed / self.done * (self.total - self.done) if self.done else math.nan
        budget = self.request.max_seconds
        if budget is not None:
            left = min(left, max(budget - elapsed, 0.0))
        estimate = f"about {left:.0f} s left" if math.isfinite(left) else "estimating the time left"
        self.progress(f"plan: {self.done}/{self.total} replays ({what}); {elapsed:.0f} s elapsed, {estimate}")

    def run(self) -> PlanResult:
        request = self.request
        self.started = self.last_report = self.clock()
        self.done = 0
        policies = {h: [ROUTER, *(s.name for s in m.specs)] for h, m in self.models.items()}
        per_setup = {h: len(policies[h]) * (1 + len(request.loads_x)) for h in request.hardware}
        self.total = sum(per_setup[h] for h, _ in self.setups) * len(self.windows)
        cells: list[Cell] = []
        complete = True
        cores = sorted(request.cores)
        # 1. the traffic's rate on every setup; 2. every load at the first core count; 3. the rest.
        order: list[tuple[Setup, str, float, str]] = []
        for (hardware, _), setup in sorted(self.setups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            order += [(setup, p, request.traffic.rate_rps, "rate") for p in policies[hardware]]
        for n in cores:
            for hardware in request.hardware:
                setup = self.setups[(hardware, n)]
                order += [(setup, p, x * self.capacity[(hardware, n)], "sweep")
                          for x in sorted(request.loads_x) for p in policies[hardware]]  # fmt: skip
        failed: set[tuple[str, int, str]] = set()
        for setup, policy, rate, kind in order:
            key = (setup.hardware, setup.cores, policy)
            if kind == "sweep" and setup.cores != cores[0] and key in failed:
                self.total -= len(self.windows)  # nothing above a failure changes the answer
                continue
            cell = self._cell(setup, policy, rate, kind)
            if cell is None:
                complete = False
                self.progress(f"plan: time budget of {request.max_seconds:g} s spent; reporting what was run")
                break
            cells.append(cell)
            if kind == "sweep" and not cell.meets(request.target_accuracy, request.target_slo):
                failed.add(key)
        return PlanResult(request, self.models, self.capacity, cells, complete, self.clock() - self.started, self.done)
