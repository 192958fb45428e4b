"""Every piece of decaying or windowed router state across gaps of an hour, a day and a week.

Time is the subject here, so the clock is fake and jumps. Before the fix, a model left idle
for ~34 minutes overflowed the ratio histogram's weight (2 ** (gap / 2 s)) and every call
after it failed with INTERNAL.
"""

from __future__ import annotations

import math

import pytest

from slimserve.router.config import RouterConfig
from slimserve.router.cpu import MIN_REQUESTS, SAMPLE_PERIOD_S, WEIGHT, CpuAccount
from slimserve.router.hints import RequestHints
from slimserve.router.load import RateMeter
from slimserve.router.policy import candidates
from slimserve.router.ratios import RatioDistribution
from slimserve.server.observe.load_monitor import LAG_WEIGHT, PERIOD_S, decayed_lag_ms
from tests.router.fakes import FakeClock
from tests.router.test_model_router import answer_as_modelled, make_router

HOUR_S = 3600.0
GAPS_S = (40 * 60.0, HOUR_S, 24 * HOUR_S, 7 * 24 * HOUR_S)
SLO = RequestHints(slo_ms=10.0, slo_source="parameter")
HALF_LIFE_S, MIN_EFFECTIVE_SAMPLES = RouterConfig.ratio_half_life_s, RouterConfig.ratio_min_samples


@pytest.mark.parametrize("gap_s", GAPS_S)
def test_the_ratio_histogram_stays_finite_and_forgets_across_a_gap(gap_s: float) -> None:
    ratios = RatioDistribution()
    for _ in range(100):
        ratios.observe(1.0, 4.0, now_s=10.0)  # slow, before the gap
    after = 10.0 + gap_s
    assert ratios.effective_samples(after) == 0.0  # long forgotten, and no OverflowError
    assert ratios.snapshot(after) is None
    for _ in range(100):
        ratios.observe(1.0, 1.0, now_s=after)  # fast, after it: only these count
    snapshot = ratios.snapshot(after)
    assert snapshot is not None
    assert snapshot.probability_at_most(1.5) == pytest.approx(1.0)
    assert math.isfinite(ratios.effective_samples(after + gap_s))


def test_the_ratio_histogram_survives_a_week_of_sparse_traffic() -> None:
    ratios = RatioDistribution()
    now = 0.0
    for step in range(2000):  # a request every 5 minutes, then bursts, for a week
        now += 300.0 if step % 50 else 3 * HOUR_S
        for _ in range(40 if step % 100 == 0 else 1):
            ratios.observe(2.0, 3.0, now_s=now)
        assert math.isfinite(ratios.effective_samples(now))
    snapshot = ratios.snapshot(now)
    assert snapshot is None or math.isfinite(snapshot.quantile(0.9))


def test_a_clock_read_before_the_first_observation_decays_nothing() -> None:
    ratios = RatioDistribution()
    for _ in range(int(MIN_EFFECTIVE_SAMPLES)):
        ratios.observe(1.0, 1.0, now_s=100.0)
    assert ratios.effective_samples(100.0 - 10 * HALF_LIFE_S) == pytest.approx(MIN_EFFECTIVE_SAMPLES)


@pytest.mark.parametrize("gap_s", GAPS_S)
def test_rate_meters_read_zero_after_a_gap_and_the_new_rate_at_once(gap_s: float) -> None:
    clock = FakeClock()
    meter = RateMeter(window_s=2.0, clock=clock)
    for _ in range(100):
        meter.add(2)
        clock.advance(0.01)
    clock.advance(gap_s)
    assert meter.per_second() == 0.0 and meter.rows_per_second() == 0.0 and meter.recent_per_second() == 0.0
    for _ in range(50):
        meter.add()
        clock.advance(0.02)
    assert meter.per_second() == pytest.approx(25.0, rel=0.05)
    assert meter.recent_per_second() == pytest.approx(50.0, rel=0.05)


