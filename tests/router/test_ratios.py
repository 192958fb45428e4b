"""The decaying histogram of observed / modelled latency."""

from __future__ import annotations

import pytest

from slimserve.router.config import RouterConfig
from slimserve.router.ratios import RATIO_HIGH, RatioDistribution

HALF_LIFE_S, MIN_EFFECTIVE_SAMPLES = RouterConfig.ratio_half_life_s, RouterConfig.ratio_min_samples


def test_probabilities_and_quantiles_follow_the_observations() -> None:
    ratios = RatioDistribution()
    for i in range(100):
        ratios.observe(10.0, 10.0 * (1.0 if i % 4 else 3.0), now_s=5.0, floor_ms=2.0)  # a quarter take 3×
    snapshot = ratios.snapshot(5.0)
    assert snapshot is not None
    assert snapshot.probability_at_most(1.5) == pytest.approx(0.75)
    assert snapshot.probability_at_most(3.5) == pytest.approx(1.0)
    assert snapshot.probability_at_most(0.1) == 0.0
    # Ratios are (observed + 2 ms) / (modelled + 2 ms): 1 and 32 / 12 ≈ 2.67.
    assert 1.0 <= snapshot.quantile(0.5) < 1.13 and 2.67 <= snapshot.quantile(0.9) < 3.0


def test_recent_requests_outweigh_old_ones_and_too_little_data_says_nothing() -> None:
    ratios = RatioDistribution()
    assert ratios.snapshot(0.0) is None
    for _ in range(int(MIN_EFFECTIVE_SAMPLES) * 2):
        ratios.observe(1.0, 8.0, now_s=0.0)  # slow, long ago
    for _ in range(int(MIN_EFFECTIVE_SAMPLES) * 2):
        ratios.observe(1.0, 1.0, now_s=4 * HALF_LIFE_S)  # fast, now: 16× the weight each
    snapshot = ratios.snapshot(4 * HALF_LIFE_S)
    assert snapshot is not None and snapshot.probability_at_most(1.5) == pytest.approx(16 / 17)
    assert ratios.snapshot(20 * HALF_LIFE_S) is None


def test_weights_are_renormalised_over_long_runs_and_extremes_are_clamped() -> None:
    ratios = RatioDistribution()
    for step in range(2000):
        ratios.observe(1.0, 1.0 if step % 2 else 1000.0, now_s=step * 0.05)  # 100 s, 50 half-lives
    snapshot = ratios.snapshot(100.0)
    assert snapshot is not None
    assert snapshot.probability_at_most(1.5) == pytest.approx(0.5, abs=0.02)
    assert snapshot.quantile(0.99) == RATIO_HIGH
    ratios.observe(0.0, 1.0, now_s=100.0)  # ignored, not a crash
    ratios.observe(1.0, float("nan"), now_s=100.0)
