"""The router of one model with a fake clock and fake queues: load, throughput SLO, corrections."""

from __future__ import annotations

from collections import Counter

import pytest

from slimserve.router.config import RouterConfig
from slimserve.router.cpu import MIN_REQUESTS, CpuAccount
from slimserve.router.hints import RequestHints
from slimserve.router.latency import LatencyModel, ServiceCurve
from slimserve.router.model_router import ModelRouter, VariantRoute
from slimserve.router.policy import (
    BEST_EFFORT,
    CPU_BUDGET,
    PINNED,
    SHED_PREDICTED_LATE,
    THROUGHPUT_SLO,
    WITHIN_SLO,
    Candidate,
    Decision,
    candidates,
)
from slimserve.router.snapshot import RouterSnapshot, VariantView
from tests.router.fakes import FakeClock, FakeQueue

SLO = RequestHints(slo_ms=10.0, slo_source="parameter")
LOOSE = RequestHints(slo_ms=50.0, slo_source="parameter")


def make_router(
    clock: FakeClock, throughput_slo_rps: float | None = None, config: RouterConfig | None = None
) -> tuple[ModelRouter, dict[str, FakeQueue]]:
    curves = {  # ms per batch of 1, 8, 32: fp32 the slowest, distilled the fastest
        "fp32": ServiceCurve.of({1: 1.0, 8: 5.0, 32: 18.0}),
        "int8": ServiceCurve.of({1: 0.4, 8: 2.0, 32: 7.0}),
        "distilled": ServiceCurve.of({1: 0.1, 8: 0.3, 32: 1.0}),
    }
    quality = {"fp32": 1.0, "int8": 0.998, "distilled": 0.995}
    queues = {name: FakeQueue() for name in curves}
    routes = [VariantRoute(n, "cpu", quality[n], LatencyModel(c, 32), queues[n]) for n, c in curves.items()]
    config = config or RouterConfig(rpc_allowance_ms=0.0)  # no time outside the server: predictions exact
    return ModelRouter("digits", routes, 20.0, throughput_slo_rps, config, clock=clock), queues


def predictions(router: ModelRouter, rows: int = 1, slo_ms: float | None = None) -> list[Candidate]:
    """Every variant's prediction, from the snapshot the router would decide on now."""
    return candidates(router.snapshot(), rows, slo_ms)


def answer_as_modelled(router: ModelRouter, decision: Decision) -> None:
    """Report a request that took exactly the modelled time, all of it compute."""
    modelled = decision.chosen.modelled_ms
    router.observe_request(decision, modelled, queue_ms=0.0, compute_ms=modelled - router.overhead_ms)


def test_traffic_shifts_to_cheaper_variants_as_the_queue_grows_and_back_as_it_drains() -> None:
    clock = FakeClock()
    # The predictions alone move it (the backlog price would move it sooner: next test).
    router, queues = make_router(clock, config=RouterConfig(rpc_allowance_ms=0.0, backlog_price_on=False))
    chosen = []
    for fp32_rows, int8_rows in ((0, 0), (8, 0), (24, 0), (64, 8), (200, 64), (64, 8), (8, 0), (0, 0)):
        queues["fp32"].queued_rows, queues["int8"].queued_rows = fp32_rows, int8_rows
        chosen.append(router.route(SLO, 1).variant)
    assert chosen == ["fp32", "fp32", "int8", "int8", "distilled", "int8", "fp32", "fp32"]


def test_the_backlog_prices_cpu_at_once_and_the_price_is_gone_when_it_drains() -> None:
    clock = FakeClock()
    router, queues = make_router(clock)  # no rates sampled: the rates' price is 0 throughout
    loose = RequestHints(slo_ms=1e4, slo_source="parameter")  # every variant in time whatever the queue
    chosen = []
    for int8_rows in (0, 2, 8, 2, 0):
        queues["int8"].queued_rows = int8_rows
        chosen.append(router.route(loose, 1).variant)
    # At the traffic's ~20-ms SLO the divisor is 0.2 × 20² ≈ 80 ms²: 2 rows (0.63 ms) price a
    # machine-ms at ~0.008, more than fp32's 0.002 over int8 for its extra 0.6 ms; 8 rows
    # (2 ms, ~0.025) more than int8's 0.003 over distilled for its extra 0.3 ms.
    assert chosen == ["fp32", "int8", "distilled", "int8", "fp32"]
    queues["int8"].queued_rows = 8
    divisor_ms2 = RouterConfig().backlog_price_slo2 * router.traffic_slo_ms**2
    assert router.snapshot().price == pytest.approx(2.0 / divisor_ms2)
    assert router.explain(loose, 1).reason == CPU_BUDGET
    off, off_queues = make_router(clock, config=RouterConfig(rpc_allowance_ms=0.0, backlog_price_on=False))
    off_queues["int8"].queued_rows = 8
    assert off.route(loose, 1).variant == "fp32" and off.snapshot().price == 0.0


