"""The router of one model: latency predictions, load, throughput SLO, then the policy.

Mechanics live here (clock, queues, rates, online corrections); the decision itself is
`router.policy.choose`, a pure function.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from router.hints import RequestHints
from router.latency import LatencyModel, QueueView, predict_ms
from router.load import Clock, RateMeter
from router.policy import PINNED, SCORE_TIE, Candidate, Decision, Verdict, choose
from router.ratios import RatioDistribution

OVERHEAD_WEIGHT = 0.05  # weight of one request in the running per-request overhead
# The throughput guard engages when demand reaches this fraction of the mix's capacity,
# and then asks for variants with demand / PRESSURE of capacity, so that it never runs hot.
PRESSURE = 0.8
SUSTAINED_FRACTION = 0.95
# Above LOAD_KNEE of CPU utilization the policy's tie band widens linearly, up to LOAD_TIE
# more at LOAD_FULL: nearly-as-good cheaper variants win, which relieves everyone. LOAD_FULL
# is below 1 because a single-core server is already overloaded (latency past its SLOs)
# at about 0.7–0.8 of measured CPU time: the event loop and the workers hand work to each
# other and leave the core idle in between (measured with bench-router's traffic).
LOAD_KNEE = 0.5
LOAD_FULL = 0.8
LOAD_TIE = 0.005
MAX_RESOLUTION_TIE = 0.01  # with very few samples, the tie band stops widening here
STRETCH_QUANTILE = 0.9  # predicted_ms is the modelled latency stretched to this quantile


@dataclass
class VariantRoute:
    """One variant as the router knows it."""

    name: str
    device: str
    quality: float
    latency: LatencyModel
    queue: QueueView


@dataclass(frozen=True)
class ThroughputStatus:
    """The throughput SLO of a model and whether it is being met right now."""

    declared_rps: float | None
    arrival_rps: float
    completion_rps: float
    mix_capacity_rps: float
    guard_active: bool

    @property
    def sustained(self) -> bool:
        """Served at least the declared rate, or everything that arrived if less came."""
        if self.declared_rps is None:
            return True
        return self.completion_rps >= SUSTAINED_FRACTION * min(self.declared_rps, self.arrival_rps)


class ModelRouter:
    """Chooses a variant per request for one model."""

    def __init__(
        self,
        model: str,
        variants: list[VariantRoute],
        default_slo_ms: float,
        throughput_slo_rps: float | None = None,
        rpc_allowance_ms: float = 0.0,
        side_by_side: bool = True,
        clock: Clock = time.monotonic,
    ) -> None:
        if not variants:
            raise ValueError(f"model '{model}' has no variants to route between")
        self.model = model
        self.variants = {v.name: v for v in variants}
        self.default_slo_ms = default_slo_ms
        self.throughput_slo_rps = throughput_slo_rps
        # Time a call spends outside the server (network, gRPC transport, the client): the
        # server cannot measure it, so it is configured, and added to every prediction.
        self.rpc_allowance_ms = rpc_allowance_ms
        self.loop_lag_ms: Callable[[], float] = lambda: 0.0  # the server plugs its event-loop lag in
        self.machine_load: Callable[[], float] = lambda: 0.0  # and its CPU utilization, 0..1
        self.side_by_side = side_by_side  # every variant has a worker thread of its own
        self.overhead_ms = 0.0
        self.ratios = RatioDistribution()
        self._clock = clock
        self._arrivals = RateMeter(clock=clock)
        self._completions = RateMeter(clock=clock)
        self._shares = {name: RateMeter(clock=clock) for name in self.variants}
        self._guard_active = False

    def now(self) -> float:
        return self._clock()

    def stretch(self) -> float:
        """The 90th percentile of the latency ratio (1 while there is too little data)."""
        snapshot = self.ratios.snapshot(self._clock())
        return snapshot.quantile(STRETCH_QUANTILE) if snapshot else 1.0

    def candidates(self, rows: float, slo_ms: float | None = None) -> list[Candidate]:
        """Every variant with its predicted latency for a request of `rows` rows, now, and
        (given an SLO) the probability that it answers within it."""
        now = self._clock()
        in_flight = {name: v.latency.in_flight_ms(v.queue, now) for name, v in self.variants.items()}
        candidates = []
        snapshot = self.ratios.snapshot(now)
        # The loop is late once before the handler runs and once after it returns.
        outside_ms = self.rpc_allowance_ms + 2.0 * self.loop_lag_ms()
        for name, v in self.variants.items():
            others = [left for other, left in in_flight.items() if other != name and left > 0]
            arriving = self._shares[name].rows_per_second()
            modelled = predict_ms(v.latency, v.queue, rows, others, self.overhead_ms, now, self.side_by_side, arriving)
            if slo_ms is None:
                p_in_time = 1.0
            elif snapshot is None:  # not enough data yet: trust the model as it is
                p_in_time = 1.0 if modelled + outside_ms <= slo_ms else 0.0
            else:
                p_in_time = snapshot.probability_within(modelled, slo_ms - outside_ms)
            stretched = snapshot.stretched(modelled, STRETCH_QUANTILE) if snapshot else modelled
            candidates.append(
                Candidate(
                    variant=name,
                    device=v.device,
                    quality=v.quality,
                    predicted_ms=stretched + outside_ms,
                    capacity_rows_s=v.latency.capacity_rows_s(),
                    modelled_ms=modelled,
                    p_in_time=p_in_time,
                )
            )
        return candidates

    def _mix_capacity_rows_s(self) -> float:
        """Rows/s the current traffic mix sustains: 1 / Σ share_v / capacity_v."""
        rates = {name: meter.rows_per_second() for name, meter in self._shares.items()}
        total = sum(rates.values())
        if total <= 0:
            best = max(self.variants.values(), key=lambda v: v.quality)
            return best.latency.capacity_rows_s()
        return 1.0 / sum(r / total / self.variants[n].latency.capacity_rows_s() for n, r in rates.items() if r > 0)

    def _required_rows_s(self) -> float | None:
        """Capacity loose requests should go to, when the throughput SLO is at risk.

        At risk: the measured arrival rate has reached PRESSURE of what the current mix of
        variants can serve. Then loose requests go to variants that could carry the larger
        of the declared rate and the arrivals, with headroom.
        """
        if self.throughput_slo_rps is None:
            return None
        arriving = self._arrivals.rows_per_second()
        self._guard_active = arriving >= PRESSURE * self._mix_capacity_rows_s()
        if not self._guard_active:
            return None
        return max(self.throughput_slo_rps * self._rows_per_request(), arriving) / PRESSURE

    def _rows_per_request(self) -> float:
        """Mean rows per arriving request (1 while nothing has arrived)."""
        requests = self._arrivals.per_second()
        return self._arrivals.rows_per_second() / requests if requests > 0 else 1.0

    def tie_band(self) -> tuple[float, bool]:
        """The policy's tie band, and whether ties go to capacity, for the current state.

        No finer than one recent sample's worth of probability (P is estimated from them),
        wider as CPU utilization passes LOAD_KNEE; ties go to capacity past the knee.
        """
        pressure = min(max((self.machine_load() - LOAD_KNEE) / (LOAD_FULL - LOAD_KNEE), 0.0), 1.0)
        resolution = 1.0 / max(self.ratios.effective_samples(self._clock()), 1.0)
        return max(SCORE_TIE, min(resolution, MAX_RESOLUTION_TIE)) + LOAD_TIE * pressure, pressure > 0

    def _choose(self, hints: RequestHints, rows: int) -> Decision:
        candidates = self.candidates(rows, hints.slo_ms)
        tie, prefer_capacity = self.tie_band()
        return choose(candidates, hints, self.default_slo_ms, self._required_rows_s(), tie, prefer_capacity)

    def route(self, hints: RequestHints, rows: int) -> Decision:
        """Choose a variant for a request and count it as arrived."""
        self._arrivals.add(rows)
        decision = self._choose(hints, rows)
        self._shares[decision.variant].add(rows)
        return decision

    def pinned(self, variant: str, rows: int) -> Decision:
        """The caller named the variant: no choice, but the prediction is still useful."""
        self._arrivals.add(rows)
        self._shares[variant].add(rows)
        candidate = next(c for c in self.candidates(rows) if c.variant == variant)
        return Decision(variant, PINNED, candidate.predicted_ms, candidate.device, (Verdict(candidate, True, PINNED),))

    def explain(self, hints: RequestHints, rows: int) -> Decision:
        """What `route` would decide now, without counting an arrival."""
        return self._choose(hints, rows)

    def observe_batch(self, variant: str, rows: int, compute_ms: float) -> None:
        self.variants[variant].latency.observe(rows, compute_ms)

    def observe_request(
        self, decision: Decision | None, elapsed_ms: float = 0.0, queue_ms: float = 0.0, compute_ms: float = 0.0
    ) -> None:
        """Fold one finished request in; `decision` None means it failed.

        `elapsed_ms` runs from the call's arrival to its result: what is neither queue nor
        compute is per-request overhead, and elapsed / modelled feeds the ratio distribution.
        """
        if decision is None:
            return
        self._completions.add()
        overhead = elapsed_ms - queue_ms - compute_ms
        if overhead >= 0:
            self.overhead_ms += OVERHEAD_WEIGHT * (overhead - self.overhead_ms)
        self.ratios.observe(decision.chosen.modelled_ms, elapsed_ms, self._clock())

    def throughput(self) -> ThroughputStatus:
        return ThroughputStatus(
            declared_rps=self.throughput_slo_rps,
            arrival_rps=self._arrivals.per_second(),
            completion_rps=self._completions.per_second(),
            mix_capacity_rps=self._mix_capacity_rows_s() / self._rows_per_request(),
            guard_active=self._guard_active,
        )
