"""The router of one model: what it learns and measures, the snapshot it takes, and `route`.

Mechanics live here (clock, queues, rates, the online correction, the latency ratios, the
CPU account and price, the throughput guard). Each decision is `router.policy.decide` over
an immutable `RouterSnapshot`; the snapshot is taken again when it is older than
`snapshot_max_age_s`, when any queue has changed since or when the router has learned
something (a batch or a request finished), so that a burst never routes on a picture that
its own first requests have already made stale.

Thread: owned by the event loop; other threads read what the app publishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from slimserve.router.config import RouterConfig
from slimserve.router.cpu import CpuAccount
from slimserve.router.hints import RequestHints
from slimserve.router.latency import CorrectionPool, LatencyModel, LevelledQueueView, QueueView
from slimserve.router.load import Clock, RateMeter
from slimserve.router.policy import Decision, decide, pinned
from slimserve.router.price import Budget, Offer, Price, cpu_price
from slimserve.router.ratios import RatioDistribution
from slimserve.router.snapshot import RouterSnapshot, VariantView

GOLDEN_RATIO_FRACTION = (5**0.5 - 1) / 2  # the step of the low-discrepancy sequence that splits a price

QueueMark = tuple[int, int, float | None]  # a queue's rows queued, rows running and when they started


def _cost(view: VariantView, overhead_ms: float) -> Callable[[int], float]:
    """Machine-ms one request of n rows costs: the overhead plus the session call's CPU
    (`VariantView.cost_ms`, what each candidate is charged)."""
    return lambda rows: overhead_ms + view.cost_ms(rows)


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
    sustained_fraction: float = RouterConfig.throughput_sustained_fraction

    @property
    def sustained(self) -> bool:
        """Served at least the declared rate, or everything that arrived if less came."""
        if self.declared_rps is None:
            return True
        return self.completion_rps >= self.sustained_fraction * min(self.declared_rps, self.arrival_rps)


class ModelRouter:
    """Chooses a variant per request for one model."""

    def __init__(
        self,
        model: str,
        variants: list[VariantRoute],
        default_slo_ms: float,
        throughput_slo_rps: float | None = None,
        config: RouterConfig | None = None,
        side_by_side: bool = True,
        clock: Clock = time.monotonic,
        cpu: CpuAccount | None = None,
        loop_lag_ms: Callable[[], float] | None = None,
    ) -> None:
        if not variants:
            raise ValueError(f"model '{model}' has no variants to route between")
        self.model = model
        self.config = config = config or RouterConfig()
        self.variants = {v.name: v for v in variants}
        # What every variant's batches teach of the profile's error, for those yet to run.
        self._pool = CorrectionPool(config.correction_weight) if config.pooled_correction_on else None
        for v in variants:
            v.latency.pool = self._pool
        # The queues that serve by priority level, found once: each snapshot reads their levels.
        self._levelled = {v.name: v.queue for v in variants if isinstance(v.queue, LevelledQueueView)}
        self._queues = [v.queue for v in variants]  # in the order of `variants`: each snapshot marks them
        self.default_slo_ms = default_slo_ms
        # The SLO the traffic carries: a running harmonic mean over requests (`traffic_slo_ms`).
        self._inverse_slo_per_ms = 1.0 / default_slo_ms
        self._traffic_slo_bounds_ms = (
            default_slo_ms / config.traffic_slo_range,
            default_slo_ms * config.traffic_slo_range,
        )
        self.throughput_slo_rps = throughput_slo_rps
        # The server's event-loop lag and its CPU account, shared by every model; alone, its own.
        self.loop_lag_ms: Callable[[], float] = loop_lag_ms or (lambda: 0.0)
        self.cpu = cpu or CpuAccount(config.cpu_target_utilization)
        self.side_by_side = side_by_side  # the model has a turn for every variant (server.core.turns)
        self.overhead_ms = 0.0
        self.ratios = RatioDistribution(config.ratio_half_life_s, config.ratio_min_samples)
        self._clock = clock
        window = config.rate_window_s
        self._arrivals = RateMeter(window, clock)
        self._completions = RateMeter(window, clock)
        self._shares = {name: RateMeter(window, clock) for name in self.variants}
        self._sizes: dict[int, RateMeter] = {}  # requests per second, per request size
        self._compute = RateMeter(window, clock)  # machine-ms per second of this model's session calls
        self._guard_active = False
        self._price = Price(0.0)
        self._priced_at_s = float("-inf")
        self._split_phase = 0.0  # which calls a split price prices below its breakpoint (_below_breakpoint)
        self._snapshot: RouterSnapshot | None = None
        self._taken: RouterSnapshot | None = None  # the last snapshot taken, even once out of date
        self._queue_marks: tuple[QueueMark, ...] = ()
        self._views: dict[str, tuple[QueueMark, float, VariantView]] = {}  # name → (its mark, taken at, view)

    def now(self) -> float:
        return self._clock()

    def adopt(self, old: ModelRouter, kept: Iterable[str]) -> None:
        """Carry over what `old` learned, when a model is reloaded: for the variants in
        `kept` (the same graph, served by the same batcher) their online latency correction
        and traffic share; for the model, its per-request overhead, latency ratios, rates,
        price and pooled corrections. Variants that are new start from the pool, as a variant
        that has not run yet does."""
        for name in kept:
            self.variants[name].latency.carry(old.variants[name].latency)
            self._shares[name] = old._shares[name]
        if self._pool is not None and old._pool is not None:
            self._pool.carry(old._pool)
        self.overhead_ms, self.ratios = old.overhead_ms, old.ratios
        self._inverse_slo_per_ms = old._inverse_slo_per_ms
        self._arrivals, self._completions, self._sizes, self._compute = (
            old._arrivals,
            old._completions,
            old._sizes,
            old._compute,
        )
        self._price, self._priced_at_s = old._price, old._priced_at_s

    # -- the snapshot -------------------------------------------------------------------

    def snapshot(self) -> RouterSnapshot:
        """What the router knows now: the last snapshot while it is fresh and no queue has
        changed since, else a new one."""
        now = self._clock()
        marks = tuple([(q.queued_rows, q.running_rows, q.running_started_s) for q in self._queues])
        current = self._snapshot
        if (
            current is not None
            and marks == self._queue_marks
            and now - current.taken_s < self.config.snapshot_max_age_s
        ):
            return current
        self._snapshot, self._queue_marks = self._take(now, marks), marks
        self._taken = self._snapshot
        return self._snapshot

    def _take(self, now: float, marks: tuple[QueueMark, ...]) -> RouterSnapshot:
        """A new snapshot. A variant's view is kept from the last one while its queue is as it
        was, no batch of it has taught the router since (`_learned`) and it is younger than
        `snapshot_max_age_s` (the rule a whole snapshot is kept by; what is left of a batch in
        flight runs down with the snapshot's clock, `router.snapshot.WorkAhead`): a call that
        changes one queue rebuilds one view."""
        ratios = self.ratios.snapshot(now) if self.config.ratios_on else None
        oldest_kept_s = now - self.config.snapshot_max_age_s
        kept_views = []
        overhead_ms_per_row: float | None = None  # read once, for the views made again
        for (name, variant), mark in zip(self.variants.items(), marks, strict=True):
            kept = self._views.get(name)
            if kept is None or kept[0] != mark or kept[1] <= oldest_kept_s:
                if overhead_ms_per_row is None:
                    overhead_ms_per_row = self._overhead_ms_per_row()
                kept = self._views[name] = (mark, now, self._view(name, variant, now, overhead_ms_per_row))
            kept_views.append(kept[2])
        views = tuple(kept_views)
        price = self._current_price(now, views)
        lag_ms = self.loop_lag_ms()  # read once: the time outside the handler and the loop's backlog agree
        return RouterSnapshot(
            taken_s=now,
            variants=views,
            default_slo_ms=self.default_slo_ms,
            overhead_ms=self.overhead_ms,
            outside_ms=self._outside_ms(lag_ms),
            cpu_overhead_ms=self.cpu.overhead_ms,
            ratios=ratios,
            price=price.per_ms,
            saturated=price.saturated,
            required_rows_s=self._required_rows_s(),
            side_by_side=self.side_by_side,
            stretch=ratios.quantile(self.config.predicted_quantile) if ratios else 1.0,
            backlog_price_ms2=self._backlog_price_ms2(),
            loop_backlog_ms=lag_ms if self.config.loop_backlog_on else 0.0,
            price_below=price.below_ms,
            share_below=price.share_below if self.config.price_split_on else 0.0,
        )

    def _view(self, name: str, variant: VariantRoute, now: float, overhead_ms_per_row: float) -> VariantView:
        return VariantView(
            name=name,
            device=variant.device,
            quality=variant.quality,
            curve=variant.latency.curve,
            correction=variant.latency.correction,
            max_batch_size=variant.latency.max_batch_size,
            in_flight_ms=variant.latency.in_flight_ms(variant.queue, now),
            queued_rows=variant.queue.queued_rows,
            arriving_rows_s=self._shares[name].rows_per_second(),
            capacity_rows_s=variant.latency.capacity_rows_s(overhead_ms_per_row),
            rows_by_level=self._levelled[name].rows_by_level if name in self._levelled else (),
            running_rows=variant.queue.running_rows,
            cost_correction=variant.latency.cost_correction,
            at_s=now,
            ticking=variant.queue.running_rows > 0 and variant.queue.running_started_s is not None,
        )

    def _learned(self, variant: str | None = None) -> None:
        """Something was learned: the next decision takes a new snapshot. A batch taught its
        variant's latency and cost corrections, so that view is made again; an answer taught the
        model's overhead and ratios, which the snapshot reads itself (the CPU overhead in the
        views' capacities waits for them to age, as a queue left alone does). Under load an
        answer comes with nearly every call, and every view was made again for it."""
        self._snapshot = None
        if variant is not None:
            self._views.pop(variant, None)

    # -- decisions ----------------------------------------------------------------------

    def route(self, hints: RequestHints, rows: int) -> Decision:
        """Choose a variant for a request and count it as arrived; a request with a priority
        level is predicted behind the work of its level and higher only (`RouterSnapshot.at_level`).
        A shed request (`Decision.shed`) counts as arrived but not as sent to its variant:
        its rows will not join that queue."""
        snapshot = self.snapshot()
        seen = snapshot.at_level(hints.priority) if hints.priority else snapshot
        decision = decide(seen, hints, rows, self.config, self._below_breakpoint(snapshot, draw=True))
        self._arrive(rows, hints)
        if not decision.shed:
            self._shares[decision.variant].add(rows)
        return decision

    def pinned(self, variant: str, rows: int, level: int = 0, hints: RequestHints | None = None) -> Decision:
        """The caller named the variant: no choice, but the prediction is still useful, and
        given the request's `hints`, admission decides as for a routed request (`policy.sheds`).

        A pinned call weighs nothing, so its prediction may come from the last snapshot while
        that is younger than `snapshot_max_age_s`, even if queues moved since: rebuilding every
        variant's view for each call was a third of the handler's own CPU under load. Such a
        prediction is a few milliseconds stale, so it does not teach the ratio distribution;
        a pinned call that takes a fresh snapshot does. `level`: its priority level, as in `route`."""
        recent = self._taken
        if recent is not None and self._clock() - recent.taken_s < self.config.snapshot_max_age_s:
            decision = pinned(recent.at_level(level), variant, rows, False, hints, self.config)
        else:
            decision = pinned(self.snapshot().at_level(level), variant, rows, True, hints, self.config)
        self._arrive(rows, hints)
        if not decision.shed:
            self._shares[variant].add(rows)
        return decision

    def explain(self, hints: RequestHints, rows: int, snapshot: RouterSnapshot | None = None) -> Decision:
        """What `route` would decide now (on `snapshot`, by default the current one), without
        counting an arrival or drawing a split price's next call: asked again, it says the same."""
        snapshot = self.snapshot() if snapshot is None else snapshot
        below = self._below_breakpoint(snapshot, draw=False)
        return decide(snapshot.at_level(hints.priority), hints, rows, self.config, below)

    def _arrive(self, rows: int, hints: RequestHints | None) -> None:
        self._arrivals.add(rows)
        if hints is not None:
            # Within `traffic_slo_range` of the model's default either way: one caller's absurd
            # SLO (1 µs, a day) does not set every other caller's price.
            slo_ms = min(max(hints.slo_ms, self._traffic_slo_bounds_ms[0]), self._traffic_slo_bounds_ms[1])
            self._inverse_slo_per_ms += self.config.traffic_slo_weight * (1.0 / slo_ms - self._inverse_slo_per_ms)
        size = rows if rows <= 8 else 1 << (rows - 1).bit_length()  # a few sizes, not one per row count
        if size not in self._sizes:
            self._sizes[size] = RateMeter(self.config.size_window_s, self._clock)
        self._sizes[size].add()

    # -- learning -----------------------------------------------------------------------

    def observe_batch(self, variant: str, rows: int, compute_ms: float, cpu_ms: float | None = None) -> None:
        """One session call of `rows` rows took `compute_ms` and `cpu_ms` of CPU over its
        threads (None: not measured, the profile stands in)."""
        self._learned(variant)
        latency = self.variants[variant].latency
        if self.config.correction_on:
            latency.observe(rows, compute_ms)
        session_ms = latency.curve.ms(rows)  # the CPU it took, by the profile
        measured = self.cpu.machine_ms(cpu_ms) if cpu_ms is not None and self.config.measured_cost_on else None
        if measured is not None:
            latency.observe_cost(rows, measured)
            session_ms = measured
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
        self._learned()
        if decision is None:
            return
        self._completions.add()
        overhead = elapsed_ms - queue_ms - compute_ms
        if overhead >= 0:
            self.overhead_ms += self.config.overhead_weight * (overhead - self.overhead_ms)
        if decision.learns:
            self._observe_ratio(decision, elapsed_ms)

    def observe_timeout(self, decision: Decision, waited_ms: float) -> None:
        """A request that ran out of time (deadline passed, or the caller gave up) after
        `waited_ms`: it would have taken at least that long, so the ratio distribution learns
        it too. Learning from answers alone would make P(in time) optimistic exactly under
        overload, when the slowest requests are the ones that never finish."""
        self.cpu.record_request()
        self._learned()
        if decision.learns:
            self._observe_ratio(decision, waited_ms)

    def _observe_ratio(self, decision: Decision, observed_ms: float) -> None:
        floor_ms = self.overhead_ms + self._outside_ms(self.loop_lag_ms())  # as RouterSnapshot.floor_ms
        self.ratios.observe(decision.chosen.modelled_ms, observed_ms, self._clock(), floor_ms)

    def _outside_ms(self, lag_ms: float) -> float:
        """Time a call spends outside the server's handler: the configured RPC allowance, and
        the event loop's lateness `lag_ms` once before the handler runs and once after it returns."""
        return self.config.rpc_allowance_ms + 2.0 * lag_ms

    # -- the CPU price and the throughput guard -------------------------------------------

    def _current_price(self, now: float, views: tuple[VariantView, ...]) -> Price:
        """What one machine-millisecond per row costs in quality now (`router.price`),
        recomputed at most every `reprice_s`.

        The budget is the CPU account's target utilization and a mean queueing delay of
        `price_wait_share` of the traffic's SLO (`traffic_slo_ms`), with what the rest of the
        process uses (other models, background work) taken off; the demand is this model's
        arrivals per request size, each at the overhead plus the profiled service time of a
        variant.
        """
        if not self.config.price_on or not self.cpu.sampled:
            return Price(0.0)
        if now - self._priced_at_s < self.config.reprice_s:
            return self._price
        self._priced_at_s = now
        overhead = self.cpu.overhead_ms
        own_ms_s = self._compute.rows_per_second() + overhead * self._completions.per_second()
        budget = Budget(
            target_utilization=self.cpu.target,
            rest_ms_per_s=max(self.cpu.utilization * 1e3 - own_ms_s, 0.0),
            max_wait_ms=self.config.price_wait_share * self.traffic_slo_ms,
        )
        offers = [Offer(v.name, v.quality, _cost(v, overhead)) for v in views]
        rates = {rows: meter.recent_per_second() for rows, meter in self._sizes.items()}
        self._price = cpu_price(offers, rates, budget)
        return self._price

    def _below_breakpoint(self, snapshot: RouterSnapshot, draw: bool) -> bool:
        """Whether the next call is priced below a split price's breakpoint: a share
        `share_below` of the calls is (RouterConfig.price_split_on). They are picked by a
        golden-ratio sequence, not at random: every run of calls gets the share as closely as
        it can, and a simulation is the same every time. `route` draws; Explain only looks."""
        if snapshot.share_below <= 0.0:
            return False
        phase = (self._split_phase + GOLDEN_RATIO_FRACTION) % 1.0
        if draw:
            self._split_phase = phase
        return phase < snapshot.share_below

    @property
    def traffic_slo_ms(self) -> float:
        """The SLO of the traffic, a harmonic mean over its requests (the model's default SLO
        before any arrives): the time scale of both prices. The harmonic mean leans to the
        tight SLOs, which a queue spends first; the model's default SLO alone priced digits'
        6-ms calls as if they had 20 ms (docs/routing.md, "The prices on the traffic's SLO")."""
        return 1.0 / self._inverse_slo_per_ms if self.config.traffic_slo_on else self.default_slo_ms

    def _backlog_price_ms2(self) -> float | None:
        """The backlog price's divisor, ms² (router.price.backlog_price): the square of the
        traffic's SLO sets its scale, so that a backlog that is the same share of the SLO is
        the same price per machine-millisecond of that SLO."""
        if not self.config.backlog_price_on:
            return None
        return self.config.backlog_price_slo2 * self.traffic_slo_ms**2

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
        """Capacity loose requests should go to, when the throughput SLO is at risk: the
        arrivals have reached `throughput_pressure` of what the current mix can serve. Then
        loose requests go to variants that could carry the larger of the declared rate and
        the arrivals, with headroom."""
        if self.throughput_slo_rps is None:
            return None
        arriving = self._arrivals.rows_per_second()
        pressure = self.config.throughput_pressure
        self._guard_active = arriving >= pressure * self._mix_capacity_rows_s()
        if not self._guard_active:
            return None
        return max(self.throughput_slo_rps * self._rows_per_request(), arriving) / pressure

    def _rows_per_request(self) -> float:
        """Mean rows per arriving request (1 while nothing has arrived)."""
        requests = self._arrivals.per_second()
        return self._arrivals.rows_per_second() / requests if requests > 0 else 1.0

    def throughput(self) -> ThroughputStatus:
        return ThroughputStatus(
            declared_rps=self.throughput_slo_rps,
            arrival_rps=self._arrivals.per_second(),
            completion_rps=self._completions.per_second(),
            mix_capacity_rps=self._mix_capacity_rows_s() / self._rows_per_request(),
            guard_active=self._guard_active,
            sustained_fraction=self.config.throughput_sustained_fraction,
        )
