"""Latency model per variant: the stored profile, corrected online, plus the queue ahead.

Service time for a batch of n rows is interpolated linearly between the profiled batch
sizes (p50; beyond the largest, per-row cost of the largest).

Online correction: every completed batch gives observed / predicted service time; an
exponentially weighted mean of that ratio (clamped to [1/4, 4]) scales every prediction.
It absorbs what the profile could not see: other variants sharing the cores, a busier
machine, and the typical input length of the traffic (text is profiled at one length;
lengths are not modelled per request).

What the snapshots cannot see is learned as a distribution of observed / modelled latency
(`router.ratios`), from which the router takes the probability of meeting an SLO.

Queue wait: a request joins the variant's queue behind `queued_rows` and waits for the
batch in flight. The batches the *other* variants have in flight delay it too, since every
session uses all the cores (see `predict_ms`). Their queued rows do not: each batcher hands
one batch at a time to the worker threads, so variants take turns rather than queueing
behind each other's backlog.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

CORRECTION_WEIGHT = 0.1  # weight of one observed batch in the running correction
CORRECTION_BOUNDS = (0.25, 4.0)


class QueueView(Protocol):
    """What the router may read of a variant's batcher (no gRPC, no asyncio)."""

    @property
    def queued_rows(self) -> int: ...

    @property
    def running_rows(self) -> int: ...  # 0 when idle

    @property
    def running_started_s(self) -> float | None: ...  # monotonic start of the batch in flight; None: not started


@dataclass(frozen=True)
class ServiceCurve:
    """Profiled p50 service time per batch size (milliseconds)."""

    batch_sizes: tuple[int, ...]
    p50_ms: tuple[float, ...]

    @classmethod
    def of(cls, points: dict[int, float]) -> ServiceCurve:
        if not points:
            raise ValueError("a service curve needs at least one profiled batch size")
        sizes = tuple(sorted(points))
        return cls(sizes, tuple(points[b] for b in sizes))

    def ms(self, rows: float) -> float:
        sizes, times = self.batch_sizes, self.p50_ms
        if rows <= sizes[0]:
            return times[0]  # a smaller batch is not cheaper than the smallest profiled one
        if rows >= sizes[-1]:
            return times[-1] * rows / sizes[-1]
        i = bisect.bisect_right(sizes, rows)
        lo, hi = sizes[i - 1], sizes[i]
        return times[i - 1] + (times[i] - times[i - 1]) * (rows - lo) / (hi - lo)


class LatencyModel:
    """One variant's service-time model with its online correction."""

    def __init__(self, curve: ServiceCurve, max_batch_size: int) -> None:
        self.curve = curve
        self.max_batch_size = max_batch_size
        self.correction = 1.0
        self.observed_batches = 0

    def service_ms(self, rows: float) -> float:
        """Predicted compute time of one session call over `rows` rows."""
        return self.curve.ms(rows) * self.correction

    def drain_ms(self, rows: float) -> float:
        """Time to compute `rows` rows in full batches of max_batch_size, then the rest."""
        if rows <= 0:
            return 0.0
        full, rest = divmod(rows, self.max_batch_size)
        return full * self.service_ms(self.max_batch_size) + (self.service_ms(rest) if rest > 0 else 0.0)

    def capacity_rows_s(self, overhead_ms_per_row: float = 0.0) -> float:
        """Rows per second this variant sustains alone, at its largest batch, when every row
        also costs `overhead_ms_per_row` of the machine outside the session call."""
        busy_ms = self.service_ms(self.max_batch_size) + overhead_ms_per_row * self.max_batch_size
        return self.max_batch_size / busy_ms * 1e3

    def observe(self, rows: float, compute_ms: float) -> None:
        """Fold one completed batch into the correction."""
        expected = self.curve.ms(rows)
        if expected <= 0 or not math.isfinite(compute_ms) or compute_ms <= 0:
            return
        ratio = min(max(compute_ms / expected, CORRECTION_BOUNDS[0]), CORRECTION_BOUNDS[1])
        self.correction += CORRECTION_WEIGHT * (ratio - self.correction)
        self.observed_batches += 1

    def in_flight_ms(self, queue: QueueView, now_s: float) -> float:
        """What is left of the batch handed to the workers: all of it until it starts."""
        if queue.running_rows <= 0:
            return 0.0
        service = self.service_ms(queue.running_rows)
        started = queue.running_started_s
        return service if started is None else max(service - (now_s - started) * 1e3, 0.0)


def predict_ms(
    model: LatencyModel,
    queue: QueueView,
    rows: float,
    others_in_flight_ms: Sequence[float],
    overhead_ms: float,
    now_s: float,
    side_by_side: bool = True,
    arrival_rows_per_s: float = 0.0,
) -> float:
    """Expected latency of a request of `rows` rows sent to this variant now.

    = per-request overhead (decode, encode, RPC in the server)
    + this variant's batch in flight
    + the batches that drain its queue, the last of which carries this request; rows that
      arrive while the batch in flight finishes (at `arrival_rows_per_s`) join that batch
      too and make it longer, so they are counted in
    + the delay from other variants' batches in flight. When every variant has its own
      worker thread (`side_by_side`) they run at the same time and share the cores, so a
      batch with r ms left slows our w ms of work by min(r, w) (processor sharing: a short
      batch is not stuck behind a long one). With fewer workers they run one after the
      other, and the delay is r.
    """
    waiting_ms = model.in_flight_ms(queue, now_s)
    joining = queue.queued_rows + rows + arrival_rows_per_s * waiting_ms / 1e3
    own = waiting_ms + model.drain_ms(joining)
    others = (min(left, own) for left in others_in_flight_ms) if side_by_side else others_in_flight_ms
    return overhead_ms + own + sum(others)
