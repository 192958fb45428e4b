"""What the router knows at one instant, immutable: every decision, Explain and metric reads one.

The event loop takes a snapshot (`ModelRouter.snapshot`) at most every few milliseconds,
and again as soon as a queue changes; from it, `candidates` gives any request's prediction
for every variant without touching live state. So Explain, asked with the same hints on the
same snapshot, says exactly what `route` does. A request of a priority level with
lower-priority work queued behind it is predicted on `at_level(level)`: the same snapshot,
its own variant's queue counted only down to that level.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import accumulate
from typing import NamedTuple

from slimserve.router.latency import ServiceCurve
from slimserve.router.price import backlog_price
from slimserve.router.ratios import RatioSnapshot


class Candidate(NamedTuple):
    """A variant as the policy sees it: quality, predicted latency, capacity. (A named
    tuple: every decision makes one per variant, and a frozen dataclass costs more to make.)"""

    variant: str
    device: str
    quality: float
    predicted_ms: float  # queue wait + service time for this request, now
    capacity_rows_s: float  # rows per second at the largest batch
    modelled_ms: float = 0.0  # predicted_ms before the learned stretch and the RPC allowance
    p_in_time: float = 1.0  # probability of answering within the request's SLO
    cost_per_row_ms: float = 0.0  # machine-milliseconds of CPU per row of this request

    @property
    def expected_quality(self) -> float:
        return self.quality * self.p_in_time

    def score(self, price: float) -> float:
        """Expected quality less the CPU it takes at `price` (quality per machine-ms per row)."""
        return self.quality * self.p_in_time - price * self.cost_per_row_ms  # expected_quality, inline: hot


@dataclass(slots=True)
class VariantView:
    """One variant at the instant its view was taken (`at_s`); a snapshot may keep it while
    the variant's queue is as it was. Nothing writes to one once made; it is not a frozen
    dataclass because those cost twice as much to make, and a new snapshot makes several."""

    name: str
    device: str
    quality: float
    curve: ServiceCurve  # profiled p50 service time per batch size
    correction: float  # learned observed / profiled service time (1: not learned or switched off)
    max_batch_size: int
    in_flight_ms: float  # what was left of the batch it is computing at `at_s`
    queued_rows: int
    arriving_rows_s: float  # rows per second the router has been sending it
    capacity_rows_s: float  # rows per second it sustains alone, its overhead counted
    rows_by_level: tuple[int, ...] = ()  # queued rows per priority level, level 1's first; (): no levels
    running_rows: int = 0  # rows of the batch in flight (its `in_flight_ms` is 0 once it overruns its time)
    cost_correction: float = 1.0  # learned CPU per call / profiled service time (router.latency)
    at_s: float = 0.0  # when `in_flight_ms` was read
    ticking: bool = False  # its batch has started: what is left of it runs down with the clock
    # Derived once (each decision reads them for every variant): a full batch's service
    # time, the time to drain the queue, and the CPU a one-row call takes in its session.
    full_batch_ms: float = field(init=False)
    queued_ms: float = field(init=False)
    one_row_cost_ms: float = field(init=False)

    def __post_init__(self) -> None:
        self.full_batch_ms = self.service_ms(self.max_batch_size)
        self.queued_ms = self.drain_ms(self.queued_rows)
        self.one_row_cost_ms = self.curve.ms(1) * self.cost_correction

    def cost_ms(self, rows: int) -> float:
        """Machine-ms of CPU a call of `rows` rows takes in its session (the profile times the
        learned cost correction)."""
        return self.one_row_cost_ms if rows == 1 else self.curve.ms(rows) * self.cost_correction

    def service_ms(self, rows: float) -> float:
        return self.curve.ms(rows) * self.correction

    @property
    def busy(self) -> bool:
        """Work ahead of a request sent now: a batch in flight or rows queued (admission)."""
        return self.running_rows > 0 or self.queued_rows > 0

    def rows_ahead(self, level: int) -> int:
        """Queued rows a request of priority `level` waits behind: those of levels 1..level
        (the batcher takes higher levels first); all of them at level 0 or without levels."""
        return sum(self.rows_by_level[:level]) if level and self.rows_by_level else self.queued_rows

    @property
    def lowest_queued_level(self) -> int:
        """The lowest priority (largest level) with rows queued; 0 when none or no levels."""
        return next((i for i in range(len(self.rows_by_level), 0, -1) if self.rows_by_level[i - 1]), 0)

    def drain_ms(self, rows: float) -> float:
        """Time to compute `rows` rows in full batches of max_batch_size, then the rest."""
        if rows <= 0:
            return 0.0
        if rows <= self.max_batch_size:  # one batch: most requests, away from saturation
            return self.service_ms(rows)
        full, rest = divmod(rows, self.max_batch_size)
        return full * self.full_batch_ms + (self.service_ms(rest) if rest > 0 else 0.0)


class WorkAhead:
    """Every variant's work at the instant, summed once per snapshot: each decision asks
    how much of it slows each of the variants (`RouterSnapshot.candidates`)."""

    def __init__(self, variants: tuple[VariantView, ...], now_s: float) -> None:
        self.left_ms: dict[str, float] = {}  # name → what is left at `now_s` of its batch in flight
        self.backlogs_ms: dict[str, float] = {}  # name → that and its queue
        for v in variants:
            # A view is kept for later snapshots while its queue stays as it was
            # (`ModelRouter.snapshot`): a batch that has started runs down meanwhile.
            left = max(v.in_flight_ms - (now_s - v.at_s) * 1e3, 0.0) if v.ticking else v.in_flight_ms
            self.left_ms[v.name], self.backlogs_ms[v.name] = left, left + v.queued_ms
        self.in_flight_ms = sum(self.left_ms.values())
        self._sorted_ms = sorted(self.backlogs_ms.values())
        self._below_ms = list(accumulate(self._sorted_ms, initial=0.0))  # sums of the i smallest
        self.backlog_ms = self._below_ms[-1]

    def shared_ms(self, own_ms: float) -> float:
        """Σ min(backlog, own_ms) over every variant: what they take from own_ms of work
        that runs beside them (processor sharing)."""
        smaller = bisect.bisect_left(self._sorted_ms, own_ms)
        return self._below_ms[smaller] + own_ms * (len(self._sorted_ms) - smaller)


@dataclass(eq=False)
class RouterSnapshot:
    """One model's router state at `taken_s`, for decisions, Explain and metrics. Nothing
    writes to one once made (`at_level` makes another); like `VariantView` it is not a frozen
    dataclass, which costs more to make, and one is made for nearly every call under load."""

    taken_s: float
    variants: tuple[VariantView, ...]
    default_slo_ms: float
    overhead_ms: float  # learned per-request time in the server outside queue and compute
    outside_ms: float  # time outside the server: the RPC allowance and the event loop's lag
    cpu_overhead_ms: float  # learned machine-ms a request costs around its session call
    ratios: RatioSnapshot | None  # spread of observed / modelled latency; None: too little data
    # Quality per machine-millisecond per row: the rates' price (0 while the traffic fits)
    # or, where it is higher, the backlog's (`backlog_price_ms2`, router.price).
    price: float
    saturated: bool  # the traffic fits at no price: the machine is past what it serves in time
    required_rows_s: float | None  # the throughput guard's demand on loose requests; None: off
    side_by_side: bool  # the model has a turn for every variant: their batches run at once
    stretch: float = 1.0  # the ratio distribution's quantile reported as `predicted_ms` (1: no data)
    level: int = 0  # the priority level predictions are for (`at_level`); 0: behind the whole queue
    backlog_price_ms2: float | None = None  # the backlog price's divisor (router.price); None: off
    loop_backlog_ms: float = 0.0  # work ahead in the event loop (its lag), priced with the backlog
    # A split price (router.price.Price.share_below): a share `share_below` of the calls is
    # priced at `price_below`, just below the breakpoint, and keeps the better variant there;
    # the router draws which calls (`ModelRouter.route`). Each is the higher of it and the backlog's.
    price_below: float = 0.0
    share_below: float = 0.0
    # Latency that does not scale with the work: a request that took 3 ms instead of 0.3 is
    # not "10× slower" but met the fixed costs every request meets (router.ratios).
    floor_ms: float = field(init=False)
    _work: WorkAhead = field(init=False, repr=False)  # every decision reads both, so they are made at once

    def __post_init__(self) -> None:
        self.floor_ms = self.overhead_ms + self.outside_ms
        self._work = WorkAhead(self.variants, self.taken_s)
        if self.backlog_price_ms2 is not None:  # idempotent: `at_level` makes a snapshot from this one
            queued = backlog_price(self._work.backlog_ms + self.loop_backlog_ms, self.backlog_price_ms2)
            self.price, self.price_below = max(self.price, queued), max(self.price_below, queued)

    def price_of_a_call(self, below_breakpoint: bool) -> float:
        """The price a call routes at: `price_below` for the share of calls the router draws
        below a split price's breakpoint, `price` for the rest."""
        return self.price_below if below_breakpoint else self.price

    def view(self, variant: str) -> VariantView:
        return next(v for v in self.variants if v.name == variant)

    @cached_property
    def _lowest_queued_level(self) -> int:
        return max(v.lowest_queued_level for v in self.variants)

    def at_level(self, level: int) -> RouterSnapshot:
        """This snapshot as a request of priority `level` sees it: its variant's queue counted
        down to that level only. Itself when nothing of a lower priority is queued (always,
        for a model without levels), so ordinary requests pay one comparison."""
        if level == 0 or level >= self._lowest_queued_level:
            return self
        return replace(self, level=level)

    def candidates(
        self, rows: int, slo_ms: float | None, views: Sequence[VariantView] | None = None
    ) -> list[Candidate]:
        """Each variant's prediction (of `views`; default: every one) for a request of `rows`
        rows sent now, and, given an SLO, its probability of answering within it.

        modelled_ms, the expected latency in the server, is
        = per-request overhead (decode, encode, the handler)
        + the variant's batch in flight
        + the batches that drain its queue, the last of which carries this request; rows that
          arrive while the batch in flight finishes join that batch too, so they are counted.
          At a priority `level`, only the queued rows of levels 1..level are ahead of it
          (the others' queues count in full: their lower levels still share the cores)
        + the other variants' work. When every variant has its own worker thread, their
          batches run at once and share the cores (processor sharing): a variant with r ms
          of work left — its batch in flight and its queue, which its batcher hands over
          batch after batch — slows our w ms by min(r, w). So a short request of a cheap
          variant runs beside a long backlog instead of behind it. Past saturation
          (`saturated`) it may not: every millisecond it takes is then one that requests
          admitted before it wait, and the machine cannot serve them all in time anyway;
          the others' backlog counts in full, as on one first-come-first-served machine.
          Measured on minilm at 1.5–2× fp32's capacity (AMD EPYC, one core): sharing alone
          spread requests over four variants in small batches and lost 4.5–8.6 points of
          effective accuracy to pinned int8. With fewer workers, batches take turns, and
          the delay is what is left of their batches in flight.
        predicted_ms is the latency, outside time included, that the request stays under
        with the probability RouterConfig.predicted_quantile (the modelled one while there
        is no data); p_in_time, P(answer within `slo_ms`, outside time included), from the
        learned ratios (without them, 1 or 0 as the model says); cost_per_row_ms, the
        machine-ms one request costs per row: the overhead around the call plus the session
        call's CPU (the profile times the cost correction, not observed times: those include
        waiting for the core).

        One loop with everything read once: a decision asks it for every variant.
        """
        work, level, floor, stretch, outside = self._work, self.level, self.floor_ms, self.stretch, self.outside_ms
        left_ms, backlogs_ms, ratios = work.left_ms, work.backlogs_ms, self.ratios
        sharing, saturated = self.side_by_side, self.saturated
        budget = None if slo_ms is None else slo_ms - outside
        per_row = rows or 1
        out = []
        for view in self.variants if views is None else views:
            waiting = left_ms[view.name]
            ahead = view.rows_ahead(level) if level else view.queued_rows
            joining = ahead + rows + view.arriving_rows_s * waiting / 1e3
            if 0 < joining <= view.max_batch_size:  # view.drain_ms's one-batch case, inline: the usual one
                own = waiting + view.curve.ms(joining) * view.correction
            else:
                own = waiting + view.drain_ms(joining)
            if not sharing:
                others = work.in_flight_ms - waiting
            elif saturated:
                others = work.backlog_ms - backlogs_ms[view.name]
            else:
                others = work.shared_ms(own) - min(backlogs_ms[view.name], own)
            modelled = self.overhead_ms + own + others
            if budget is None:
                p_in_time = 1.0
            elif ratios is None:  # too little data (or switched off): trust the model as it is
                p_in_time = 1.0 if modelled <= budget else 0.0
            else:
                p_in_time = ratios.probability_at_most((budget + floor) / (modelled + floor))
            out.append(Candidate(
                view.name, view.device, view.quality, (modelled + floor) * stretch - floor + outside,
                view.capacity_rows_s, modelled, p_in_time,
                (self.cpu_overhead_ms + view.cost_ms(rows)) / per_row,
            ))  # fmt: skip
        return out
