"""The routing policy as a pure function: candidates and hints in, a decision out."""

from __future__ import annotations

import pytest

from router.errors import QualityUnreachableError
from router.hints import RequestHints
from router.policy import BEST_EFFORT, FASTEST, MOST_ACCURATE, THROUGHPUT_SLO, WITHIN_SLO, Candidate, choose

DEFAULT_SLO_MS = 20.0


def candidates(fp32_ms: float = 5.0, int8_ms: float = 2.0, distilled_ms: float = 0.5) -> list[Candidate]:
    return [
        Candidate("fp32", "cpu", 1.00, fp32_ms, capacity_rows_s=1_000),
        Candidate("int8", "cpu", 0.99, int8_ms, capacity_rows_s=3_000),
        Candidate("distilled", "cpu", 0.97, distilled_ms, capacity_rows_s=20_000),
    ]


def hints(slo_ms: float = DEFAULT_SLO_MS, min_quality: float = 0.0, policy: str = "slo") -> RequestHints:
    return RequestHints(slo_ms, "parameter", min_quality, policy)  # type: ignore[arg-type]


def test_most_accurate_variant_that_meets_the_slo() -> None:
    assert choose(candidates(), hints(slo_ms=10), DEFAULT_SLO_MS).variant == "fp32"
    decision = choose(candidates(), hints(slo_ms=3), DEFAULT_SLO_MS)
    assert (decision.variant, decision.reason, decision.predicted_ms) == ("int8", WITHIN_SLO, 2.0)
    assert choose(candidates(), hints(slo_ms=1), DEFAULT_SLO_MS).variant == "distilled"


def test_no_variant_in_time_is_best_effort_with_the_fastest() -> None:
    decision = choose(candidates(), hints(slo_ms=0.1), DEFAULT_SLO_MS)
    assert (decision.variant, decision.reason) == ("distilled", BEST_EFFORT)


def test_min_quality_is_never_violated_even_when_late() -> None:
    decision = choose(candidates(), hints(slo_ms=0.1, min_quality=0.99), DEFAULT_SLO_MS)
    assert (decision.variant, decision.reason) == ("int8", BEST_EFFORT)
    rejected = {v.candidate.variant: v.why for v in decision.verdicts}
    assert "min_quality" in rejected["distilled"]


def test_unreachable_quality_is_an_error_naming_the_best() -> None:
    with pytest.raises(QualityUnreachableError, match=r"min_quality 0\.9990; the best is 'int8' at 0\.9900"):
        choose(candidates()[1:], hints(min_quality=0.999), DEFAULT_SLO_MS)


def test_fastest_and_most_accurate_policies() -> None:
    assert choose(candidates(), hints(policy="fastest"), DEFAULT_SLO_MS).reason == FASTEST
    assert choose(candidates(), hints(policy="fastest"), DEFAULT_SLO_MS).variant == "distilled"
    decision = choose(candidates(), hints(slo_ms=0.1, policy="most_accurate"), DEFAULT_SLO_MS)
    assert (decision.variant, decision.reason) == ("fp32", MOST_ACCURATE)


def test_equal_quality_prefers_the_faster() -> None:
    tied = [Candidate("int8", "cpu", 0.99, 2.0, 1), Candidate("pruned", "cpu", 0.99, 1.5, 1)]
    decision = choose(tied, hints(), DEFAULT_SLO_MS)
    assert decision.variant == "pruned"
    assert decision.verdicts[0].why == "slower than 'pruned'"


def test_every_candidate_gets_a_verdict_and_exactly_one_is_chosen() -> None:
    decision = choose(candidates(), hints(slo_ms=3), DEFAULT_SLO_MS)
    assert [v.candidate.variant for v in decision.verdicts] == ["fp32", "int8", "distilled"]
    assert [v.chosen for v in decision.verdicts] == [False, True, False]
    assert "> SLO" in decision.verdicts[0].why
    assert decision.verdicts[2].why == "less accurate than 'int8'"


def test_throughput_guard_moves_loose_requests_only() -> None:
    loose = choose(candidates(), hints(slo_ms=DEFAULT_SLO_MS), DEFAULT_SLO_MS, required_rows_s=2_000)
    assert (loose.variant, loose.reason) == ("int8", THROUGHPUT_SLO)
    tight = choose(candidates(), hints(slo_ms=10), DEFAULT_SLO_MS, required_rows_s=2_000)
    assert tight.variant == "fp32"


def test_throughput_guard_keeps_everything_when_nothing_has_the_capacity() -> None:
    decision = choose(candidates(), hints(), DEFAULT_SLO_MS, required_rows_s=1e9)
    assert (decision.variant, decision.reason) == ("fp32", WITHIN_SLO)
