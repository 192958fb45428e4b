"""Latency model per variant: the stored profile, corrected online, plus the queue ahead.

Service time for a batch of n rows is interpolated linearly between the profiled batch
sizes (p50; beyond the largest, per-row cost of the largest).

Online correction: every completed batch gives observed / predicted service time; an
exponentially weighted mean of that ratio (RouterConfig.correction_weight, clamped to
correction_bounds) scales every prediction.
It absorbs what the profile could not see: other variants sharing the cores, a busier
machine, and the typical input length of the traffic (text is profiled at one length;
lengths are not modelled per request).

A variant that has not run yet borrows both corrections from the model's other variants
(`CorrectionPool`): what the profile misses is mostly the traffic's input length, which
scales every variant's time alike (minilm at 128 tokens: 3.4–3.6× the 32-token profile for
all seven). Otherwise a variant the router seldom sends to looks as cheap and as fast as its
short-text profile, and the router sends it calls in a lull at 2–3× their real cost
(simulator, 3× fp32's capacity: 2 % of calls to float variants believed at 6–7 machine-ms,
15–17 at the bench's length).

Cost correction: what a session call costs in CPU (its threads' CPU time, in machine-ms)
over the profiled service time, learned the same way. The service-time correction cannot
stand in for it: it grows while other variants' calls share the cores, most for the variant
that runs least and always beside another, which the price then overcharges. The cost
correction carries only what the profile missed, the input length above all: minilm is
profiled at 32 tokens, and at 128 the variants' costs are further apart than the profile
says once the per-request overhead is added.

What the snapshots cannot see is learned as a distribution of observed / modelled latency
(`router.ratios`), from which the router takes the probability of meeting an SLO.

Queue wait: a request joins the variant's queue behind `queued_rows` and waits for the
batch in flight; the other variants' work shares the cores with it. Where the batcher serves
by priority level (`LevelledQueueView`), a request of level k waits only behind the rows
queued at levels 1..k (`RouterSnapshot.at_level`).
`RouterSnapshot.candidates` puts these together.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from slimserve.router.config import RouterConfig


class QueueView(Protocol):
    """What the router may read of a variant's batcher (no gRPC, no asyncio)."""

    @property
    def queued_rows(self) -> int: ...

    @property
    def running_rows(self) -> int: ...  # 0 when idle

    @property
    def running_started_s(self) -> float | None: ...  # monotonic start of the batch in flight; None: not started


@runtime_checkable
class LevelledQueueView(QueueView, Protocol):
    """A queue that serves by priority level (server.core.batcher); one that is not (the
    simulator's) is read as one level. Checked once, when the router is built."""

    @property
    def rows_by_level(self) -> tuple[int, ...]: ...  # rows queued at each level, level 1's first; (): no levels


@runtime_checkable
class IsolatingQueueView(QueueView, Protocol):
    """A queue that may run each request alone (server.core.batcher, for a dynamically
    quantized variant): its session calls are then one request's rows, never a merged batch."""

    @property
    def merges_requests(self) -> bool: ...


@dataclass(frozen=True)
class ServiceCurve:
    """Profiled p50 service time per batch size (milliseconds)."""

    batch_sizes: tuple[int, ...]
    p50_ms: tuple[float, ...]
    # Whole row counts up to the largest batch, looked up rather than interpolated: a routing
    # decision reads the curve some 25 times.
    _table: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_table", tuple(self._interpolate(n) for n in range(self.batch_sizes[-1] + 1)))

    @classmethod
    def of(cls, points: dict[int, float]) -> ServiceCurve:
        if not points:
            raise ValueError("a service curve needs at least one profiled batch size")
        sizes = tuple(sorted(points))
        return cls(sizes, tuple(points[b] for b in sizes))

    def ms(self, rows: float) -> float:
        table = self._table
        if rows.__class__ is int and 0 <= rows < len(table):
            return table[rows]  # type: ignore[index]
        if 0 <= rows < len(table) - 1:  # between two whole row counts: the curve is straight there
            whole = int(rows)
            return table[whole] + (table[whole + 1] - table[whole]) * (rows - whole)
        return self._interpolate(rows)

    def _interpolate(self, rows: float) -> float:
        sizes, times = self.batch_sizes, self.p50_ms
        if rows <= sizes[0]:
            return times[0]  # a smaller batch is not cheaper than the smallest profiled one
        if rows >= sizes[-1]:
            return times[-1] * rows / sizes[-1]
        i = bisect.bisect_right(sizes, rows)
        lo, hi = sizes[i - 1], sizes[i]
        return times[i - 1] + (times[i] - times[i - 1]) * (rows - lo) / (hi - lo)


