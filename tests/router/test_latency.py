"""The latency model: profile interpolation, queue wait, online correction."""

from __future__ import annotations

import pytest

from router.latency import CORRECTION_BOUNDS, LatencyModel, ServiceCurve, predict_ms
from tests.router.fakes import FakeQueue

CURVE = ServiceCurve.of({1: 1.0, 8: 4.5, 32: 16.0})


def test_service_time_interpolates_between_profiled_batch_sizes() -> None:
    assert CURVE.ms(1) == 1.0
    assert CURVE.ms(4.5) == pytest.approx(2.75)
    assert CURVE.ms(20) == pytest.approx(10.25)
    assert CURVE.ms(64) == pytest.approx(32.0)  # past the largest: its per-row cost


def test_queue_wait_counts_full_batches_and_the_batch_in_flight() -> None:
    model = LatencyModel(CURVE, max_batch_size=32)
    idle = FakeQueue()
    assert predict_ms(model, idle, 1, [], 0.0, now_s=10.0) == 1.0
    # 40 rows queued + 1: one batch of 32 (16 ms), then 9 rows; plus 3 ms left of a
    # batch of 8 that started 1.5 ms ago; plus another variant's batch in flight and the overhead.
    busy = FakeQueue(queued_rows=40, running_rows=8, running_started_s=10.0 - 0.0015)
    own = 3.0 + 16.0 + CURVE.ms(9)
    assert model.in_flight_ms(busy, now_s=10.0) == pytest.approx(3.0)
    assert predict_ms(model, busy, 1, [2.0], 0.5, now_s=10.0) == pytest.approx(0.5 + own + 2.0)
    # Side by side, a longer batch elsewhere slows ours by at most our own work (processor
    # sharing); one after the other, we wait for all of it.
    assert predict_ms(model, busy, 1, [100.0], 0.5, now_s=10.0) == pytest.approx(0.5 + own + own)
    assert predict_ms(model, busy, 1, [100.0], 0.5, 10.0, side_by_side=False) == pytest.approx(0.5 + own + 100.0)


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


def test_a_curve_needs_a_point() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ServiceCurve.of({})
