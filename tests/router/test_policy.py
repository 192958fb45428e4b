"""The routing policy as a pure function: a snapshot and hints in, a decision out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from slimserve.router.config import RouterConfig
from slimserve.router.errors import QualityUnreachableError
from slimserve.router.hints import RequestHints
from slimserve.router.policy import (
    BEST_EFFORT,
    CPU_BUDGET,
    FASTEST,
    MOST_ACCURATE,
    PINNED,
    SHED_PREDICTED_LATE,
    THROUGHPUT_SLO,
    WITHIN_SLO,
    decide,
    pinned,
)
from tests.router.fakes import ratios_of, snapshot_of

CONFIG = RouterConfig()
DEFAULT_SLO_MS = 20.0
# (name, quality, ms, capacity rows/s)
THREE = [("fp32", 1.00, 5.0, 1_000), ("int8", 0.99, 2.0, 3_000), ("distilled", 0.97, 0.5, 20_000)]


def hints(
    slo_ms: float = DEFAULT_SLO_MS, min_quality: float = 0.0, policy: str = "slo", source: str = "parameter"
) -> RequestHints:
    return RequestHints(slo_ms, source, min_quality, policy)  # type: ignore[arg-type]


def test_most_accurate_variant_that_meets_the_slo() -> None:
    assert decide(snapshot_of(THREE), hints(slo_ms=10), 1, CONFIG).variant == "fp32"
    decision = decide(snapshot_of(THREE), hints(slo_ms=3), 1, CONFIG)
    assert (decision.variant, decision.reason, decision.predicted_ms) == ("int8", WITHIN_SLO, 2.0)
    assert decide(snapshot_of(THREE), hints(slo_ms=1), 1, CONFIG).variant == "distilled"


def test_no_variant_in_time_is_best_effort_with_the_fastest() -> None:
    decision = decide(snapshot_of(THREE), hints(slo_ms=0.1), 1, CONFIG)
    assert (decision.variant, decision.reason) == ("distilled", BEST_EFFORT)


def test_min_quality_is_never_violated_even_when_late() -> None:
    decision = decide(snapshot_of(THREE), hints(slo_ms=0.1, min_quality=0.99), 1, CONFIG)
    assert (decision.variant, decision.reason) == ("int8", BEST_EFFORT)
    rejected = {v.candidate.variant: v.why for v in decision.verdicts}
    assert "min_quality" in rejected["distilled"]


def test_unreachable_quality_is_an_error_naming_the_best() -> None:
    with pytest.raises(QualityUnreachableError, match=r"min_quality 0\.9990; the best is 'int8' at 0\.9900"):
        decide(snapshot_of(THREE[1:]), hints(min_quality=0.999), 1, CONFIG)


def test_fastest_and_most_accurate_policies() -> None:
    fastest = decide(snapshot_of(THREE), hints(policy="fastest"), 1, CONFIG)
    assert (fastest.variant, fastest.reason) == ("distilled", FASTEST)
    decision = decide(snapshot_of(THREE), hints(slo_ms=0.1, policy="most_accurate"), 1, CONFIG)
    assert (decision.variant, decision.reason) == ("fp32", MOST_ACCURATE)


def test_a_small_quality_gain_is_not_worth_a_deadline_risk() -> None:
    variants = [("fp32", 1.000, 8.0, 1_000), ("int8", 0.998, 3.0, 3_000)]
    # One request in a hundred took three times as long as modelled: fp32 (8 ms against a
    # 10-ms SLO) would then be late, int8 (3 ms) would not.
    risky = snapshot_of(variants, ratios=ratios_of([1.0] * 99 + [3.0]))
    decision = decide(risky, hints(slo_ms=10), 1, CONFIG)
    assert (decision.variant, decision.reason) == ("int8", WITHIN_SLO)
    assert decision.verdicts[0].why == "expected quality 0.9900 (P(within SLO) 0.990) < 0.9980 of 'int8'"
    safe = snapshot_of(variants, ratios=ratios_of([1.0] * 100))
    assert decide(safe, hints(slo_ms=10), 1, CONFIG).variant == "fp32"


def test_a_cpu_price_moves_requests_to_variants_that_buy_more_quality_per_millisecond() -> None:
    costly = [("fp32", 1.000, 0.6, 1_000), ("int8", 0.998, 0.25, 3_000), ("distilled", 0.995, 0.1, 9_000)]
    assert decide(snapshot_of(costly), hints(slo_ms=10), 1, CONFIG).variant == "fp32"  # free CPU: the best
    # fp32 → int8 buys 0.002 for 0.35 ms/row (0.0057 per ms); int8 → distilled 0.003 for 0.15 (0.02 per ms).
    decision = decide(snapshot_of(costly, price=0.01), hints(slo_ms=10), 1, CONFIG)
    assert (decision.variant, decision.reason) == ("int8", CPU_BUDGET)
    why = "expected quality 1.0000 (P(within SLO) 1.000) less CPU 0.0060 < 0.9955 of 'int8'"
    assert decision.verdicts[0].why == why
    assert decide(snapshot_of(costly, price=0.03), hints(slo_ms=10), 1, CONFIG).variant == "distilled"
    # The price never overrides min_quality.
    assert decide(snapshot_of(costly, price=1.0), hints(slo_ms=10, min_quality=0.999), 1, CONFIG).variant == "fp32"


def test_a_price_that_only_breaks_a_tie_in_quality_is_not_the_reason() -> None:
    """pruned and pruned-int8 answer alike: the cheaper wins at any price, and it is still the
    most accurate in time (an idle server's loop jitter alone prices CPU a little)."""
    tied = [("pruned", 0.998, 0.4, 2_000), ("pruned-int8", 0.998, 0.2, 4_000), ("fp32", 0.996, 1.0, 1_000)]
    decision = decide(snapshot_of(tied, price=0.001), hints(slo_ms=10), 1, CONFIG)
    assert (decision.variant, decision.reason) == ("pruned-int8", WITHIN_SLO)


def test_unlikely_to_make_it_anywhere_is_best_effort_with_the_most_expected_quality() -> None:
    # Changed with the best-effort rule (issue 22): both are one in three likely in time, so
    # the more accurate one is worth more in expectation; the old rule took the faster.
    hopeless = snapshot_of([("fp32", 1.0, 6.0, 1_000), ("int8", 0.99, 4.0, 3_000)], ratios=ratios_of([1.0, 3.0, 3.0]))
    decision = decide(hopeless, hints(slo_ms=10), 1, CONFIG)  # two in three take 3×: both late
    assert (decision.variant, decision.reason) == ("fp32", BEST_EFFORT)
    assert decision.verdicts[1].why.startswith("P(within SLO 10.00 ms) = 0.333")
    old_rule = decide(hopeless, hints(slo_ms=10), 1, RouterConfig.without(["best_effort_quality"]))
    assert (old_rule.variant, old_rule.reason) == ("int8", BEST_EFFORT)


def test_best_effort_does_not_escape_to_an_idle_variant_that_is_slower_per_row_and_worse() -> None:
    # int8 is behind work, distilled idle and faster for this request, both unlikely in
    # time: int8's P(in time) × quality is higher, so it is chosen (and shed, below), where
    # the fastest would have sent the call to distilled and taken the core from int8.
    variants = [("int8", 0.99, 4.0, 3_000), ("distilled", 0.70, 2.0, 2_000)]
    late = ratios_of([1.0, 6.0, 6.0])  # P(int8) = P(ratio ≤ 2.5) = 1/3, P(distilled) = P(ratio ≤ 5) = 1/3
    decision = decide(snapshot_of(variants, ratios=late), hints(slo_ms=10), 1, CONFIG)
    assert (decision.variant, decision.reason, decision.shed) == ("int8", BEST_EFFORT, False)  # idle: served
    busy = decide(snapshot_of(variants, ratios=late, busy={"int8"}), hints(slo_ms=10), 1, CONFIG)
    assert (busy.variant, busy.reason, busy.shed) == ("int8", SHED_PREDICTED_LATE, True)
    old_rule = RouterConfig.without(["best_effort_quality"])
    escaped = decide(snapshot_of(variants, ratios=late, busy={"int8"}), hints(slo_ms=10), 1, old_rule)
    assert (escaped.variant, escaped.reason) == ("distilled", BEST_EFFORT)


def test_admission_is_part_of_the_decision_and_explained() -> None:
    busy = snapshot_of(THREE, busy={"distilled"})
    decision = decide(busy, hints(slo_ms=0.1), 1, CONFIG)
    assert (decision.variant, decision.reason, decision.shed) == ("distilled", SHED_PREDICTED_LATE, True)
    assert decision.grounds is not None and decision.grounds.chosen_as == BEST_EFFORT
    chosen = next(v for v in decision.verdicts if v.chosen)
    # Explain says what the caller is told.
    assert chosen.why == f"shed_predicted_late (chosen as best_effort): {decision.refusal(0.1)}"
    assert decision.refusal(0.1).startswith(
        "overloaded: variant 'distilled' would answer within the 0.1 ms SLO with probability 0.000 (predicted 0.5 ms)"
    )
    # In time, nothing is shed however busy; an idle machine never sheds (its prediction
    # may be wrong, and only served calls correct it).
    assert not decide(busy, hints(slo_ms=10), 1, CONFIG).shed
    assert decide(snapshot_of(THREE), hints(slo_ms=0.1), 1, CONFIG).reason == BEST_EFFORT


def test_a_call_more_likely_than_admit_p_in_time_to_make_it_is_admitted_behind_work() -> None:
    # One in five requests took 3× its prediction: P(in time) = 0.8 where 1× fits and 3× does not.
    busy = snapshot_of([("int8", 0.99, 4.0, 3_000)], ratios=ratios_of([1.0] * 8 + [3.0] * 2), busy={"int8"})
    decision = decide(busy, hints(slo_ms=10), 1, CONFIG)
    assert decision.chosen.p_in_time == pytest.approx(0.8) and decision.chosen.predicted_ms > 10
    assert (decision.variant, decision.shed) == ("int8", False)  # its 0.9 quantile is late, but 0.8 ≥ 0.75
    refused = decide(busy, hints(slo_ms=10), 1, replace(CONFIG, admit_p_in_time=0.9))
    assert refused.shed  # the rule until 2026-12-06
    assert refused.refusal(10.0) == (
        f"overloaded: variant 'int8' would answer within the 10 ms SLO with probability 0.800 "
        f"(predicted {refused.predicted_ms:.1f} ms) behind the work ahead of it; retry later or elsewhere"
    )
    assert pinned(busy, "int8", 1, hints=hints(slo_ms=10), config=CONFIG).reason == PINNED  # pinned alike
    assert pinned(busy, "int8", 1, hints=hints(slo_ms=10), config=replace(CONFIG, admit_p_in_time=0.9)).shed
    with pytest.raises(ValueError, match="admit_p_in_time"):
        RouterConfig(admit_p_in_time=0.0)


def test_a_call_that_states_no_slo_is_never_shed() -> None:
    busy = snapshot_of(THREE, busy={"fp32", "int8", "distilled"}, saturated=True)
    decision = decide(busy, hints(slo_ms=0.1, source="model_default"), 1, CONFIG)
    assert (decision.reason, decision.shed) == (BEST_EFFORT, False)
    assert decide(busy, hints(slo_ms=0.1, source="deadline"), 1, CONFIG).shed  # a deadline is stated


def test_past_saturation_an_idle_variant_sheds_while_another_has_work() -> None:
    # The cores are shared: a late call on an idle variant still takes them from the busy one.
    variants = [("int8", 0.99, 4.0, 3_000), ("distilled", 0.70, 2.0, 2_000)]
    hint = hints(slo_ms=3)  # distilled in time at its profile, but its prediction is past it below
    late = ratios_of([1.0, 2.0, 2.0])  # P(distilled) = P(ratio ≤ 1.5) = 1/3; P(int8) = P(ratio ≤ 0.75) = 0
    saturated = snapshot_of(variants, ratios=late, busy={"int8"}, saturated=True)
    decision = decide(saturated, hint, 1, CONFIG)
    assert (decision.variant, decision.reason) == ("distilled", SHED_PREDICTED_LATE)
    assert decide(saturated, hint, 1, RouterConfig.without(["shed_idle"])).reason == BEST_EFFORT
    below = snapshot_of(variants, ratios=late, busy={"int8"}, saturated=False)
    assert decide(below, hint, 1, CONFIG).reason == BEST_EFFORT  # below saturation an idle variant serves


def test_a_pinned_call_is_admitted_by_the_same_rule() -> None:
    busy = snapshot_of(THREE, busy={"fp32"})
    shed = pinned(busy, "fp32", 1, hints=hints(slo_ms=1), config=CONFIG)
    assert (shed.variant, shed.reason, shed.shed) == ("fp32", SHED_PREDICTED_LATE, True)
    assert "chosen as pinned" in shed.verdicts[0].why
    assert pinned(busy, "fp32", 1, hints=hints(slo_ms=10), config=CONFIG).reason == PINNED  # in time
    assert pinned(busy, "fp32", 1).reason == PINNED  # no hints: nothing to admit by
    assert pinned(snapshot_of(THREE), "fp32", 1, hints=hints(slo_ms=1), config=CONFIG).reason == PINNED  # idle


def test_every_candidate_gets_a_verdict_and_exactly_one_is_chosen() -> None:
    decision = decide(snapshot_of(THREE), hints(slo_ms=3), 1, CONFIG)
    assert [v.candidate.variant for v in decision.verdicts] == ["fp32", "int8", "distilled"]
    assert [v.chosen for v in decision.verdicts] == [False, True, False]
    assert decision.verdicts[0].why.startswith("P(within SLO 3.00 ms) = 0.000")
    assert decision.verdicts[2].why.startswith("expected quality 0.9700")


def test_throughput_guard_moves_loose_requests_only() -> None:
    guarded = snapshot_of(THREE, required_rows_s=2_000)
    loose = decide(guarded, hints(slo_ms=DEFAULT_SLO_MS), 1, CONFIG)
    assert (loose.variant, loose.reason) == ("int8", THROUGHPUT_SLO)
    assert decide(guarded, hints(slo_ms=10), 1, CONFIG).variant == "fp32"


def test_throughput_guard_keeps_everything_when_nothing_has_the_capacity() -> None:
    decision = decide(snapshot_of(THREE, required_rows_s=1e9), hints(), 1, CONFIG)
    assert (decision.variant, decision.reason) == ("fp32", WITHIN_SLO)


def test_the_same_snapshot_and_hints_give_the_same_decision() -> None:
    snapshot = snapshot_of(THREE, price=0.005, ratios=ratios_of([1.0] * 9 + [2.0]))
    for slo_ms in (0.4, 1.0, 2.5, 6.0, 12.0):
        first, second = (decide(snapshot, hints(slo_ms=slo_ms), 4, CONFIG) for _ in range(2))
        assert first == second


def test_with_admission_off_the_decision_never_sheds() -> None:
    """SLIMSERVE_SHED_LATE=false reaches the decision (RouterConfig.shed_late_on), so Explain
    never names a refusal the data plane would not make."""
    busy = snapshot_of(THREE, busy={"distilled"})
    assert decide(busy, hints(slo_ms=0.1), 1, CONFIG).shed
    off = decide(busy, hints(slo_ms=0.1), 1, replace(CONFIG, shed_late_on=False))
    assert not off.shed and off.reason == BEST_EFFORT
