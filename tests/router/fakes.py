"""A settable clock, queues and snapshots for router tests: time is the subject there, so it is faked."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from slimserve.router.latency import ServiceCurve
from slimserve.router.ratios import RatioDistribution, RatioSnapshot
from slimserve.router.snapshot import RouterSnapshot, VariantView


class FakeClock:
    """monotonic() replacement; advance it by hand."""

    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@dataclass
class FakeQueue:
    """A batcher's queue state, set by the test."""

    queued_rows: int = 0
    running_rows: int = 0
    running_started_s: float | None = None


def snapshot_of(
    variants: Sequence[tuple[str, float, float, float]],
    price: float = 0.0,
    required_rows_s: float | None = None,
    ratios: RatioSnapshot | None = None,
    default_slo_ms: float = 20.0,
    busy: Collection[str] = (),
    saturated: bool = False,
) -> RouterSnapshot:
    """A snapshot of idle variants, each (name, quality, ms per call of any size, capacity rows/s),
    with no overhead and no time outside the server: each predicts exactly its `ms`. Those in
    `busy` have a batch in flight that has overrun its time: work ahead, the prediction unchanged."""
    views = tuple(
        VariantView(
            name, "cpu", quality, ServiceCurve.of({1: ms}), 1.0, 32, 0.0, 0, 0.0, capacity, (), int(name in busy)
        )
        for name, quality, ms, capacity in variants
    )
    stretch = ratios.quantile(0.9) if ratios else 1.0
    return RouterSnapshot(
        0.0, views, default_slo_ms, 0.0, 0.0, 0.0, ratios, price, saturated, required_rows_s, True, stretch
    )


def ratios_of(ratios: list[float]) -> RatioSnapshot:
    """The learned spread of observed / modelled latency, one observation per ratio given."""
    distribution = RatioDistribution(min_samples=1.0)
    for ratio in ratios:
        distribution.observe(1.0, ratio, now_s=0.0)
    snapshot = distribution.snapshot(0.0)
    assert snapshot is not None
    return snapshot
