"""The simulator: deterministic, faithful where the answer is known, and driven by the real router.

Small synthetic variants (no repository), Poisson arrivals; simulated time only — nothing
here reads a wall clock.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from slimserve.router.config import RouterConfig
from slimserve.router.latency import ServiceCurve
from slimserve.simulate.ceiling import best_mix, efficient, fluid_bound
from slimserve.simulate.engine import Arrival, Mix, Pinned, Routed, simulate
from slimserve.simulate.server import Physics, ServerParams, VariantSpec
from slimserve.simulate.stats import Interval, t_975
from slimserve.simulate.trace import Trace

PARAMS = ServerParams(pre_ms=0.5, post_ms=0.25, refuse_ms=0.1, outside_ms=0.3)


def variant(name: str, quality: float, ms_one: float, ms_eight: float) -> VariantSpec:
    curve = ServiceCurve.of({1: ms_one, 8: ms_eight})
    return VariantSpec(name, quality, 8, 0.0, curve, Physics({0: curve}))


SPECS = [variant("big", 1.0, 10.0, 64.0), variant("small", 0.8, 3.0, 16.0)]


def poisson(rate_rps: float, count: int, slo_ms: float = 60.0, seed: int = 1) -> list[Arrival]:
    times = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate_rps, size=count))
    return [Arrival(float(t), slo_ms) for t in times]


def test_a_seed_gives_the_same_replay_every_time() -> None:
    arrivals = poisson(150.0, 400)
    draws = np.random.default_rng(3).random(len(arrivals))
    for policy in (Routed(), Mix({"big": 0.4, "small": 0.6}, draws)):
        first = simulate(SPECS, PARAMS, policy, arrivals, 60.0, seed=5)
        again = simulate(SPECS, PARAMS, policy, arrivals, 60.0, seed=5)
        assert np.array_equal(first.latency_ms, again.latency_ms)
        assert first.variants == again.variants and first.outcomes == again.outcomes


def test_a_pinned_variant_at_low_load_meets_every_slo_with_its_own_quality() -> None:
    result = simulate(SPECS, PARAMS, Pinned("small"), poisson(10.0, 200), 60.0)
    assert result.slo_attainment == 1.0
    assert result.effective_accuracy == pytest.approx(0.8)
    # Alone on an idle server a call takes the loop's work, its session call and the outside.
    assert result.latency_ms.min() == pytest.approx(0.5 + 3.0 + 0.25 + 0.3)


def test_past_its_capacity_a_pinned_variant_misses_slos() -> None:
    # big: 0.75 ms of loop + 8 ms per row at full batches → about 115 calls/s on one core.
    light = simulate(SPECS, PARAMS, Pinned("big"), poisson(40.0, 400), 60.0)
    heavy = simulate(SPECS, PARAMS, Pinned("big"), poisson(300.0, 400), 60.0)
    assert light.slo_attainment > 0.95
    assert heavy.slo_attainment < 0.6


def test_the_bound_is_above_the_best_mix_which_is_above_the_best_static_variant() -> None:
    arrivals = poisson(160.0, 300)
    draws = np.random.default_rng(9).random(len(arrivals))

    def evaluate(weights: dict[str, float]) -> float:
        return simulate(SPECS, PARAMS, Mix(weights, draws), arrivals, 60.0).effective_accuracy

    statics = {s.name: simulate(SPECS, PARAMS, Pinned(s.name), arrivals, 60.0).effective_accuracy for s in SPECS}
    mix = best_mix([s.name for s in SPECS], evaluate)
    bound = fluid_bound(SPECS, PARAMS, arrivals)
    assert bound.effective_accuracy >= mix.effective_accuracy >= max(statics.values())
    assert sum(bound.shares.values()) <= 1.0 + 1e-9


def test_a_variant_worse_and_costlier_than_another_takes_no_part_in_mixes() -> None:
    dominated = variant("slow", 0.7, 4.0, 20.0)
    assert [s.name for s in efficient([*SPECS, dominated], 0)] == ["big", "small"]


def test_the_simulation_runs_the_real_decision() -> None:
    # At a load between the two variants' capacities the router must trade quality for time;
    # with the price and ratios switched off it decides otherwise, and the outcome differs.
    arrivals = poisson(130.0, 400, slo_ms=40.0)
    shipped = simulate(SPECS, PARAMS, Routed(), arrivals, 40.0)
    ablated = simulate(SPECS, PARAMS, Routed(), arrivals, 40.0, RouterConfig.without(["price", "ratios"]))
    assert set(shipped.variants) == {"big", "small"}
    assert shipped.variants != ablated.variants
    assert shipped.effective_accuracy != ablated.effective_accuracy


def test_two_workers_on_two_cores_plan_as_one_worker_on_one_does_at_half_the_rate() -> None:
    # Each worker sees half the calls and has one core of two: where one worker alone at rate r
    # moves a share of the calls from `big` to `small`, two at 2r must move the same share
    # (accounting against both cores, each worker thought it had twice the room: at r = 50, 26 %
    # to `small` against one worker's 70 %, before the split price; now about 8 % and 24 % at
    # r = 50 and 60, where one worker given twice the room moves 0 % and 0.6 %).
    two = dataclasses.replace(PARAMS, cores=2, workers=2, session_threads=1)
    tight = RouterConfig(cpu_target_utilization=0.6, price_wait_share=0.1)  # a budget that binds at these rates
    for rate in (50.0, 60.0):
        one_worker = simulate(SPECS, PARAMS, Routed(), poisson(rate, 800), 60.0, tight, seed=3).shares()
        two_workers = simulate(SPECS, two, Routed(), poisson(2 * rate, 1600), 60.0, tight, seed=3).shares()
        assert one_worker.get("small", 0.0) > 0.05
        assert two_workers.get("small", 0.0) == pytest.approx(one_worker["small"], rel=0.25), (rate, two_workers)


def test_with_one_compute_thread_batches_take_turns_instead_of_sharing_the_core() -> None:
    # A call to `big` (10 ms) and, 1 ms later, one to `small` (3 ms). With a thread per
    # variant (the default) they share the core and both end late; with one compute thread
    # `small` waits for `big`, which runs at full speed.
    arrivals = [Arrival(0.0, 60.0), Arrival(0.001, 60.0)]
    first_big = Mix({"big": 0.5, "small": 0.5}, np.array([0.1, 0.9]))
    shared = simulate(SPECS, PARAMS, first_big, arrivals, 60.0)
    taking_turns = simulate(SPECS, dataclasses.replace(PARAMS, compute_workers=1), first_big, arrivals, 60.0)
    assert shared.variants == taking_turns.variants == ("big", "small")
    big_alone = 0.5 + 10.0 + 0.25 + 0.3  # loop, session call, loop, outside: the idle server's latency
    assert taking_turns.latency_ms[0] < shared.latency_ms[0]
    assert taking_turns.latency_ms[0] == pytest.approx(big_alone, abs=1.0)  # only the loop's work for `small` beside it
    assert taking_turns.latency_ms[1] > big_alone - 1.0 > shared.latency_ms[1]  # it waited for `big`'s thread
    with pytest.raises(ValueError, match="compute_workers"):
        ServerParams(compute_workers=0)


def test_with_one_compute_thread_the_batch_due_first_takes_the_next_turn() -> None:
    # `big` runs from 0; a loose call to `mid` forms a batch at 1 ms, a tight one to `small` at
    # 2 ms, both waiting for the thread. First formed, first run, `mid` would go next and
    # `small` (15-ms SLO) end at about 19.5 ms; by deadline `small` goes next, in time.
    specs = [*SPECS, variant("mid", 0.9, 6.0, 40.0)]
    arrivals = [Arrival(0.0, 600.0), Arrival(0.001, 600.0), Arrival(0.002, 15.0)]
    order = Mix({"big": 1 / 3, "mid": 1 / 3, "small": 1 / 3}, np.array([0.1, 0.5, 0.9]))
    result = simulate(specs, dataclasses.replace(PARAMS, compute_workers=1), order, arrivals, 60.0)
    assert result.variants == ("big", "mid", "small")
    assert result.latency_ms[2] < result.latency_ms[1] and result.in_time.all()
    big_alone = 0.5 + 10.0 + 0.25 + 0.3  # the idle server's latency for `big`
    assert result.latency_ms[2] > big_alone - 2.0  # it waited for `big`'s thread, not for `mid`'s


def test_physics_interpolates_between_measured_lengths() -> None:
    physics = Physics({32: ServiceCurve.of({1: 2.0}), 128: ServiceCurve.of({1: 8.0})})
    assert physics.ms(1, 80) == pytest.approx(5.0)
    assert physics.ms(1, 16) == 2.0 and physics.ms(1, 512) == 8.0


def test_intervals_use_students_t() -> None:
    assert t_975(49) == pytest.approx(2.009575, abs=1e-4)
    assert t_975(9) == pytest.approx(2.262157, abs=1e-3)
    interval = Interval.of([0.8, 0.9, 1.0])
    assert interval.mean == pytest.approx(0.9)
    assert interval.half_width == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=2e-2)
    assert Interval.paired([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]).half_width == pytest.approx(0.0)


def test_trace_windows_spread_over_the_whole_trace() -> None:
    trace = Trace(np.arange(100.0), np.full(100, 128))
    assert trace.window_starts(10, 4) == [0, 30, 60, 90]
    with pytest.raises(ValueError, match="a window needs"):
        trace.window_starts(200, 2)