@pytest.mark.parametrize("gap_s", GAPS_S)
def test_the_cpu_account_does_not_charge_an_idle_gap_to_a_trickle_of_requests(gap_s: float) -> None:
    account = CpuAccount()
    account.sample(cpu_s=0.0, wall_s=0.0, cores=2)
    cpu = 0.0
    wall = 0.0
    # One request every few minutes over the gap, while timers and scrapes use 1 % of a core.
    for _ in range(MIN_REQUESTS + 5):
        wall += gap_s / (MIN_REQUESTS + 5)
        cpu += 0.01 * gap_s / (MIN_REQUESTS + 5)
        account.record_request()
        account.record_compute(1.0)
        account.sample(cpu_s=cpu, wall_s=wall, cores=2)
    assert account.overhead_ms == 0.0  # nothing learned from the trickle, rather than seconds per request
    assert 0.0 <= account.utilization <= 0.01
    for _ in range(200):  # then real traffic: 200 requests in a second, 1 machine-ms each beyond compute
        account.record_request()
        account.record_compute(1.0)
    account.sample(cpu_s=cpu + 0.4 * 2, wall_s=wall + 1.0, cores=2)
    assert account.overhead_ms == pytest.approx(1.0)  # (400 − 200 machine-ms) / 200


@pytest.mark.parametrize("gap_s", GAPS_S)
def test_a_router_answers_after_a_gap_as_it_did_before(gap_s: float) -> None:
    clock = FakeClock()
    router, _ = make_router(clock)
    for _ in range(200):
        decision = router.route(SLO, 1)
        answer_as_modelled(router, decision)
        clock.advance(0.005)
    before = router.route(SLO, 1).variant
    clock.advance(gap_s)
    after = router.route(SLO, 1)
    assert after.variant == before == "fp32"
    answer_as_modelled(router, after)
    snapshot = router.snapshot()
    assert all(math.isfinite(c.predicted_ms) for c in candidates(snapshot, 1, 10.0))
    assert snapshot.ratios is None or math.isfinite(snapshot.ratios.quantile(0.9))
    assert router.throughput().arrival_rps >= 0.0 and snapshot.price == 0.0


@pytest.mark.parametrize("gap_s", GAPS_S)
def test_one_sample_over_an_idle_gap_weighs_as_much_as_the_gap(gap_s: float) -> None:
    """The load monitor parks while idle and samples once at the next request: that one sample
    (the gap's near-zero use) must pull utilization down as an unbroken run of samples would."""
    account = CpuAccount()
    account.sample(cpu_s=0.0, wall_s=0.0, cores=2)
    cpu = wall = 0.0
    for _ in range(40):  # fully busy: both cores for 10 s
        wall += SAMPLE_PERIOD_S
        cpu += 2 * SAMPLE_PERIOD_S
        account.sample(cpu_s=cpu, wall_s=wall, cores=2)
    assert account.utilization == pytest.approx(1.0, abs=1e-3)
    account.sample(cpu_s=cpu + 0.001 * gap_s, wall_s=wall + gap_s, cores=2)  # idle: 0.05 % of the machine
    assert account.utilization == pytest.approx(0.0005, abs=1e-3)
    # A gap of one period is one ordinary sample: the running mean moves by WEIGHT only.
    account.sample(cpu_s=cpu + 0.001 * gap_s + 2 * SAMPLE_PERIOD_S, wall_s=wall + gap_s + SAMPLE_PERIOD_S, cores=2)
    assert account.utilization == pytest.approx(WEIGHT, abs=1e-3)


@pytest.mark.parametrize("gap_s", GAPS_S)
def test_the_event_loop_lateness_decays_over_an_idle_gap(gap_s: float) -> None:
    assert decayed_lag_ms(40.0, gap_s) == pytest.approx(0.0, abs=1e-9)
    assert decayed_lag_ms(40.0, PERIOD_S) == pytest.approx(40.0 * (1 - LAG_WEIGHT))