def test_the_event_loops_lag_is_backlog_too() -> None:
    """Calls not yet routed wait behind the event loop: its lag prices CPU as queued work does
    (digits, whose calls cost the loop more than the session, queue there, not in a batcher)."""
    clock = FakeClock()
    router, _ = make_router(clock)
    loose = RequestHints(slo_ms=1e4, slo_source="parameter")
    assert router.route(loose, 1).variant == "fp32"  # no queue, no lag: no price
    router.loop_lag_ms = lambda: 2.0  # as 8 rows queued on int8 would (previous test)
    clock.advance(2 * RouterConfig.snapshot_max_age_s)
    divisor_ms2 = RouterConfig().backlog_price_slo2 * router.traffic_slo_ms**2
    assert router.snapshot().price == pytest.approx(2.0 / divisor_ms2)
    assert router.route(loose, 1).variant == "distilled"
    off, _ = make_router(clock, config=RouterConfig(rpc_allowance_ms=0.0, loop_backlog_on=False))
    off.loop_lag_ms = lambda: 2.0
    assert off.snapshot().price == 0.0 and off.route(loose, 1).variant == "fp32"


def test_the_prices_run_on_the_slo_the_traffic_carries() -> None:
    """The traffic's SLO is a harmonic mean of its requests' (it leans to the tight ones), it
    stays through a long silence, and the backlog price scales with its square: a backlog
    that is the same share of the SLO prices the same share of that SLO per machine-ms."""
    clock = FakeClock()
    router, queues = make_router(clock)
    assert router.traffic_slo_ms == pytest.approx(20.0)  # the model's default before any request
    for i in range(2000):
        router.route(RequestHints(slo_ms=6.0 if i % 2 else 20.0, slo_source="parameter"), 1)
    assert router.traffic_slo_ms == pytest.approx(2 / (1 / 6 + 1 / 20), rel=0.02)  # 9.2 ms, not 13
    clock.advance(3 * 24 * 3600.0)  # three days without a request: it counts requests, not time
    assert router.traffic_slo_ms == pytest.approx(2 / (1 / 6 + 1 / 20), rel=0.02)
    queues["int8"].queued_rows = 8  # 2 ms of work
    tight_price = router.snapshot().price
    slow, slow_queues = make_router(clock)
    for _ in range(2000):
        slow.route(RequestHints(slo_ms=10 * router.traffic_slo_ms, slo_source="parameter"), 1)
    slow_queues["int8"].queued_rows = 128  # 28 ms: 14× the work against a 10× longer SLO
    assert slow.snapshot().price * slow.traffic_slo_ms == pytest.approx(
        1.4 * tight_price * router.traffic_slo_ms, rel=0.02
    )
    absurd, _ = make_router(clock)
    for _ in range(2000):  # a caller asking for a microsecond moves the scale ten times, no more
        absurd.route(RequestHints(slo_ms=0.001, slo_source="parameter"), 1)
    assert absurd.traffic_slo_ms == pytest.approx(20.0 / RouterConfig().traffic_slo_range)
    for _ in range(2000):  # and one asking for a day, ten times the other way
        absurd.route(RequestHints(slo_ms=86_400_000.0, slo_source="parameter"), 1)
    assert absurd.traffic_slo_ms == pytest.approx(20.0 * RouterConfig().traffic_slo_range)
    default_only, _ = make_router(clock, config=RouterConfig(rpc_allowance_ms=0.0, traffic_slo_on=False))
    default_only.route(RequestHints(slo_ms=6.0, slo_source="parameter"), 1)
    assert default_only.traffic_slo_ms == 20.0


