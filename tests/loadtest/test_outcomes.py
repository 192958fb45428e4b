"""The Locust users' retry policy (gRPC's, for UNAVAILABLE) and their outcome rules."""

from __future__ import annotations

import random

from loadtest.outcomes import RetryPolicy, run_failure, shed_name

DRAWS = 2000  # per retry: enough that full jitter's draws reach close to each ceiling


def test_pauses_are_full_jitter_under_a_ceiling_that_doubles_up_to_its_maximum() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.05, max_backoff_s=0.15, backoff_multiplier=2.0)
    rng = random.Random(7)
    for retry, ceiling_s in ((1, 0.05), (2, 0.1), (3, 0.15), (4, 0.15)):
        pauses = [policy.pause_s(retry, None, rng) for _ in range(DRAWS)]
        assert all(pause is not None and 0.0 <= pause <= ceiling_s for pause in pauses), retry
        assert min(p for p in pauses if p is not None) < 0.05 * ceiling_s  # from zero, not from a floor
        assert max(p for p in pauses if p is not None) > 0.95 * ceiling_s


def test_no_retry_past_the_attempts_or_the_deadline() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=1.0, backoff_multiplier=2.0)
    rng = random.Random(7)
    assert policy.pause_s(2, None, rng) is not None  # the third attempt is allowed
    assert policy.pause_s(3, None, rng) is None  # a fourth is not
    assert policy.pause_s(1, 0.0, rng) is None  # no time left before the deadline
    pauses = [policy.pause_s(2, 0.05, rng) for _ in range(DRAWS)]  # ceiling 0.1 s, 0.05 s left
    assert all(pause is None or pause < 0.05 for pause in pauses)
    assert None in pauses and any(pause is not None for pause in pauses)


def test_shed_calls_are_named_with_what_was_asked_and_the_slo() -> None:
    assert shed_name("digits", "", 15.0) == "digits/routed slo_ms=15"
    assert shed_name("minilm", "int8", 0.5) == "minilm/int8 slo_ms=0.5"
    assert shed_name("digits", "", None) == "digits/routed slo_ms=default"


def test_shed_calls_never_fail_a_run_that_answered_something() -> None:
    assert run_failure(answered=1, shed=10_000, failed=0) is None
    reason = run_failure(answered=0, shed=12, failed=0)
    assert reason is not None and "no call was answered (12 shed, 0 failed)" in reason
    assert run_failure(answered=0, shed=0, failed=0) is not None
