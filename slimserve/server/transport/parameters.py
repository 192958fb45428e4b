"""Reading Open Inference Protocol parameters, from whichever generated module made them.

Only `WhichOneof` and attribute access are used, so the same functions read our messages
and tritonclient's (wire-identical; the two cannot be imported into one process).
"""

from __future__ import annotations

from typing import Any


def parameter_value(parameter: Any) -> bool | int | float | str:
    """The value an InferParameter holds ('' if none is set)."""
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else ""


def stated_slo_ms(request: Any, remaining_s: float | None) -> float | None:
    """The SLO the caller of a ModelInferRequest stated — `slo_ms` if it is a positive
    number, else the time left to its deadline — read before decoding; None if it stated
    neither. (A malformed `slo_ms` is left for the router to refuse with a clear message.)"""
    if "slo_ms" in request.parameters:
        value = parameter_value(request.parameters["slo_ms"])
        valid = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        return float(value) if valid else None
    return None if remaining_s is None else remaining_s * 1e3
