"""The router of one model: latency predictions, load, CPU price, throughput SLO, then the policy.

Mechanics live here (clock, queues, rates, online corrections, the CPU account); the
decision itself is `router.policy.choose` and the price `router.price.cpu_price`, both pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from router.cpu import CpuAccount
from router.hints import RequestHints
from router.latency import LatencyModel, QueueView, ServiceCurve, predict_ms
from router.load import Clock, RateMeter
from router.policy import PINNED, SCORE_TIE, Candidate, Decision, Verdict, choose
from router.price import FREE, Budget, Offer, Price, cpu_price
from router.ratios import RatioDistribution

OVERHEAD_WEIGHT = 0.05  # weight of one request in the running per-request overhead
# The throughput guard engages when demand reaches this fraction of the mix's capacity,
# and then asks for variants with demand / PRESSURE of capacity, so that it never runs hot.
PRESSURE = 0.8
SUSTAINED_FRACTION = 0.95
# The CPU price is recomputed at most this often (it takes ~0.1 ms): a burst after a quiet
# spell is priced within a few requests, before it has queued up on the expensive variants.
REPRICE_S = 0.01
# Mean queueing delay the CPU price allows, as a share of the model's default SLO: the
# typical request should not spend a noticeable part of its budget waiting for the CPU.
WAIT_SHARE = 0.1
SIZE_WINDOW_S = 1.0  # arrival rates per request size, for the price, over this window
MAX_RESOLUTION_TIE = 0.01  # with very few samples, the tie band stops widening here
STRETCH_QUANTILE = 0.9  # predicted_ms is the modelled latency stretched to this quantile


def _cpu_cost(curve: ServiceCurve, overhead_ms: float) -> Callable[[float], float]:
    """Machine-ms one request of n rows costs: the overhead plus the profiled session call
    (the profile, not observed times: those include waiting for the core)."""
    return lambda rows: overhead_ms + curve.ms(rows)


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
        self.cpu = CpuAccount()  # and its CPU account, shared by every model's router
        self.side_by_side = side_by_side  # every variant has a worker thread of its own
        self.overhead_ms = 0.0
        self.ratios = RatioDistribution()
        self._clock = clock
        self._arrivals = RateMeter(clock=clock)
        self._completions = RateMeter(clock=clock)
        self._shares = {name: RateMeter(clock=clock) for name in self.variants}
        self._sizes: dict[int, RateMeter] = {}  # requests per second, per request size
        self._compute = RateMeter(clock=clock)  # machine-ms per second of this model's session calls
        self._guard_active = False
        self._price = FREE
        self._priced_at_s = float("-inf")
        self._lower_credit = 0.0  # how the share of requests charged the lower price is dealt out

    def now(self) -> float:
        return self._clock()

    def adopt(self, old: ModelRouter, kept: Iterable[str]) -> None:
        """Carry over what `old` learned, when a model is reloaded: for the variants in
        `kept` (the same graph, served by the same batcher) their online latency correction
        and traffic share; for the model, its per-request overhead, latency ratios, rates
        and price. Variants that are new start from their profile, as at start-up."""
        for name in kept:
            self.variants[name].latency.correction = old.variants[name].latency.correction
            self.variants[name].latency.observed_batches = old.variants[name].latency.observed_batches
            self._shares[name] = old._shares[name]
        self.loop_lag_ms, self.cpu = old.loop_lag_ms, old.cpu
        self.overhead_ms, self.ratios = old.overhead_ms, old.ratios
        self._arrivals, self._completions, self._sizes, self._compute = (
            old._arrivals,
            old._completions,
            old._sizes,
            old._compute,
        )
        self._price, self._priced_at_s = old._price, old._priced_at_s

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
        overhead_per_row = self._overhead_ms_per_row()
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
            cost_ms = _cpu_cost(v.latency.curve, self.cpu.overhead_ms)(rows)
            candidates.append(
                Candidate(
                    variant=name,
                    device=v.device,
                    quality=v.quality,
                    predicted_ms=stretched + outside_ms,
                    capacity_rows_s=v.latency.capacity_rows_s(overhead_per_row),
                    modelled_ms=modelled,
                    p_in_time=p_in_time,
                    cost_per_row_ms=cost_ms / max(rows, 1),
                )
            )
        return candidates

    def _overhead_ms_per_row(self) -> float:
        """The CPU every request costs around its session call (`router.cpu`; 0 until it is
        learned), per row of the typical request."""
        return self.cpu.overhead_ms / self._rows_per_request() if self.cpu.overhead_ms else 0.0

    def _mix_capacity_rows_s(self) -> float:
        """Rows/s the current traffic mix sustains: 1 / Σ share_v / capacity_v."""
        rates = {name: meter.rows_per_second() for name, meter in self._shares.items()}
        total = sum(rates.values())
        per_row = self._overhead_ms_per_row()
        if total <= 0:
            best = max(self.variants.values(), key=lambda v: v.quality)
            return best.latency.capacity_rows_s(per_row)
        capacity = {n: v.latency.capacity_rows_s(per_row) for n, v in self.variants.items()}
        return 1.0 / sum(r / total / capacity[n] for n, r in rates.items() if r > 0)

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

    def tie_band(self) -> float:
        """The policy's tie band: no finer than one recent sample's worth of probability
        (P(within SLO) is estimated from them)."""
        resolution = 1.0 / max(self.ratios.effective_samples(self._clock()), 1.0)
        return max(SCORE_TIE, min(resolution, MAX_RESOLUTION_TIE))

    def price(self) -> Price:
        """What one machine-millisecond per row costs in quality now (`router.price`).

        The budget is the CPU account's target utilization and a mean queueing delay of
        WAIT_SHARE of the default SLO, with what the rest of the process uses (other models,
        background work) taken off; the demand is this model's arrivals per request size,
        each at the overhead plus the profiled service time of a variant.
        """
        now = self._clock()
        if now - self._priced_at_s < REPRICE_S:
            return self._price
        self._priced_at_s = now
        if not self.cpu.sampled:
            self._price = FREE
            return self._price
        overhead = self.cpu.overhead_ms
        own_ms_s = self._compute.rows_per_second() + overhead * self._completions.per_second()
        budget = Budget(
            target_utilization=self.cpu.target,
            rest_ms_per_s=max(self.cpu.utilization * 1e3 - own_ms_s, 0.0),
            max_wait_ms=WAIT_SHARE * self.default_slo_ms,
        )
        offers = [Offer(name, v.quality, _cpu_cost(v.latency.curve, overhead)) for name, v in self.variants.items()]
        rates = {rows: meter.recent_per_second() for rows, meter in self._sizes.items()}
        self._price = cpu_price(offers, rates, budget)
        return self._price

    @property
    def last_price(self) -> float:
        """The price last computed (for metrics: reading it changes nothing)."""
        return self._price.price

    def _request_price(self) -> float:
        """The price for this request: `lower` for Price.lower_share of requests, dealt out evenly."""
        price = self.price()
        self._lower_credit += price.lower_share
        if self._lower_credit >= 1.0:
            self._lower_credit -= 1.0
            return price.lower
        return price.price

    def _choose(self, hints: RequestHints, rows: int, price: float) -> Decision:
        candidates = self.candidates(rows, hints.slo_ms)
        # While CPU has a price, the price tells nearly-equal variants apart: any tie band
        # would undo it, since it is set just past a point where two variants score the same.
        tie = self.tie_band() if price == 0 else 0.0
        return choose(candidates, hints, self.default_slo_ms, self._required_rows_s(), tie, price)

    def _arrive(self, rows: int) -> None:
        self._arrivals.add(rows)
        size = rows if rows <= 8 else 1 << (rows - 1).bit_length()  # a few sizes, not one per row count
        if size not in self._sizes:
            self._sizes[size] = RateMeter(SIZE_WINDOW_S, self._clock)
        self._sizes[size].add()

    def route(self, hints: RequestHints, rows: int) -> Decision:
        """Choose a variant for a request and count it as arrived."""
        self._arrive(rows)
        decision = self._choose(hints, rows, self._request_price())
        self._shares[decision.variant].add(rows)
        return decision

    def pinned(self, variant: str, rows: int) -> Decision:
        """The caller named the variant: no choice, but the prediction is still useful."""
        self._arrive(rows)
        self._shares[variant].add(rows)
        candidate = next(c for c in self.candidates(rows) if c.variant == variant)
        return Decision(variant, PINNED, candidate.predicted_ms, candidate.device, (Verdict(candidate, True, PINNED),))

    def explain(self, hints: RequestHints, rows: int) -> Decision:
        """What `route` would decide now, without counting an arrival."""
        return self._choose(hints, rows, self.price().price)

    def observe_batch(self, variant: str, rows: int, compute_ms: float) -> None:
        latency = self.variants[variant].latency
        latency.observe(rows, compute_ms)
        session_ms = _cpu_cost(latency.curve, 0.0)(rows)  # the CPU it took
        self.cpu.record_compute(session_ms)
        self._compute.add(session_ms)

    def observe_request(
        self, decision: Decision | None, elapsed_ms: float = 0.0, queue_ms: float = 0.0, compute_ms: float = 0.0
    ) -> None:
        """Fold one answered request in (`decision` None: it failed and nothing is learned).

        `elapsed_ms` runs from the call's arrival to its result: what is neither queue nor
        compute is per-request overhead, and elapsed / modelled feeds the ratio distribution.
        """
        self.cpu.record_request()
        if decision is None:
            return
        self._completions.add()
        overhead = elapsed_ms - queue_ms - compute_ms
        if overhead >= 0:
            self.overhead_ms += OVERHEAD_WEIGHT * (overhead - self.overhead_ms)
        self.ratios.observe(decision.chosen.modelled_ms, elapsed_ms, self._clock())

    def observe_timeout(self, decision: Decision, waited_ms: float) -> None:
        """A request that ran out of time (deadline passed, or the caller gave up) after
        `waited_ms`: it would have taken at least that long, so the ratio distribution learns
        it too. Learning from answers alone would make P(in time) optimistic exactly under
        overload, when the slowest requests are the ones that never finish."""
        self.cpu.record_request()
        self.ratios.observe(decision.chosen.modelled_ms, waited_ms, self._clock())

    def throughput(self) -> ThroughputStatus:
        return ThroughputStatus(
            declared_rps=self.throughput_slo_rps,
            arrival_rps=self._arrivals.per_second(),
            completion_rps=self._completions.per_second(),
            mix_capacity_rps=self._mix_capacity_rows_s() / self._rows_per_request(),
            guard_active=self._guard_active,
        )
