"""Request parameters → routing hints, and the errors a caller sees for bad ones."""

from __future__ import annotations

import pytest

from slimserve.router.errors import InvalidHintError
from slimserve.router.hints import parse_hints


def test_slo_comes_from_the_parameter_then_the_deadline_then_the_model() -> None:
    assert parse_hints({"slo_ms": 5}, 100.0, 20.0).slo_ms == 5.0
    assert parse_hints({"slo_ms": 5.5}, None, 20.0).slo_source == "parameter"
    by_deadline = parse_hints({}, 42.0, 20.0)
    assert (by_deadline.slo_ms, by_deadline.slo_source) == (42.0, "deadline")
    default = parse_hints({"other": "x"}, None, 20.0)
    assert (default.slo_ms, default.slo_source, default.min_quality, default.policy) == (
        20.0,
        "model_default",
        0.0,
        "slo",
    )


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"slo_ms": "fast"}, "'slo_ms' must be a number, got str"),
        ({"slo_ms": True}, "'slo_ms' must be a number, got bool"),
        ({"slo_ms": 0}, "'slo_ms' must be > 0"),
        ({"min_quality": 99}, r"fraction in \[0, 1\], got 99"),
        ({"min_quality": -0.1}, "fraction"),
        ({"policy": "cheapest"}, "one of \\['slo', 'fastest', 'most_accurate'\\]"),
    ],
)
def test_bad_hints_are_refused_with_the_parameter_named(parameters: dict, message: str) -> None:
    with pytest.raises(InvalidHintError, match=message):
        parse_hints(parameters, None, 20.0)