def test_other_variants_work_delays_a_request_by_at_most_its_own() -> None:
    clock = FakeClock()
    router, queues = make_router(clock)
    idle = {c.variant: c.predicted_ms for c in predictions(router)}
    queues["int8"].running_rows, queues["int8"].running_started_s = 64, clock()  # 14 ms of the cores
    queues["int8"].queued_rows = 64  # and 14 ms more queued
    busy = {c.variant: c.predicted_ms for c in predictions(router)}
    # Side by side (a worker per variant), the cores are shared: fp32's 1 ms takes 2 ms.
    assert busy["fp32"] - idle["fp32"] == pytest.approx(1.0)
    assert busy["distilled"] - idle["distilled"] == pytest.approx(0.1)
    assert busy["int8"] - idle["int8"] == pytest.approx(14.0 + 14.0)
    queues["int8"].running_rows = 0  # nothing in flight: the queue alone still takes its share of the cores
    assert predictions(router)[0].predicted_ms - idle["fp32"] == pytest.approx(1.0)
    queues["int8"].running_rows = 64
    router.side_by_side = False  # one worker: batches take turns, and the one in flight goes first
    clock.advance(2 * RouterConfig.snapshot_max_age_s)
    queues["int8"].running_started_s = clock()
    serial = {c.variant: c.predicted_ms for c in predictions(router)}
    assert serial["fp32"] - idle["fp32"] == pytest.approx(14.0)
    queues["fp32"].queued_rows = 200
    assert router.route(SLO, 1).reason == BEST_EFFORT


def test_batch_in_flight_is_counted_until_it_should_have_finished() -> None:
    clock = FakeClock()
    router, queues = make_router(clock)
    queues["fp32"].running_rows, queues["fp32"].running_started_s = 32, clock()
    assert predictions(router)[0].predicted_ms == pytest.approx(18.0 + 1.0)
    clock.advance(0.010)
    assert predictions(router)[0].predicted_ms == pytest.approx(8.0 + 1.0)
    clock.advance(0.010)
    assert predictions(router)[0].predicted_ms == pytest.approx(1.0)


def kept_views(earlier: RouterSnapshot, later: RouterSnapshot) -> list[str]:
    """The variants whose view `later` kept from `earlier` (the same object)."""
    return [v.name for v, w in zip(earlier.variants, later.variants, strict=True) if v is w]


def test_a_new_snapshot_rebuilds_the_views_of_changed_queues_and_runs_kept_batches_down() -> None:
    """A call that changes one queue rebuilds that variant's view; the others are kept while
    younger than snapshot_max_age_s, and a kept batch in flight still runs down with the
    clock: every prediction is what a router taking every view afresh would make."""
    clock, fresh_clock = FakeClock(), FakeClock()
    router, queues = make_router(clock)
    fresh, fresh_queues = make_router(fresh_clock)
    for q in (queues, fresh_queues):
        q["fp32"].running_rows, q["fp32"].running_started_s = 32, clock()  # 18 ms
        q["int8"].queued_rows = 8
    first = router.snapshot()
    clock.advance(0.003)
    fresh_clock.advance(0.003)
    for q in (queues, fresh_queues):
        q["int8"].queued_rows = 9
    second = router.snapshot()
    assert second is not first
    assert kept_views(first, second) == ["fp32", "distilled"]
    assert [c.predicted_ms for c in candidates(second, 1, None)] == pytest.approx(
        [c.predicted_ms for c in candidates(fresh.snapshot(), 1, None)]
    )
    # fp32: 15 ms left of its batch (3 ms done), its own 1 ms, and int8's 9 queued rows beside it.
    assert candidates(second, 1, None)[0].predicted_ms == pytest.approx(15.0 + 1.0 + 2.0 + 5.0 / 24)
    clock.advance(2 * RouterConfig().snapshot_max_age_s)  # too old to keep: every view afresh
    third = router.snapshot()
    assert not kept_views(second, third)
    clock.advance(86_400.0)  # a day later, the batch long over by the clock: nothing kept, nothing left of it
    after_a_day = router.snapshot()
    assert not kept_views(third, after_a_day)
    # fp32: its own 1 ms, which int8's 2.2 ms queue beside it makes 2 (processor sharing).
    assert candidates(after_a_day, 1, None)[0].predicted_ms == pytest.approx(1.0 + 1.0)


