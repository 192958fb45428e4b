"""The variant table and its JSON (`slimserve variants show`) say which variants the build left
out and why (model.yaml's `skipped_variants`), read back from a repository the CLI built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimserve.cli import main
from slimserve.repository.format import load_model
from slimserve.variants.report import render_json, render_table
from tests.variants import onnx_zoo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mlp` built without calibration rows: fp32 alone, int8, fp16 and int4 skipped with why."""
    folder = tmp_path_factory.mktemp("report")
    graph, _ = onnx_zoo.mlp(folder)
    assert main(["build", "--repository", str(folder / "repo"), "--onnx", str(graph), "--name", "mlp"]) == 0
    return folder / "repo"


def test_the_table_ends_with_the_skipped_variants_and_why(repo: Path) -> None:
    entry = load_model(repo / "mlp")
    reasons = entry.config.skipped_variants or {}
    assert set(reasons) == {"int8", "fp16", "int4"}
    lines = render_table(entry).splitlines()
    assert len(set(reasons.values())) == 1  # one reason (no calibration rows), said once
    assert lines[-1] == f"skipped: int8, fp16, int4 ({reasons['int8']})"
    assert [line.split()[0] for line in lines[3:-1]] == ["fp32"]  # no table row for a variant never built


def test_variants_show_json_has_a_row_for_each_skipped_variant(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["variants", "show", str(repo), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["mlp"]
    reasons = load_model(repo / "mlp").config.skipped_variants or {}
    assert [(r["variant"], r["built"], r["skipped"]) for r in rows] == [
        ("fp32", True, None), *((name, False, reason) for name, reason in reasons.items())
    ]  # fmt: skip
    assert all(set(row) == set(rows[0]) for row in rows)  # one schema: a skipped row's measurements are None
    assert all(row["params"] is None and not row["served"] for row in rows[1:])


def test_each_reason_is_said_once_with_the_variants_it_covers(repo: Path) -> None:
    entry = load_model(repo / "mlp")
    entry.config.skipped_variants = {"int8": "no MatMul", "fp16": "slower", "int4": "no MatMul"}
    assert render_table(entry).splitlines()[-1] == "skipped: int8, int4 (no MatMul); fp16 (slower)"


def test_a_model_that_skipped_nothing_has_no_skipped_line(repo: Path) -> None:
    entry = load_model(repo / "mlp")
    entry.config.skipped_variants = None  # as a built-in model's model.yaml (it builds every variant)
    assert "skipped:" not in render_table(entry)
    assert [row["variant"] for row in json.loads(render_json({"mlp": entry}))["mlp"]] == ["fp32"]
