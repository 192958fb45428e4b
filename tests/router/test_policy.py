"""The routing policy as a pure function: a snapshot and hints in, a decision out."""

from __future__ import annotations

import pytest

from slimserve.router.config import RouterConfig
from slimserve.router.errors import QualityUnreachableError
from slimserve.router.hints import RequestHints
from slimserve.router.policy import BEST_EFFORT, CPU_BUDGET, FASTEST, MOST_ACCURATE, THROUGHPUT_SLO, WITHIN_SLO, decide
from tests.router.fakes import ratios_of, snapshot_of

CONFIG = RouterConfig()
DEFAULT_SLO_MS = 20.0
# (name, quality, ms, capacity rows/s)
THREE = [("fp32", 1.00, 5.0, 1_000), ("int8", 0.99, 2.0, 3_000), ("distilled", 0.97, 0.5, 20_000)]


def hints(slo_ms: float = DEFAULT_SLO_MS, min_quality: float = 0.0, policy: str = "slo") -> RequestHints:
    return RequestHints(slo_ms, "parameter", min_quality, policy)  # type: ignore[arg-type]


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


def test_unlikely_to_make_it_anywhere_is_best_effort_with_the_fastest() -> None:
    hopeless = snapshot_of([("fp32", 1.0, 6.0, 1_000), ("int8", 0.99, 4.0, 3_000)], ratios=ratios_of([1.0, 3.0, 3.0]))
    decision = decide(hopeless, hints(slo_ms=10), 1, CONFIG)  # two in three take 3×: both late
    assert (decision.variant, decision.reason) == ("int8", BEST_EFFORT)
    assert decision.verdicts[0].why.startswith("P(within SLO 10.00 ms) = 0.333")


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