def test_a_batch_rebuilds_its_variants_view_and_an_answer_none() -> None:
    clock = FakeClock()
    router, _ = make_router(clock)
    before = router.snapshot()
    router.observe_batch("int8", 8, 4.0)  # int8 is slower than its profile said
    after = router.snapshot()
    assert after is not before and set(kept_views(before, after)) == {"fp32", "distilled"}
    assert after.view("int8").correction > before.view("int8").correction
    decision = router.route(SLO, 1)
    router.observe_request(decision, 30.0, 1.0, 1.0)  # a slow answer: overhead and ratios learn
    answered = router.snapshot()
    assert answered is not after and answered.overhead_ms > after.overhead_ms  # the snapshot is new
    assert set(kept_views(after, answered)) == set(router.variants)  # its views, younger than 5 ms, are kept
    clock.advance(2 * RouterConfig.snapshot_max_age_s)
    assert not kept_views(answered, router.snapshot())  # and made again once they age


def test_observed_compute_corrects_the_profile() -> None:
    clock = FakeClock()
    router, _ = make_router(clock)
    tight = RequestHints(slo_ms=2.5, slo_source="parameter")
    assert router.route(tight, 1).variant == "fp32"
    for _ in range(60):
        router.observe_batch("fp32", 8, 15.0)  # fp32 turned out 3× slower than profiled
    assert router.variants["fp32"].latency.correction == pytest.approx(3.0, rel=0.01)
    clock.advance(2 * RouterConfig.snapshot_max_age_s)  # the next snapshot sees it
    assert router.route(tight, 1).variant == "int8"


def test_with_the_correction_off_the_profile_is_trusted_as_it_is() -> None:
    clock = FakeClock()
    router, _ = make_router(clock, config=RouterConfig(rpc_allowance_ms=0.0, correction_on=False))
    for _ in range(60):
        router.observe_batch("fp32", 8, 15.0)
    clock.advance(2 * RouterConfig.snapshot_max_age_s)
    assert router.route(RequestHints(slo_ms=2.5, slo_source="parameter"), 1).variant == "fp32"


def test_overhead_outside_queue_and_compute_is_learned_and_added() -> None:
    router, _ = make_router(FakeClock())
    for _ in range(200):
        decision = router.pinned("fp32", 1)
        router.observe_request(decision, elapsed_ms=3.0, queue_ms=0.0, compute_ms=1.0)
    assert router.overhead_ms == pytest.approx(2.0, abs=0.01)
    assert predictions(router)[0].modelled_ms == pytest.approx(3.0, abs=0.01)


def test_what_the_model_cannot_see_is_learned_as_a_distribution_then_forgotten() -> None:
    clock = FakeClock()
    router, _ = make_router(clock)
    tight = RequestHints(slo_ms=2.0, slo_source="parameter")
    assert router.route(tight, 1).variant == "fp32"  # modelled 1 ms: in time, before any data
    ratios = [1.0] * 8 + [2.2] * 2  # a fifth of the requests take 2.2× as long (all of it compute: no floor)
    for i in range(400):
        clock.advance(0.001)
        decision = router.pinned("fp32", 1)
        observed = decision.chosen.modelled_ms * ratios[i % 10]
        router.observe_request(decision, observed, queue_ms=0.0, compute_ms=observed)
    snapshot = router.snapshot()
    assert snapshot.ratios is not None and 2.2 <= snapshot.ratios.quantile(0.9) < 2.5  # in the slow fifth
    fp32, int8, _ = predictions(router, 1, tight.slo_ms)
    # fp32 needs a ratio ≤ 2 / 1 = 2, int8 only ≤ 2 / 0.4 = 5.
    assert fp32.p_in_time == pytest.approx(0.8, abs=0.01) and int8.p_in_time == 1.0
    assert router.route(tight, 1).variant == "int8"  # 0.8 × 1.0 < 1.0 × 0.998
    clock.advance(20.0)  # ten half-lives without news: too little recent data to trust
    assert router.snapshot().ratios is None
    assert router.route(tight, 1).variant == "fp32"


