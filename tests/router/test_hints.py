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


def test_timeout_tightens_the_deadline_the_slo_comes_from() -> None:
    """Triton's `timeout` (µs) is a deadline like gRPC's: the earlier one gives the SLO of a
    request that states none; a stated `slo_ms` still wins; 0 is no timeout, as in Triton."""
    alone = parse_hints({"timeout": 5_000}, None, 20.0)
    assert (alone.slo_ms, alone.slo_source, alone.timeout_ms) == (5.0, "deadline", 5.0)
    earlier = parse_hints({"timeout": 5_000}, 100.0, 20.0)
    assert (earlier.slo_ms, earlier.timeout_ms) == (5.0, 5.0)
    later = parse_hints({"timeout": 500_000}, 42.0, 20.0)
    assert (later.slo_ms, later.slo_source, later.timeout_ms) == (42.0, "deadline", 500.0)
    stated = parse_hints({"timeout": 5_000, "slo_ms": 30}, None, 20.0)
    assert (stated.slo_ms, stated.slo_source, stated.timeout_ms) == (30.0, "parameter", 5.0)
    none = parse_hints({"timeout": 0}, None, 20.0)
    assert (none.slo_ms, none.slo_source, none.timeout_ms) == (20.0, "model_default", None)


def test_priority_is_a_level_of_the_model_and_zero_is_its_default() -> None:
    levels = {"priority_levels": 3, "default_priority_level": 2}
    assert parse_hints({}, None, 20.0, **levels).priority == 2
    assert parse_hints({"priority": 0}, None, 20.0, **levels).priority == 2
    assert [parse_hints({"priority": p}, None, 20.0, **levels).priority for p in (1, 2, 3)] == [1, 2, 3]
    assert parse_hints({"priority": 0}, None, 20.0).priority == 0  # no levels: one queue


@pytest.mark.parametrize(
    ("parameters", "levels", "message"),
    [
        ({"timeout": -1}, 0, r"'timeout' must be microseconds in \[0, 86400000000\] \(0: none\), got -1"),
        ({"timeout": 86_400_000_001}, 0, "'timeout' must be microseconds in"),
        ({"timeout": 2**64 - 1}, 0, "'timeout' must be microseconds in"),
        ({"timeout": 1.5}, 0, "'timeout' must be an integer, got float 1.5"),
        ({"timeout": "1000"}, 0, "'timeout' must be an integer, got str"),
        ({"timeout": True}, 0, "'timeout' must be an integer, got bool"),
        ({"priority": 4}, 3, r"'priority' must be 0 \(the model's default, 2\) or a level in \[1, 3\]"),
        ({"priority": 2**64 - 1}, 3, r"'priority' must be 0 .* got 18446744073709551615"),
        ({"priority": -1}, 3, r"'priority' must be 0 .* got -1"),
        ({"priority": 1.0}, 3, "'priority' must be an integer, got float"),
        ({"priority": False}, 3, "'priority' must be an integer, got bool"),
        ({"priority": 1}, 0, "'priority' must be 0: this model has no priority levels"),
    ],
)
def test_bad_priority_and_timeout_are_refused_with_the_parameter_named(
    parameters: dict, levels: int, message: str
) -> None:
    with pytest.raises(InvalidHintError, match=message):
        parse_hints(parameters, None, 20.0, levels, 2 if levels else 0)
