"""The latency model: profile interpolation, queue wait, online correction."""

from __future__ import annotations

import pytest

from slimserve.router.config import RouterConfig
from slimserve.router.latency import CorrectionPool, LatencyModel, ServiceCurve
from tests.router.fakes import FakeQueue

CORRECTION_BOUNDS = RouterConfig.correction_bounds

CURVE = ServiceCurve.of({1: 1.0, 8: 4.5, 32: 16.0})


def test_service_time_interpolates_between_profiled_batch_sizes() -> None:
    assert CURVE.ms(1) == 1.0
    assert CURVE.ms(4.5) == pytest.approx(2.75)
    assert CURVE.ms(20) == pytest.approx(10.25)
    assert CURVE.ms(64) == pytest.approx(32.0)  # past the largest: its per-row cost
    # Fractions of a row (a queue's expected arrivals): straight between whole row counts.
    assert CURVE.ms(0.5) == 1.0  # a smaller batch is not cheaper than the smallest profiled one
    assert CURVE.ms(31.5) == pytest.approx(16.0 - 0.5 * 11.5 / 24)
    assert CURVE.ms(32.5) == pytest.approx(16.25)


def test_a_batch_waiting_for_a_worker_counts_in_full() -> None:
    model = LatencyModel(CURVE, max_batch_size=32)
    waiting = FakeQueue(running_rows=32, running_started_s=None)
    assert model.in_flight_ms(waiting, now_s=10.0) == 16.0


def test_online_correction_follows_observed_compute_and_is_bounded() -> None:
    model = LatencyModel(CURVE, max_batch_size=32)
    for _ in range(100):
        model.observe(8, 9.0)  # twice the profile
    assert model.correction == pytest.approx(2.0, rel=1e-3)
    assert model.service_ms(8) == pytest.approx(9.0, rel=1e-3)
    assert model.capacity_rows_s() == pytest.approx(32 / 32.0 * 1e3, rel=1e-3)
    for _ in range(200):
        model.observe(1, 1000.0)
    assert model.correction == pytest.approx(CORRECTION_BOUNDS[1], rel=1e-3)
    model.observe(1, float("nan"))
    assert model.correction == pytest.approx(CORRECTION_BOUNDS[1], rel=1e-3)


def test_a_lone_variant_learns_the_same_with_a_pool_as_without() -> None:
    alone, pooled = LatencyModel(CURVE, max_batch_size=32), LatencyModel(CURVE, max_batch_size=32)
    pooled.pool = CorrectionPool()
    for observed_ms in (9.0, 3.0, 12.0, 4.5, 40.0):
        alone.observe(8, observed_ms)
        pooled.observe(8, observed_ms)
        alone.observe_cost(8, observed_ms / 2)
        pooled.observe_cost(8, observed_ms / 2)
        assert pooled.correction == pytest.approx(alone.correction)
        assert pooled.cost_correction == pytest.approx(alone.cost_correction)
    assert pooled.pool.time.value == pytest.approx(alone.correction)
    assert pooled.pool.cost.value == pytest.approx(alone.cost_correction)


def test_a_curve_needs_a_point() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ServiceCurve.of({})