def test_pinned_requests_are_not_routed_but_predicted() -> None:
    router, queues = make_router(FakeClock())
    queues["fp32"].queued_rows = 200
    decision = router.pinned("fp32", 1)
    assert (decision.variant, decision.reason) == ("fp32", PINNED)
    assert decision.predicted_ms > SLO.slo_ms


def test_throughput_slo_moves_loose_requests_to_variants_with_capacity() -> None:
    clock = FakeClock()
    router, _ = make_router(clock, throughput_slo_rps=2_000)  # fp32 alone carries ~1,800 rows/s
    for _ in range(100):  # a quiet start: everything stays on fp32
        clock.advance(0.01)
        decision = router.route(LOOSE, 1)
        answer_as_modelled(router, decision)
        assert decision.variant == "fp32"
    assert not router.throughput().guard_active
    decisions = []
    for _ in range(4_000):  # 2,000 requests/s
        clock.advance(0.0005)
        decisions.append(router.route(LOOSE, 1))
        answer_as_modelled(router, decisions[-1])
    late = decisions[-500:]
    assert all(d.reason == THROUGHPUT_SLO and d.variant != "fp32" for d in late)
    status = router.throughput()
    assert status.guard_active and status.sustained
    assert status.mix_capacity_rps > 2_000
    # Tight requests are not moved by the guard: they still get the best variant in time.
    tight = router.route(RequestHints(slo_ms=5.0, slo_source="parameter"), 1)
    assert (tight.variant, tight.reason) == ("fp32", WITHIN_SLO)


def test_throughput_is_not_sustained_when_completions_fall_behind() -> None:
    clock = FakeClock()
    router, _ = make_router(clock, throughput_slo_rps=800)
    for i in range(2_000):  # 1,000 arrivals/s, half of them served
        clock.advance(0.001)
        decision = router.route(SLO, 1)
        if i % 2:
            answer_as_modelled(router, decision)
        else:
            router.observe_request(None)
    assert not router.throughput().sustained


def _route_at(router: ModelRouter, clock: FakeClock, rate_rps: float, seconds: float) -> Counter[str]:
    """Route 1-row requests arriving evenly at `rate_rps`; the variants they got."""
    chosen = Counter[str]()
    for _ in range(int(rate_rps * seconds)):
        clock.advance(1.0 / rate_rps)
        chosen[router.route(SLO, 1).variant] += 1
    return chosen


def _priced_router(clock: FakeClock) -> ModelRouter:
    """A router whose queues stay empty (every variant is in time) on a one-core machine that
    is 60 % its to use, where each request takes 1 ms of CPU beside its session call."""
    router, _ = make_router(clock)
    router.cpu = account = CpuAccount(target=0.6)
    account.sample(cpu_s=0.0, wall_s=0.0, cores=1)
    for _ in range(MIN_REQUESTS):
        account.record_request()
        account.record_compute(1.0)
    account.sample(cpu_s=MIN_REQUESTS * 2.0 / 1e3, wall_s=1.0, cores=1)
    assert account.overhead_ms == pytest.approx(1.0)  # 2 ms of CPU per request, 1 of them the session's
    return router


def test_a_cpu_price_moves_heavy_traffic_to_cheaper_variants_and_lifts_when_it_eases() -> None:
    clock = FakeClock()
    router = _priced_router(clock)
    account = router.cpu

    assert _route_at(router, clock, 50.0, 1.0) == Counter(fp32=50)  # 50 × 2 ms: 10 % of the machine
    _route_at(router, clock, 500.0, 1.0)  # the rates catch up
    heavy = _route_at(router, clock, 500.0, 1.0)
    # All fp32 would take the whole machine, all int8 70 % of it; all distilled 55 % fits the
    # 60 % target, and so does a share of int8 beside it (the split price, router.price): as
    # many as the mix allows (the M/G/1 wait at the 10-ms SLO binds before utilization,
    # which allows a third); the share moves a little as the rates do between repricings.
    share = router._price.share_below
    assert 0.0 < share < 1 / 3
    assert set(heavy) == {"int8", "distilled"} and heavy.total() == 500
    assert heavy["int8"] == pytest.approx(500 * share, abs=10)
    assert router.explain(SLO, 1).reason == CPU_BUDGET
    _route_at(router, clock, 50.0, 1.0)
    assert _route_at(router, clock, 50.0, 1.0) == Counter(fp32=50)  # the price is gone with the load
    unsplit, _ = make_router(clock, config=RouterConfig.without(["price_split"], rpc_allowance_ms=0.0))
    unsplit.cpu = account
    _route_at(unsplit, clock, 500.0, 1.0)
    assert _route_at(unsplit, clock, 500.0, 1.0) == Counter(distilled=500)  # one price: all to the cheaper


