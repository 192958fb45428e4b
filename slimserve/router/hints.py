"""What a request asks of the router and its queue: latency budget, minimum quality, policy,
priority and timeout.

Contract (also in the README and in protos/inference.proto):
- `slo_ms`: latency budget in milliseconds (int or double > 0). If absent, the remaining
  deadline — the earlier of the gRPC deadline and the `timeout` — if neither, the model's
  `default_slo_ms`.
- `min_quality`: a fraction in [0, 1] in the model's quality metric; variants below it are
  never chosen.
- `policy`: `slo` (default: the most accurate variant predicted to meet the SLO),
  `fastest`, or `most_accurate`.
- `priority` (Triton's; tritonclient's `infer(priority=N)`): an integer, 0 for the model's
  `default_priority_level`, else a level in 1..`priority_levels` of `model.yaml` (1 is the
  highest). A model without priority levels takes only 0.
- `timeout` (Triton's; tritonclient's `infer(timeout=N)`, not its gRPC `client_timeout`): an
  integer number of microseconds from the request's arrival, at most MAX_TIMEOUT_US; 0 means
  none, as in Triton. It tightens the request's deadline: the SLO a request without `slo_ms`
  gets, and the time after which a queued request is answered without being computed.

Bad values are refused with InvalidHintError (INVALID_ARGUMENT) naming the parameter, all
here: one rule for every front end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from slimserve.router.errors import InvalidHintError

Policy = Literal["slo", "fastest", "most_accurate"]
SloSource = Literal["parameter", "deadline", "model_default"]
POLICIES: tuple[str, ...] = get_args(Policy)
HINT_NAMES = ("slo_ms", "min_quality", "policy", "priority", "timeout")
# A request may wait a day at most: a larger `timeout` is a unit mistake (nanoseconds for
# microseconds), not a wish, and refusing it says so.
MAX_TIMEOUT_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class RequestHints:
    """The routing- and queue-relevant part of a request, validated."""

    slo_ms: float
    slo_source: SloSource
    min_quality: float = 0.0
    policy: Policy = "slo"
    priority: int = 0  # the queue level, 1 highest (the model's default resolved); 0: the model has none
    timeout_ms: float | None = None  # the `timeout` parameter, from arrival; None: not stated (or 0)


def _number(name: str, value: object) -> float:
    # bool is an int in Python but never a sensible latency or quality.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidHintError(f"parameter '{name}' must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _integer(name: str, value: object) -> int:
    # Triton sends these as int64 or uint64; a double, a string or a bool is a caller's mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidHintError(f"parameter '{name}' must be an integer, got {type(value).__name__} {value!r}")
    return value


def _timeout_ms(value: object) -> float | None:
    """The `timeout` parameter (microseconds) in milliseconds; None for 0, which is none."""
    timeout_us = _integer("timeout", value)
    if not 0 <= timeout_us <= MAX_TIMEOUT_US:
        raise InvalidHintError(
            f"parameter 'timeout' must be microseconds in [0, {MAX_TIMEOUT_US}] (0: none), got {timeout_us}"
        )
    return timeout_us / 1e3 if timeout_us else None


def _priority(value: object, levels: int, default_level: int) -> int:
    """The level a request queues at: `value` if given, else the model's default."""
    level = _integer("priority", value)
    if levels == 0 and level != 0:
        # Triton serves any priority on such a model at its one level; refused here, so that a
        # caller who counts on going first learns that the model is not configured for it.
        raise InvalidHintError(
            f"parameter 'priority' must be 0: this model has no priority levels (model.yaml "
            f"priority_levels), got {level}"
        )
    if not 0 <= level <= levels:
        raise InvalidHintError(
            f"parameter 'priority' must be 0 (the model's default, {default_level}) or a level in "
            f"[1, {levels}] (1 is the highest), got {level}"
        )
    return level or default_level


def parse_hints(
    parameters: Mapping[str, bool | int | float | str],
    remaining_deadline_ms: float | None,
    default_slo_ms: float,
    priority_levels: int = 0,
    default_priority_level: int = 0,
) -> RequestHints:
    """Validate the routing and queueing parameters of a request (module docstring); unknown
    parameters are left alone. `remaining_deadline_ms` is what the gRPC deadline leaves."""
    timeout_ms = _timeout_ms(parameters["timeout"]) if "timeout" in parameters else None
    if timeout_ms is not None and (remaining_deadline_ms is None or timeout_ms < remaining_deadline_ms):
        remaining_deadline_ms = timeout_ms  # the deadline the rest of the rule knows, tightened
    slo_source: SloSource
    if "slo_ms" in parameters:
        slo_ms, slo_source = _number("slo_ms", parameters["slo_ms"]), "parameter"
        if not slo_ms > 0:
            raise InvalidHintError(f"parameter 'slo_ms' must be > 0, got {slo_ms:g}")
    elif remaining_deadline_ms is not None:
        slo_ms, slo_source = max(remaining_deadline_ms, 0.0), "deadline"
    else:
        slo_ms, slo_source = default_slo_ms, "model_default"
    min_quality = _number("min_quality", parameters.get("min_quality", 0.0))
    if not 0.0 <= min_quality <= 1.0:
        raise InvalidHintError(f"parameter 'min_quality' must be a fraction in [0, 1], got {min_quality:g}")
    policy = parameters.get("policy", "slo")
    if policy not in POLICIES:
        raise InvalidHintError(f"parameter 'policy' must be one of {list(POLICIES)}, got {policy!r}")
    priority = _priority(parameters.get("priority", 0), priority_levels, default_priority_level)
    return RequestHints(slo_ms, slo_source, min_quality, policy, priority, timeout_ms)  # type: ignore[arg-type]
