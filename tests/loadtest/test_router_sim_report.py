"""The simulator bench's ablation report: groups by variant set, workers and load; pairs by window."""

from __future__ import annotations

import csv
from pathlib import Path

from loadtest.bench_router_sim import SETS, ablation_report, set_name

FIELDS = ["served", "workers", "scale", "window", "policy", "effective_accuracy", "slo_attainment", "refused"]


def _write(path: Path, rows: list[dict[str, object]], fields: list[str] = FIELDS) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: r[k] for k in fields} for r in rows)
    return path


def _row(served: str, workers: int, window: int, policy: str, accuracy: float) -> dict[str, object]:
    return {"served": served, "workers": workers, "scale": 1.0, "window": window, "policy": policy,
            "effective_accuracy": accuracy, "slo_attainment": 1.0, "refused": 0.0}  # fmt: skip


def test_sets_are_named_and_the_report_keeps_workers_apart(tmp_path: Path) -> None:
    assert set_name(SETS["served"]) == "served" and "int8mixed" in SETS["served"] and "int4" not in SETS["served"]
    rows = [
        _row("served", w, i, p, a)
        for w, shift in ((1, 0.0), (2, 0.1))
        for i in range(3)
        for p, a in (("int8", 0.80 + shift), ("fp32", 0.70), ("router", 0.85 + shift + i / 100))
    ]
    lines = ablation_report([_write(tmp_path / "w.csv", rows)], "router")
    headers = [line for line in lines if line.startswith("###")]
    assert [("1 worker(s)" in h, "2 worker(s)" in h, "best static: int8" in h) for h in headers] == [
        (True, False, True),
        (False, True, True),
    ]
    router_lines = [line for line in lines if line.startswith("| router |")]
    assert all("+6.0" in line for line in router_lines)  # paired against int8 over the same 3 windows


def test_a_csv_from_before_the_workers_column_reads_as_one_worker(tmp_path: Path) -> None:
    old = [f for f in FIELDS if f != "workers"]
    rows = [_row("7", 1, i, p, a) for i in range(2) for p, a in (("int8", 0.8), ("router", 0.7))]
    lines = ablation_report([_write(tmp_path / "old.csv", rows, old)], "router")
    assert lines[0].startswith("### set 7 (fp32, int8, pruned") and "1 worker(s)" in lines[0]