def test_a_split_price_is_drawn_for_each_call_and_explain_draws_none() -> None:
    clock = FakeClock()
    router = _priced_router(clock)
    for _ in range(2):
        _route_at(router, clock, 500.0, 1.0)  # the price splits int8 and distilled (above)
    snapshot = router.snapshot()
    assert 0.0 < snapshot.share_below < 1.0 and snapshot.price_below < snapshot.price
    # At one instant every call reads this snapshot. Explain only looks: asked again, it
    # says the same, and the call routed next gets what it said.
    said = {router.explain(SLO, 1).variant for _ in range(20)}
    assert len(said) == 1 and router.route(SLO, 1).variant in said
    # Each call draws, not each snapshot: the calls that share one get the share.
    shared = Counter(router.route(SLO, 1).variant for _ in range(499))
    assert router.snapshot() is snapshot
    assert shared["int8"] + (said == {"int8"}) == pytest.approx(500 * snapshot.share_below, abs=2)
    assert set(shared) == {"int8", "distilled"}


def test_the_price_charges_the_cpu_calls_use_not_the_time_they_take_beside_others() -> None:
    def costs_after_batches(config: RouterConfig) -> tuple[ModelRouter, dict[str, float]]:
        clock = FakeClock()
        router, _ = make_router(clock, config=config)
        router.cpu.sample(cpu_s=0.0, wall_s=0.0, cores=2)  # two cores: 2 ms of CPU is 1 machine-ms
        for _ in range(100):
            # fp32's calls use 3× the CPU its profile says (inputs longer than profiled);
            # distilled's use what the profile says but take 4× as long, beside fp32's.
            router.observe_batch("fp32", 8, compute_ms=15.0, cpu_ms=2 * 15.0)
            router.observe_batch("distilled", 8, compute_ms=1.2, cpu_ms=2 * 0.3)
        return router, {c.variant: c.cost_per_row_ms * 8 for c in predictions(router, rows=8)}

    router, costs = costs_after_batches(RouterConfig(rpc_allowance_ms=0.0))
    assert costs["fp32"] == pytest.approx(15.0, rel=1e-3)
    assert costs["distilled"] == pytest.approx(0.3, rel=1e-3)
    # Nothing measured for int8: the model's pooled cost correction (3× and 1× in turn), not its profile.
    assert costs["int8"] == pytest.approx(2.0 * 1.95, rel=0.01)
    assert router.variants["distilled"].latency.correction == pytest.approx(4.0, rel=1e-3)  # time, not cost
    _, profiled = costs_after_batches(RouterConfig(rpc_allowance_ms=0.0, measured_cost_on=False))
    assert profiled == pytest.approx({"fp32": 5.0, "int8": 2.0, "distilled": 0.3})


