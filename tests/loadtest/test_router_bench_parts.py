"""The router bench's pure parts: the trace replay and the scoring of outcomes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from loadtest.bench_router_report import (
    Outcome,
    Segment,
    burst_recovery,
    generator_check,
    server_cpu_check,
    trace_table,
    verdict_table,
)
from loadtest.interference import CoreReading
from loadtest.trace import Trace
from slimserve.simulate.stats import t_975

CSV = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,96,109
2023-11-16 18:15:47.6805900,879,55
2023-11-16 18:15:56.6805900,91,16
"""


def test_the_trace_is_read_in_time_order_and_compressed_to_a_rate(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(CSV)
    trace = Trace.load(path)
    assert trace.offsets_s == pytest.approx([0.0, 1.0, 4.314579, 10.0])  # sorted; 7 fractional digits read
    assert list(trace.context_tokens) == [374, 879, 96, 91]
    assert trace.mean_rate_rps == pytest.approx(0.3)
    times = trace.at_rate(3.0)  # ten times faster: the same gaps, scaled
    assert times == pytest.approx(trace.offsets_s / 10.0)
    window = trace.window(1, 2)
    assert window.offsets_s == pytest.approx([0.0, 3.314579]) and list(window.context_tokens) == [879, 96]
    with pytest.raises(ValueError, match="has 4 arrivals"):
        trace.window(3, 2)
    with pytest.raises(SystemExit, match="not found"):
        Trace.load(tmp_path / "missing.csv")


def _outcome(
    at_s: float, latency_ms: float, correct: bool = True, answered: bool = True, variant: str = "int8"
) -> Outcome:
    return Outcome(at_s, "interactive", 50.0, latency_ms, answered, correct and answered, variant, "OK")


def _segment(policy: str, outcomes: list[Outcome], scale: float = 1.0, run: int = 1) -> Segment:
    return Segment("minilm", run, scale, policy, 10.0, outcomes, 0.0, 60.0, {"interactive": 50.0, "background": 500.0})


def test_effective_accuracy_counts_only_correct_answers_within_the_slo() -> None:
    outcomes = [_outcome(0, 10), _outcome(1, 60), _outcome(2, 10, correct=False), _outcome(3, 0, answered=False)]
    row = _segment("int8", outcomes).row()
    assert row["slo_attainment"] == 0.5  # two of four in time (a wrong answer in time counts)
    assert row["mean_quality"] == pytest.approx(2 / 3)  # right among the answered
    assert row["effective_accuracy"] == 0.25  # right and in time, over all sent
    assert row["failed"] == 1 and row["share_int8"] == 1.0


def test_the_router_s_shares_name_every_variant_it_used_stacked_ones_included() -> None:
    outcomes = [_outcome(i, 10, variant="distilled-int8") for i in range(3)] + [_outcome(3, 10, variant="fp32")]
    rows = [_segment("router", outcomes).row()]
    assert rows[0]["share_distilled-int8"] == 0.75 and rows[0]["share_fp32"] == 0.25 and rows[0]["share_int8"] == 0
    assert "| distilled-int8 75% · fp32 25% |" in trace_table(rows, "minilm")[-1]


def test_the_verdict_compares_the_router_with_the_best_static_policy() -> None:
    good, late = [_outcome(i, 10) for i in range(8)], [_outcome(i, 99) for i in range(2)]
    rows = [
        _segment("int8", good[:6] + late + late[:2]).row(),  # 60 % effective
        _segment("fp32", good[:4] + late * 3).row(),  # 40 %
        _segment("router", good + late).row(),  # 80 %
    ]
    lines = verdict_table(rows, "minilm")
    assert "| 1.00 | int8 (60.0 ± inf) | 80.0 ± inf | +20.0 ± inf points | 40.0% / 20.0% (×0.50) |" in lines
    assert lines[-1] == "| mean of the loads | | | **+20.0 ± inf points** | |"
    # Every segment offered 1 request/s and answered all of it: no headroom shown.
    assert "(×1.00, below 1.2×: the generator may be the limit)" in generator_check(rows, "minilm")


def test_with_routers_only_the_verdict_says_there_is_nothing_pinned_to_compare_with() -> None:
    rows = [_segment(policy, [_outcome(i, 10) for i in range(4)]).row() for policy in ("router", "router-compute-1")]
    assert verdict_table(rows, "minilm") == [
        "No pinned variant ran beside the router, so there is no best static policy to compare it with."
    ]


def test_over_several_runs_the_verdict_pairs_them_and_gives_an_interval() -> None:
    def effective(hits: int) -> list[Outcome]:  # of 10 sent, `hits` right and in time
        return [_outcome(i, 10 if i < hits else 99) for i in range(10)]

    rows = []
    for run, (pinned, routed) in enumerate([(5, 7), (3, 6), (6, 7)], 1):  # router − int8: +2, +3, +1 of 10
        for scale in (1.0, 2.0):
            rows += [_segment(policy, effective(hits), scale, run).row()
                     for policy, hits in (("int8mixed", pinned), ("router", routed))]  # fmt: skip
    lines = verdict_table(rows, "minilm")
    half = t_975(2) * 10.0 / 3**0.5  # sd of (20, 30, 10) points is 10
    assert f"| 1.00 | int8mixed (46.7 ± {t_975(2) * 15.275 / 3**0.5:.1f}) |" in lines[2]
    assert f"+20.0 ± {half:.1f} points" in lines[2]
    assert lines[-1] == f"| mean of the loads | | | **+20.0 ± {half:.1f} points** | |"


def test_burst_recovery_is_the_first_second_from_which_the_level_holds() -> None:
    pre = [_outcome(t, 10) for t in np.arange(0, 20, 0.1)]
    during = [_outcome(t, 99) for t in np.arange(20, 30, 0.1)]
    slow = [_outcome(t, 99 if t < 33 else 10) for t in np.arange(30, 50, 0.1)]
    result = burst_recovery(_segment("router", pre + during + slow, 0.0), 20.0, 30.0)
    assert result["pre_burst"] == 1.0 and result["burst"] == 0.0
    assert result["recovered_after_s"] == 3.0  # from second 33 on, every arrival is in time
    assert result["after_window"] == pytest.approx(17 / 18, abs=0.01)


def test_a_segment_reports_the_servers_cpu_per_answered_call() -> None:
    outcomes = [_outcome(i, 10) for i in range(4)] + [_outcome(4, 0, answered=False)]
    segment = Segment("minilm", 1, 0.5, "int8", 10.0, outcomes, 0.0, 60.0, {"interactive": 50.0, "background": 500.0},
                      CoreReading(0.01, 0.06))  # fmt: skip
    row = segment.row()
    assert row["server_cpu_ms_per_answer"] == pytest.approx(15.0)  # 60 ms of CPU over the 4 answered
    assert row["foreign_core_share"] == 0.01
    assert math.isnan(float(_segment("int8", outcomes).row()["server_cpu_ms_per_answer"]))  # nothing read


def test_the_report_gives_the_servers_cpu_per_call_at_the_lightest_load() -> None:
    rows: list[dict[str, float | str | int]] = [
        {"workload": "minilm", "run": run, "scale": scale, "policy": "int8", "server_cpu_ms_per_answer": ms}
        for run, scale, ms in ((1, 0.5, 10.0), (2, 0.5, 12.0), (1, 2.0, 30.0))
    ]
    assert server_cpu_check(rows, "minilm") == (
        f"Servers' CPU per answered call at 0.5× (mean over runs): int8 11.00 ± {t_975(1) * 1.0:.2f} ms."
    )
    assert "not measured" in server_cpu_check([{**rows[0], "server_cpu_ms_per_answer": math.nan}], "minilm")
