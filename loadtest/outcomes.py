"""What a Locust call's outcome is, and how a refused call is retried: gRPC's retry policy.

Every call the Locust users make ends in one of three outcomes:

- **answered**: the server sent an answer (possibly after retries);
- **shed**: the server refused it UNAVAILABLE on every attempt. That is the server's
  designed answer to more work than it can do in time (a call predicted to miss its SLO, a
  full queue), to a drain or to a variant that stopped — "not now; retry later or
  elsewhere" (README: Failure modes). A load test reports it, with the SLO the call stated,
  and does not count it a failure: refusing is how the server keeps its SLO under load;
- **failed**: any other status (INTERNAL, INVALID_ARGUMENT, NOT_FOUND, DEADLINE_EXCEEDED — an
  attempt the server did not answer within the call's deadline — …). A failure fails the run.

A run also fails when no call at all was answered (`run_failure`): gRPC reports a server it
cannot reach UNAVAILABLE as well, and a load test of a server that is down, or that refused
everything, measured nothing.

The retry is gRPC's own policy for UNAVAILABLE (gRFC A6, the `retryPolicy` of a service
config): at most `max_attempts` attempts; before retry n a pause drawn uniformly from
[0, min(initial_backoff_s × backoff_multiplier^(n−1), max_backoff_s)] — full jitter, so that
callers refused together do not come back together; and never past the call's deadline:
a retry whose pause would use up the time left is not made, and each attempt gets only the
time that is left. The locustfile runs it in its interceptor, so that a call's reported time
includes its retries and pauses, as an application using gRPC's retries would see it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
ANSWERED_TYPE = "grpc"  # Locust request type of answered and failed calls
SHED_TYPE = "shed"  # Locust request type of calls refused UNAVAILABLE on every attempt


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retry policy for a refused call (module docstring); the fields are the
    service config's `retryPolicy` fields, in seconds."""

    max_attempts: int = 4  # the first attempt and up to three retries (gRPC allows at most 5)
    initial_backoff_s: float = 0.05  # the ceiling of the first pause
    max_backoff_s: float = 0.5  # no pause's ceiling grows past this
    backoff_multiplier: float = 2.0  # each retry's ceiling is this many times the last one's

    def pause_s(self, retry: int, remaining_s: float | None, rng: random.Random) -> float | None:
        """The pause before retry number `retry` (1: the first retry, after the first
        attempt), or None when no retry is left: `max_attempts` attempts made, or the pause
        would use up the `remaining_s` seconds left before the call's deadline (None: the
        call has no deadline)."""
        if retry >= self.max_attempts:
            return None
        ceiling_s = min(self.initial_backoff_s * self.backoff_multiplier ** (retry - 1), self.max_backoff_s)
        pause_s = rng.uniform(0.0, ceiling_s)
        if remaining_s is not None and pause_s >= remaining_s:
            return None
        return pause_s


RETRY_POLICY = RetryPolicy()


def shed_name(model: str, variant: str, slo_ms: float | None) -> str:
    """The Locust name of a shed call: what was asked and the SLO it stated (a refusal is
    relative to the SLO), e.g. `digits/routed slo_ms=15`; `slo_ms=default` when it stated none."""
    return f"{model}/{variant or 'routed'} slo_ms={'default' if slo_ms is None else f'{slo_ms:g}'}"


def run_failure(answered: int, shed: int, failed: int) -> str | None:
    """Why a run with these call counts fails on top of Locust's own rule (a failed call,
    or an exception in a user, fails the run), or None. Shed calls alone never fail it."""
    if answered == 0:
        return (
            f"no call was answered ({shed} shed, {failed} failed): the server is down, unreachable "
            "or refused everything, and the run measured nothing"
        )
    return None