def test_a_variant_yet_to_run_starts_from_what_the_others_taught_and_then_learns_its_own() -> None:
    clock = FakeClock()

    def views_after(config: RouterConfig) -> tuple[ModelRouter, dict[str, VariantView]]:
        router, _ = make_router(clock, config=config)
        router.cpu.sample(cpu_s=0.0, wall_s=0.0, cores=1)
        for _ in range(100):  # fp32 and int8 both take 3.4× their profile (inputs longer than profiled)
            router.observe_batch("fp32", 8, compute_ms=3.4 * 5.0, cpu_ms=3.4 * 5.0)
            router.observe_batch("int8", 8, compute_ms=3.4 * 2.0, cpu_ms=3.4 * 2.0)
        return router, views_of(router)

    def views_of(router: ModelRouter) -> dict[str, VariantView]:
        return {v.name: v for v in router.snapshot().variants}

    router, views = views_after(RouterConfig(rpc_allowance_ms=0.0))
    # distilled has not run: not its profile (text profiled shorter than the traffic's), but
    # what fp32's and int8's batches say.
    assert views["distilled"].correction == pytest.approx(3.4, rel=1e-3)
    assert views["distilled"].cost_correction == pytest.approx(3.4, rel=1e-3)
    assert {c.variant: c.cost_per_row_ms * 8 for c in predictions(router, rows=8)}["distilled"] == pytest.approx(
        3.4 * 0.3, rel=1e-3
    )
    # A day of silence changes nothing: the pool counts batches, not time.
    clock.advance(86_400.0)
    assert views_of(router)["distilled"].correction == pytest.approx(3.4, rel=1e-3)
    # Once it runs it learns its own, on from the pool's value (one batch at its profile: one step back).
    router.observe_batch("distilled", 8, compute_ms=0.3, cpu_ms=0.3)
    latency = router.variants["distilled"].latency
    assert latency.correction == pytest.approx(3.4 + 0.1 * (1.0 - 3.4), rel=1e-3)
    assert latency.cost_correction == pytest.approx(3.4 + 0.1 * (1.0 - 3.4), rel=1e-3)
    for _ in range(200):
        router.observe_batch("distilled", 8, compute_ms=0.3, cpu_ms=0.3)
    assert latency.correction == pytest.approx(1.0, rel=1e-3)  # its own now, whatever the pool says
    # The others' corrections are their own throughout.
    assert router.variants["fp32"].latency.correction == pytest.approx(3.4, rel=1e-3)

    _, off = views_after(RouterConfig(rpc_allowance_ms=0.0, pooled_correction_on=False))
    assert off["distilled"].correction == 1.0 and off["distilled"].cost_correction == 1.0  # its profile


def test_a_reload_carries_the_pool_so_a_new_variant_starts_from_it() -> None:
    clock = FakeClock()
    old, _ = make_router(clock)
    for _ in range(100):
        old.observe_batch("fp32", 8, compute_ms=2.0 * 5.0, cpu_ms=None)
    new, _ = make_router(clock)
    new.adopt(old, kept=["fp32"])
    assert new.variants["fp32"].latency.correction == pytest.approx(2.0, rel=1e-3)  # kept: its own
    assert new.variants["int8"].latency.correction == pytest.approx(2.0, rel=1e-3)  # new: the pool's


def test_capacity_counts_the_cpu_each_request_costs_around_its_session_call() -> None:
    clock = FakeClock()
    router, _ = make_router(clock)
    profiled = {c.variant: c.capacity_rows_s for c in predictions(router)}
    assert profiled["fp32"] == pytest.approx(32 / 18.0 * 1e3)  # 32 rows per 18-ms call
    router.cpu.overhead_ms = 1.0  # learned: 1 ms of CPU per request beyond the session call
    clock.advance(2 * RouterConfig.snapshot_max_age_s)
    with_overhead = {c.variant: c.capacity_rows_s for c in predictions(router)}
    # One-row requests: a batch of 32 costs 18 ms of session plus 32 ms around it.
    assert with_overhead["fp32"] == pytest.approx(32 / (18.0 + 32.0) * 1e3)
    # The overhead is the same for every variant, so it shrinks the cheap ones' lead most.
    assert with_overhead["distilled"] / with_overhead["fp32"] < profiled["distilled"] / profiled["fp32"]
    assert router.throughput().mix_capacity_rps == pytest.approx(with_overhead["fp32"])


def test_prediction_counts_full_batches_the_batch_in_flight_and_other_variants_batches() -> None:
    clock = FakeClock(10.0)
    router, queues = make_router(clock)
    curve = router.variants["fp32"].latency.curve
    # 40 rows queued + 1: one batch of 32 (18 ms), then 9 rows; plus 5 - 1.5 ms left of a
    # batch of 8 that started 1.5 ms ago.
    queues["fp32"].queued_rows, queues["fp32"].running_rows = 40, 8
    queues["fp32"].running_started_s = clock() - 0.0015
    own = 3.5 + 18.0 + curve.ms(9)
    assert predictions(router)[0].modelled_ms == pytest.approx(own)
    # Side by side, a longer backlog elsewhere slows ours by at most our own work (processor
    # sharing); one after the other, we wait for what is left of its batch in flight.
    queues["int8"].running_rows, queues["int8"].running_started_s = 32 * 30, clock()  # 210 ms of int8
    assert predictions(router)[0].modelled_ms == pytest.approx(own + own)
    router.side_by_side = False
    clock.advance(2 * RouterConfig.snapshot_max_age_s)  # fp32's batch in flight is done by now
    assert predictions(router)[0].modelled_ms == pytest.approx(18.0 + curve.ms(9) + 210.0 - 10.0)


