"""What a request asks of the router: latency budget, minimum quality, policy.

Contract (also in the README and in protos/inference.proto):
- `slo_ms`: latency budget in milliseconds (int or double > 0). If absent, the remaining
  gRPC deadline; if neither, the model's `default_slo_ms`.
- `min_quality`: a fraction in [0, 1] in the model's quality metric; variants below it are
  never chosen.
- `policy`: `slo` (default: the most accurate variant predicted to meet the SLO),
  `fastest`, or `most_accurate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from slimserve.router.errors import InvalidHintError

Policy = Literal["slo", "fastest", "most_accurate"]
SloSource = Literal["parameter", "deadline", "model_default"]
POLICIES: tuple[str, ...] = get_args(Policy)
HINT_NAMES = ("slo_ms", "min_quality", "policy")


@dataclass(frozen=True)
class RequestHints:
    """The routing-relevant part of a request, validated."""

    slo_ms: float
    slo_source: SloSource
    min_quality: float = 0.0
    policy: Policy = "slo"


def _number(name: str, value: object) -> float:
    # bool is an int in Python but never a sensible latency or quality.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidHintError(f"parameter '{name}' must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def parse_hints(
    parameters: Mapping[str, bool | int | float | str],
    remaining_deadline_ms: float | None,
    default_slo_ms: float,
) -> RequestHints:
    """Validate the routing parameters of a request; unknown parameters are left alone."""
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
    return RequestHints(slo_ms, slo_source, min_quality, policy)  # type: ignore[arg-type]
