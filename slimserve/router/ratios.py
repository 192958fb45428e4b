"""The learned distribution of observed / modelled latency, for P(a request meets its SLO).

Queue snapshots cannot see everything: the event loop and the sessions share the cores, so
under load every batch and every handler runs slower than profiled, whichever variant it
belongs to. The router therefore keeps, per model, the distribution of the ratio
r = (observed + F) / (modelled + F) of finished requests, and asks it: given a variant's
modelled latency m and a budget b, how likely is r ≤ (b + F) / (m + F)? The floor F is the
latency every request meets whatever its work (the learned per-request overhead and the
time outside the server, `RouterSnapshot.floor_ms`): part of the noise does not scale with
the work, and without it a 0.3 ms request that took 3 ms would count as "10× slower" and
make every cheap request look risky.

Histogram over log-spaced bins (BINS_PER_DOUBLING per doubling of r between RATIO_LOW and
RATIO_HIGH, plus one bin below and one above). Recent requests count more: an observation's
weight doubles every half-life (RouterConfig.ratio_half_life_s) after an origin, which is the
same as older ones halving — an exponentially decaying histogram with O(1) updates. Before a new weight could grow past
2^MAX_WEIGHT_DOUBLINGS the histogram is rescaled to an origin of now (old weights × 2^−elapsed, which
may underflow to 0 but never overflows), and reads compute the decay as 2^−elapsed; so any
gap in traffic — a second or a week — leaves every number finite. With less recent weight
than RouterConfig.ratio_min_samples (start-up, or a model that went quiet) it says
nothing, and the router falls back to the modelled latency alone.

Thread: owned by the event loop (the router's owner); other threads read published snapshots.
"""

from __future__ import annotations

import bisect
import math
from itertools import accumulate

from slimserve.router.config import RouterConfig

BINS_PER_DOUBLING = 6
RATIO_LOW, RATIO_HIGH = 0.25, 64.0
MAX_WEIGHT_DOUBLINGS = 30.0  # rescale before a new weight exceeds 2**30 of the origin's
_BINS = round(math.log2(RATIO_HIGH / RATIO_LOW) * BINS_PER_DOUBLING)
# Upper edge of every bin: the underflow bin, the log-spaced ones, the overflow bin.
UPPER_EDGES: tuple[float, ...] = (
    RATIO_LOW,
    *(RATIO_LOW * 2.0 ** ((i + 1) / BINS_PER_DOUBLING) for i in range(_BINS)),
    math.inf,
)


class RatioSnapshot:
    """The distribution at one instant: cumulative weights over UPPER_EDGES."""

    def __init__(self, cumulative: list[float]) -> None:
        self._cumulative = cumulative
        self._total = cumulative[-1]
        self._quantiles: dict[float, float] = {}  # p → quantile: every router snapshot asks for one

    def probability_at_most(self, ratio: float) -> float:
        """P(r ≤ ratio), counting only bins that lie wholly below it (a cautious estimate)."""
        if ratio < RATIO_LOW:
            return 0.0
        full_bins = bisect.bisect_right(UPPER_EDGES, ratio)
        return self._cumulative[full_bins - 1] / self._total if full_bins else 0.0

    def quantile(self, p: float) -> float:
        """The upper edge of the bin in which the p-quantile falls."""
        known = self._quantiles.get(p)
        if known is None:
            known = self._quantiles[p] = self._quantile(p)
        return known

    def _quantile(self, p: float) -> float:
        index = bisect.bisect_left(self._cumulative, p * self._total)
        edge = UPPER_EDGES[min(index, len(UPPER_EDGES) - 1)]
        return RATIO_HIGH if math.isinf(edge) else edge


class RatioDistribution:
    """Exponentially decaying histogram of observed / modelled latency (module docstring)."""

    def __init__(
        self,
        half_life_s: float = RouterConfig.ratio_half_life_s,
        min_samples: float = RouterConfig.ratio_min_samples,
    ) -> None:
        self.half_life_s = half_life_s
        self.min_samples = min_samples
        self._weights = [0.0] * len(UPPER_EDGES)
        self._total = 0.0
        self._origin_s: float | None = None
        # The shape of the distribution, kept until the next observation: decay scales every
        # bin alike, so it changes only what `effective_samples` says.
        self._shape: RatioSnapshot | None = None

    def _doublings(self, now_s: float) -> float:
        """Half-lives from the origin to `now_s` (negative if the clock reads earlier)."""
        assert self._origin_s is not None
        return (now_s - self._origin_s) / self.half_life_s

    def observe(self, modelled_ms: float, observed_ms: float, now_s: float, floor_ms: float = 0.0) -> None:
        if not (modelled_ms > 0 and observed_ms > 0 and math.isfinite(observed_ms) and math.isfinite(modelled_ms)):
            return
        if self._origin_s is None:
            self._origin_s = now_s
        doublings = self._doublings(now_s)
        if doublings > MAX_WEIGHT_DOUBLINGS:  # rescale first: same shape, origin now, no overflow
            decay = 2.0**-doublings  # underflows to 0 after a long gap, as it should
            self._weights = [w * decay for w in self._weights]
            self._total *= decay
            self._origin_s, doublings = now_s, 0.0
        weight = 2.0**doublings
        ratio = (observed_ms + floor_ms) / (modelled_ms + floor_ms)
        index = min(bisect.bisect_left(UPPER_EDGES, ratio), len(UPPER_EDGES) - 1)
        self._weights[index] += weight
        self._total += weight
        self._shape = None

    def effective_samples(self, now_s: float) -> float:
        """Observations in the last half-life or so (older ones count for less)."""
        if self._origin_s is None:
            return 0.0
        # 2^-d underflows to 0 after a long gap (never overflows); a clock read before the
        # origin decays nothing.
        return self._total * 2.0 ** -max(self._doublings(now_s), 0.0)

    def snapshot(self, now_s: float) -> RatioSnapshot | None:
        """The current distribution, or None while it rests on too few recent requests."""
        if self.effective_samples(now_s) < self.min_samples:
            return None
        if self._shape is None:
            self._shape = RatioSnapshot(list(accumulate(self._weights)))
        return self._shape