def test_explain_says_what_route_does_on_the_same_snapshot() -> None:
    clock = FakeClock()
    router, queues = make_router(clock)
    for step in range(300):  # queues, rates, the ratio histogram and the price all moving
        clock.advance(0.0007)
        queues["fp32"].queued_rows = (step * 7) % 90
        queues["int8"].running_rows, queues["int8"].running_started_s = (step % 5) * 8, clock()
        hints = RequestHints(slo_ms=[2.0, 6.0, 20.0][step % 3], slo_source="parameter")
        explained = router.explain(hints, 1 + step % 4)
        routed = router.route(hints, 1 + step % 4)
        assert routed == explained  # the variant, the reason and every verdict
        answer_as_modelled(router, routed)


def test_past_saturation_no_request_overtakes_work_admitted_before_it() -> None:
    clock = FakeClock()
    router, queues = make_router(clock)
    router.cpu = account = CpuAccount(target=0.6)
    account.sample(cpu_s=0.0, wall_s=0.0, cores=1)
    account.sample(cpu_s=0.5, wall_s=1.0, cores=1)
    assert not router.snapshot().saturated  # nothing arrives: the traffic fits
    _route_at(router, clock, 5_000.0, 1.0)  # far more than even distilled carries on one core
    queues["int8"].running_rows, queues["int8"].running_started_s = 64, clock()  # 14 ms of the cores
    queues["int8"].queued_rows = 64  # and 14 ms more queued
    snapshot = router.snapshot()
    assert snapshot.saturated and snapshot.price > 0
    # fp32's 1 ms no longer runs beside int8's 28 ms of work (that would be 1 + 1): it waits.
    assert predictions(router)[0].modelled_ms == pytest.approx(1.0 + 28.0)


def test_a_pinned_call_reuses_a_recent_snapshot_and_then_does_not_teach_the_ratios() -> None:
    clock = FakeClock()
    router, queues = make_router(clock)
    first = router.pinned("int8", 1)  # no snapshot yet: a fresh one, which teaches
    assert first.learns
    answer_as_modelled(router, first)
    queues["int8"].queued_rows = 40  # the queue moves; a routed call would take a new snapshot
    clock.advance(router.config.snapshot_max_age_s / 2)
    second = router.pinned("int8", 1)
    assert not second.learns and second.predicted_ms == first.predicted_ms  # the same (older) view
    learned = router.ratios.effective_samples(clock())
    answer_as_modelled(router, second)
    assert router.ratios.effective_samples(clock()) == pytest.approx(learned)  # not learned
    clock.advance(router.config.snapshot_max_age_s)
    third = router.pinned("int8", 1)  # the last snapshot is too old: a fresh one sees the queue
    assert third.learns and third.predicted_ms > first.predicted_ms


def test_a_shed_request_counts_as_arrived_but_not_as_sent_to_its_variant() -> None:
    clock = FakeClock()
    router, queues = make_router(clock)
    for name in queues:  # every variant far behind: a 10-ms SLO is out of reach everywhere
        queues[name].queued_rows, queues[name].running_rows, queues[name].running_started_s = 400, 32, clock()
    shed = router.route(SLO, 1)
    assert (shed.reason, shed.shed) == (SHED_PREDICTED_LATE, True)
    assert router._shares[shed.variant].rows_per_second() == 0.0  # its rows never join that queue
    assert router._arrivals.rows_per_second() > 0.0  # but the demand was real
    pinned_late = router.pinned("fp32", 1, hints=SLO)
    assert (pinned_late.variant, pinned_late.reason) == ("fp32", SHED_PREDICTED_LATE)
    assert router.pinned("fp32", 1).reason == PINNED  # no hints: nothing to admit by
