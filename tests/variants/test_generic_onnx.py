"""`slimserve build --onnx` on any graph (task generic): the zoo of tests.variants.onnx_zoo,
built through the command line a user runs, read back from the repository it wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from slimserve.cli import main
from slimserve.repository.fidelity import fidelity, output_fidelity
from slimserve.repository.format import load_model
from tests.variants import onnx_zoo


def _build(repo: Path, name: str, onnx: Path, calibration: Path | None) -> int:
    extra = ["--calibration", str(calibration)] if calibration else []
    return main(["build", "--repository", str(repo), "--onnx", str(onnx), "--name", name, *extra])


def test_tritons_simple_model_is_read_from_its_graph(tmp_path: Path) -> None:
    assert _build(tmp_path / "repo", "simple", *onnx_zoo.simple(tmp_path)) == 0
    entry = load_model(tmp_path / "repo" / "simple")
    config = entry.config
    assert config.task == "generic" and config.quality_metric.name == "fidelity"
    assert [(t.name, t.datatype, t.shape) for t in config.inputs] == [
        ("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])
    ]  # fmt: skip
    assert [t.name for t in config.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert list(entry.variants) == ["fp32"]
    assert config.skipped_variants is not None
    assert config.skipped_variants["int8"] == "no MatMul, Gemm or Conv to quantize"
    assert "no float32 weights" in config.skipped_variants["fp16"]


def test_a_multi_output_float_model_gets_int8_with_fidelity_over_every_output(tmp_path: Path) -> None:
    assert _build(tmp_path / "repo", "mlp", *onnx_zoo.mlp(tmp_path)) == 0
    entry = load_model(tmp_path / "repo" / "mlp")
    assert "int8" in entry.variants
    measured = entry.variants["int8"].manifest.measurements
    per_output = {k: v for k, v in measured.agreement.items() if k.startswith("fidelity:")}
    assert set(per_output) == {"fidelity:EMBED", "fidelity:SCORE", "fidelity:LABEL"}
    assert measured.quality["fidelity"] == min(per_output.values())
    assert 0.9 <= measured.quality["fidelity"] < 1.0
    assert entry.variants["fp32"].manifest.measurements.quality["fidelity"] == 1.0
    for kind in ("fp16", "int4"):  # made and kept, or skipped with the reason: never silently absent
        assert kind in entry.candidates or kind in (entry.config.skipped_variants or {})


def test_without_calibration_rows_fp32_is_served_alone_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    graph, _ = onnx_zoo.mlp(tmp_path)
    assert _build(tmp_path / "repo", "mlp", graph, None) == 0
    entry = load_model(tmp_path / "repo" / "mlp")
    assert list(entry.candidates) == ["fp32"]
    assert set(entry.config.skipped_variants or {}) == {"int8", "fp16", "int4"}
    assert "serving fp32 alone" in caplog.text and "no calibration rows" in caplog.text


def test_a_zipmap_output_is_refused_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _build(tmp_path / "repo", "iris", onnx_zoo.IRIS, None) == 2
    error = capsys.readouterr().err
    assert "output 'probabilities' is seq(map(int64,tensor(float)))" in error and "zipmap" in error
    assert not (tmp_path / "repo" / "iris").exists()


def test_calibration_rows_of_the_wrong_type_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph, _ = onnx_zoo.simple(tmp_path)
    np.savez(tmp_path / "floats.npz", INPUT0=np.zeros((10, 16)), INPUT1=np.zeros((10, 16)))
    assert _build(tmp_path / "repo", "simple", graph, tmp_path / "floats.npz") == 2
    assert "input 'INPUT0' takes INT32 (int32); its rows are float64" in capsys.readouterr().err


@pytest.mark.slow
def test_a_shipped_fixed_shape_graph_takes_one_request_per_call(tmp_path: Path) -> None:
    assert _build(tmp_path / "repo", "squeezenet", *onnx_zoo.squeezenet(tmp_path)) == 0
    config = load_model(tmp_path / "repo" / "squeezenet").config
    assert config.inputs[0].shape == [1, 3, 224, 224] and config.max_batch_size == 1
    assert yaml.safe_load((tmp_path / "repo" / "squeezenet" / "model.yaml").read_text())["max_batch_size"] == 1


def test_fidelity_is_exact_match_for_discrete_outputs_and_relative_l2_for_floats() -> None:
    assert output_fidelity(np.array([[1, 2], [3, 4]]), np.array([[1, 2], [3, 5]])) == 0.75
    assert output_fidelity(np.array(["a", "b"], dtype=object), np.array(["a", "c"], dtype=object)) == 0.5
    reference = np.array([[3.0, 4.0], [3.0, 4.0]], dtype=np.float32)  # each row's norm 5
    assert output_fidelity(reference + np.array([[0.5, 0.0], [0.0, 0.0]]), reference) == pytest.approx(1 - 0.1 / 2)
    exploded = reference * [[100.0], [1.0]]
    assert output_fidelity(exploded, reference) == 0.5  # an exploded row costs its share, no more
    assert output_fidelity(np.array([[np.nan]]), np.array([[1.0]])) == 0.0
    assert output_fidelity(np.array([[np.nan]]), np.array([[np.nan]])) == 1.0
    assert fidelity({"a": reference, "b": np.array([1, 2])}, {"a": reference, "b": np.array([1, 3])}) == (
        0.5, {"a": 1.0, "b": 0.5}
    )  # fmt: skip