class Correction:
    """An observed / profiled ratio, learned as an exponentially weighted running mean of the
    ratios seen (each clamped by the caller); `count`: how many it has seen."""

    __slots__ = ("count", "value", "weight")

    def __init__(self, weight: float) -> None:
        self.weight, self.value, self.count = weight, 1.0, 0

    def learn(self, ratio: float, start: Correction | None = None) -> None:
        """Fold one ratio in; the first one starts from `start`'s value where given (what the
        model's other variants have taught) instead of 1."""
        if not self.count and start is not None:
            self.value = start.value
        self.value += self.weight * (ratio - self.value)
        self.count += 1

    def carry(self, old: Correction) -> None:
        """Take over what `old` learned."""
        self.value, self.count = old.value, old.count


class CorrectionPool:
    """One model's service-time and cost corrections over every variant's batches: what a
    variant that has not run yet starts from (module docstring). Owned by the model's router."""

    def __init__(self, weight: float = RouterConfig.correction_weight) -> None:
        self.time = Correction(weight)
        self.cost = Correction(weight)

    def carry(self, old: CorrectionPool) -> None:
        """Take over what `old` learned (the model reloaded)."""
        self.time.carry(old.time)
        self.cost.carry(old.cost)


class LatencyModel:
    """One variant's service-time model with its online correction."""

    def __init__(
        self,
        curve: ServiceCurve,
        max_batch_size: int,
        weight: float = RouterConfig.correction_weight,
        bounds: tuple[float, float] = RouterConfig.correction_bounds,
    ) -> None:
        self.curve = curve
        self.max_batch_size = max_batch_size
        self.bounds = bounds
        self.pool: CorrectionPool | None = None  # the model's, set by its router (RouterConfig.pooled_correction_on)
        self.time = Correction(weight)  # observed / profiled service time
        self.cost = Correction(weight)  # CPU a call costs / its profiled service time

    @property
    def correction(self) -> float:
        """Observed / profiled service time: this variant's own once it has run, the pool's before."""
        return self.time.value if self.time.count or self.pool is None else self.pool.time.value

    @property
    def cost_correction(self) -> float:
        """CPU a call costs / its profiled service time: as `correction`, its own or the pool's."""
        return self.cost.value if self.cost.count or self.pool is None else self.pool.cost.value

    def carry(self, old: LatencyModel) -> None:
        """Take over what `old` learned (the same graph, reloaded)."""
        self.time.carry(old.time)
        self.cost.carry(old.cost)

    def service_ms(self, rows: float) -> float:
        """Predicted compute time of one session call over `rows` rows."""
        return self.curve.ms(rows) * self.correction

    def capacity_rows_s(self, overhead_ms_per_row: float = 0.0) -> float:
        """Rows per second this variant sustains alone, at its largest batch, when every row
        also costs `overhead_ms_per_row` of the machine outside the session call."""
        busy_ms = self.service_ms(self.max_batch_size) + overhead_ms_per_row * self.max_batch_size
        return self.max_batch_size / busy_ms * 1e3

    def _ratio(self, rows: float, observed_ms: float) -> float | None:
        """Observed / profiled time of a batch of `rows`, within the bounds; None if either is unusable."""
        expected = self.curve.ms(rows)
        if expected <= 0 or not math.isfinite(observed_ms) or observed_ms <= 0:
            return None
        return min(max(observed_ms / expected, self.bounds[0]), self.bounds[1])

    def observe(self, rows: float, compute_ms: float) -> None:
        """Fold one completed batch into the correction."""
        self._learn(self.time, None if self.pool is None else self.pool.time, self._ratio(rows, compute_ms))

    def observe_cost(self, rows: float, machine_ms: float) -> None:
        """Fold one completed batch's CPU cost (machine-ms) into the cost correction."""
        self._learn(self.cost, None if self.pool is None else self.pool.cost, self._ratio(rows, machine_ms))

    @staticmethod
    def _learn(own: Correction, pooled: Correction | None, ratio: float | None) -> None:
        """Own and pool learn the ratio; own's first starts from the pool's value before it."""
        if ratio is None:
            return
        own.learn(ratio, start=pooled)
        if pooled is not None:
            pooled.learn(ratio)

    def in_flight_ms(self, queue: QueueView, now_s: float) -> float:
        """What is left of the batch handed to the workers: all of it until it starts."""
        if queue.running_rows <= 0:
            return 0.0
        service = self.service_ms(queue.running_rows)
        started = queue.running_started_s
        return service if started is None else max(service - (now_s - started) * 1e3, 0.0)
