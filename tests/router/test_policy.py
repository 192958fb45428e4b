"""The routing policy as a pure function: candidates and hints in, a decision out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from router.errors import QualityUnreachableError
from router.hints import RequestHints
from router.policy import (
    BEST_EFFORT,
    CPU_BUDGET,
    FASTEST,
    MOST_ACCURATE,
    THROUGHPUT_SLO,
    WITHIN_SLO,
    Candidate,
    Decision,
    choose,
)

DEFAULT_SLO_MS = 20.0


def decide(
    candidates: list[Candidate], hints: RequestHints, default_slo_ms: float, required_rows_s: float | None = None
) -> Decision:
    """`choose`, with each candidate certain to make the SLO exactly when predicted within it
    (what the router assumes before it has learned its latency distribution)."""
    timed = [replace(c, p_in_time=1.0 if c.predicted_ms <= hints.slo_ms else 0.0) for c in candidates]
    return choose(timed, hints, default_slo_ms, required_rows_s)


def candidates(fp32_ms: float = 5.0, int8_ms: float = 2.0, distilled_ms: float = 0.5) -> list[Candidate]:
    return [
        Candidate("fp32", "cpu", 1.00, fp32_ms, capacity_rows_s=1_000),
        Candidate("int8", "cpu", 0.99, int8_ms, capacity_rows_s=3_000),
        Candidate("distilled", "cpu", 0.97, distilled_ms, capacity_rows_s=20_000),
    ]


def hints(slo_ms: float = DEFAULT_SLO_MS, min_quality: float = 0.0, policy: str = "slo") -> RequestHints:
    return RequestHints(slo_ms, "parameter", min_quality, policy)  # type: ignore[arg-type]


def test_most_accurate_variant_that_meets_the_slo() -> None:
    assert decide(candidates(), hints(slo_ms=10), DEFAULT_SLO_MS).variant == "fp32"
    decision = decide(candidates(), hints(slo_ms=3), DEFAULT_SLO_MS)
    assert (decision.variant, decision.reason, decision.predicted_ms) == ("int8", WITHIN_SLO, 2.0)
    assert decide(candidates(), hints(slo_ms=1), DEFAULT_SLO_MS).variant == "distilled"


def test_no_variant_in_time_is_best_effort_with_the_fastest() -> None:
    decision = decide(candidates(), hints(slo_ms=0.1), DEFAULT_SLO_MS)
    assert (decision.variant, decision.reason) == ("distilled", BEST_EFFORT)


def test_min_quality_is_never_violated_even_when_late() -> None:
    decision = decide(candidates(), hints(slo_ms=0.1, min_quality=0.99), DEFAULT_SLO_MS)
    assert (decision.variant, decision.reason) == ("int8", BEST_EFFORT)
    rejected = {v.candidate.variant: v.why for v in decision.verdicts}
    assert "min_quality" in rejected["distilled"]


def test_unreachable_quality_is_an_error_naming_the_best() -> None:
    with pytest.raises(QualityUnreachableError, match=r"min_quality 0\.9990; the best is 'int8' at 0\.9900"):
        decide(candidates()[1:], hints(min_quality=0.999), DEFAULT_SLO_MS)


def test_fastest_and_most_accurate_policies() -> None:
    assert decide(candidates(), hints(policy="fastest"), DEFAULT_SLO_MS).reason == FASTEST
    assert decide(candidates(), hints(policy="fastest"), DEFAULT_SLO_MS).variant == "distilled"
    decision = decide(candidates(), hints(slo_ms=0.1, policy="most_accurate"), DEFAULT_SLO_MS)
    assert (decision.variant, decision.reason) == ("fp32", MOST_ACCURATE)


def test_near_ties_go_to_the_more_accurate_or_when_busy_to_the_roomier_variant() -> None:
    tied = [
        Candidate("fp32", "cpu", 1.0, 1.5, 1_000, p_in_time=0.997, cost_per_row_ms=1.0),
        Candidate("int8", "cpu", 0.998, 1.0, 3_000, p_in_time=1.0, cost_per_row_ms=0.5),
    ]
    quiet = choose(tied, hints(), DEFAULT_SLO_MS, tie=0.003)
    assert quiet.variant == "fp32"  # P cannot be told apart at this resolution: keep quality
    assert quiet.verdicts[1].why == "within 0.0030 of the best; 'fp32' is at least as accurate"
    busy = choose(tied, hints(), DEFAULT_SLO_MS, tie=0.003, price=1e-4)  # CPU has a price, however small
    assert busy.variant == "int8"  # though fp32 is as good: traffic consolidates on capacity
    assert busy.verdicts[0].why == "within 0.0030 of the best; 'int8' has more capacity"


def test_a_small_quality_gain_is_not_worth_a_deadline_risk() -> None:
    risky = [
        Candidate("fp32", "cpu", 1.000, 8.0, 1_000, p_in_time=0.99),  # 1 % risk for +0.2 points
        Candidate("int8", "cpu", 0.998, 3.0, 3_000, p_in_time=1.0),
    ]
    decision = choose(risky, hints(slo_ms=10), DEFAULT_SLO_MS)
    assert (decision.variant, decision.reason) == ("int8", WITHIN_SLO)
    assert decision.verdicts[0].why == "expected quality 0.9900 (P(within SLO) 0.990) < 0.9980 - 0.0005"
    safe = [replace(risky[0], p_in_time=0.9995), risky[1]]
    assert choose(safe, hints(slo_ms=10), DEFAULT_SLO_MS).variant == "fp32"


def test_a_cpu_price_moves_requests_to_variants_that_buy_more_quality_per_millisecond() -> None:
    costly = [
        Candidate("fp32", "cpu", 1.000, 3.0, 1_000, p_in_time=1.0, cost_per_row_ms=0.6),
        Candidate("int8", "cpu", 0.998, 2.0, 3_000, p_in_time=1.0, cost_per_row_ms=0.25),
        Candidate("distilled", "cpu", 0.995, 1.0, 9_000, p_in_time=1.0, cost_per_row_ms=0.1),
    ]
    assert choose(costly, hints(slo_ms=10), DEFAULT_SLO_MS).variant == "fp32"  # free CPU: the best
    # fp32 → int8 buys 0.002 for 0.35 ms/row (0.0057 per ms); int8 → distilled 0.003 for 0.15 (0.02 per ms).
    decision = choose(costly, hints(slo_ms=10), DEFAULT_SLO_MS, price=0.01)
    assert (decision.variant, decision.reason) == ("int8", CPU_BUDGET)
    assert decision.verdicts[0].why == "expected quality 1.0000 (P(within SLO) 1.000) less CPU 0.0060 < 0.9955 - 0.0005"
    assert choose(costly, hints(slo_ms=10), DEFAULT_SLO_MS, price=0.03).variant == "distilled"
    # The price never overrides min_quality or the deadline.
    assert choose(costly, hints(slo_ms=10, min_quality=0.999), DEFAULT_SLO_MS, price=1.0).variant == "fp32"
    late = [replace(costly[0], p_in_time=0.0), costly[1], replace(costly[2], p_in_time=0.3)]
    assert choose(late, hints(slo_ms=10), DEFAULT_SLO_MS, price=1.0).variant == "int8"


def test_unlikely_to_make_it_anywhere_is_best_effort_with_the_fastest() -> None:
    hopeless = [
        Candidate("fp32", "cpu", 1.0, 30.0, 1_000, p_in_time=0.2),
        Candidate("int8", "cpu", 0.99, 12.0, 3_000, p_in_time=0.45),
    ]
    decision = choose(hopeless, hints(slo_ms=10), DEFAULT_SLO_MS)
    assert (decision.variant, decision.reason) == ("int8", BEST_EFFORT)
    assert decision.verdicts[0].why.startswith("P(within SLO 10.00 ms) = 0.200")


def test_every_candidate_gets_a_verdict_and_exactly_one_is_chosen() -> None:
    decision = decide(candidates(), hints(slo_ms=3), DEFAULT_SLO_MS)
    assert [v.candidate.variant for v in decision.verdicts] == ["fp32", "int8", "distilled"]
    assert [v.chosen for v in decision.verdicts] == [False, True, False]
    assert decision.verdicts[0].why.startswith("P(within SLO 3.00 ms) = 0.000")
    assert decision.verdicts[2].why.startswith("expected quality 0.9700")


def test_throughput_guard_moves_loose_requests_only() -> None:
    loose = decide(candidates(), hints(slo_ms=DEFAULT_SLO_MS), DEFAULT_SLO_MS, required_rows_s=2_000)
    assert (loose.variant, loose.reason) == ("int8", THROUGHPUT_SLO)
    tight = decide(candidates(), hints(slo_ms=10), DEFAULT_SLO_MS, required_rows_s=2_000)
    assert tight.variant == "fp32"


def test_throughput_guard_keeps_everything_when_nothing_has_the_capacity() -> None:
    decision = decide(candidates(), hints(), DEFAULT_SLO_MS, required_rows_s=1e9)
    assert (decision.variant, decision.reason) == ("fp32", WITHIN_SLO)
