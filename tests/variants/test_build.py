"""Tiny end-to-end builds of both built-in models: real torch, real ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from slimserve.repository.format import ModelEntry
from slimserve.repository.hardware import fingerprint, native_bf16, threads_for
from slimserve.repository.sessions import make_session
from slimserve.variants.report import render_json, render_table


@pytest.mark.parametrize("model", ["digits", "minilm"])
def test_int8_file_is_at_least_three_times_smaller(model: str, request: pytest.FixtureRequest) -> None:
    entry: ModelEntry = request.getfixturevalue(model)
    fp32 = entry.variants["fp32"].manifest.measurements.size_bytes
    int8 = entry.variants["int8"].manifest.measurements.size_bytes
    assert fp32 / int8 >= 3.0
    assert entry.variants["int8"].manifest.seed_formulas.alpha_bytes == pytest.approx(fp32 / int8)


@pytest.mark.parametrize("model", ["digits", "minilm"])
def test_pruned_has_fewer_params_and_macs(model: str, request: pytest.FixtureRequest) -> None:
    entry: ModelEntry = request.getfixturevalue(model)
    fp32 = entry.variants["fp32"].manifest.measurements
    pruned = entry.variants["pruned"].manifest.measurements
    assert pruned.params < fp32.params
    assert pruned.macs is not None and fp32.macs is not None
    assert pruned.macs < fp32.macs


def test_pruned_digits_records_the_width_kept_per_layer(digits: ModelEntry) -> None:
    architecture = digits.variants["pruned"].manifest.architecture
    kept, original = architecture["widths"], architecture["reference_widths"]
    assert len(kept) == len(original)
    # Every layer but the classifier is pruned to half (the last step of the tiny recipe).
    assert kept[:-1] == [round(w * 0.5) for w in original[:-1]]
    assert kept[-1] == original[-1]


def test_pruned_minilm_has_fewer_heads_and_neurons(minilm: ModelEntry) -> None:
    architecture = minilm.variants["pruned"].manifest.architecture
    assert architecture["heads"] == [6] * 6
    assert architecture["ffn"] == [768] * 6
    graph = minilm.variants["pruned"].onnx_path.stat().st_size
    assert graph < 0.8 * minilm.variants["fp32"].onnx_path.stat().st_size


def test_students_have_fewer_layers(digits: ModelEntry, minilm: ModelEntry) -> None:
    assert (
        digits.variants["distilled"].manifest.architecture["weighted_layers"]
        < digits.variants["fp32"].manifest.architecture["weighted_layers"]
    )
    assert minilm.variants["distilled"].manifest.architecture["layers"] == 3
    assert minilm.variants["fp32"].manifest.architecture["layers"] == 6


@pytest.mark.parametrize("model", ["digits", "minilm"])
def test_every_variant_is_measured_and_profiled_on_this_machine(model: str, request: pytest.FixtureRequest) -> None:
    entry: ModelEntry = request.getfixturevalue(model)
    key = fingerprint(threads_for("cloud-cpu")).key
    metric = entry.config.quality_metric.name
    for name, variant in entry.variants.items():
        manifest = variant.manifest
        assert metric in manifest.measurements.quality
        assert 0.0 <= manifest.measurements.quality[metric] <= 1.0 + 1e-6
        profile = manifest.profiles[key]
        assert profile.label == "cloud-cpu"
        assert set(profile.latency) == {1, 4}
        assert all(stats.p95_ms >= stats.p50_ms > 0 for stats in profile.latency.values())
        assert profile.speedup[1] > 0
        if name == "fp32":
            assert profile.speedup[1] == 1.0
            assert manifest.seed_formulas.alpha_params == 1.0


def test_fp32_agrees_with_itself(digits: ModelEntry, minilm: ModelEntry) -> None:
    assert digits.variants["fp32"].manifest.measurements.agreement == {"top1": 1.0, "kl": 0.0}
    assert minilm.variants["fp32"].manifest.measurements.quality["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert minilm.variants["fp32"].manifest.measurements.quality["nn_agreement"] == 1.0


def test_digits_teacher_learned_something(digits: ModelEntry) -> None:
    # Even the tiny recipe must beat chance (0.1) by far, or the pipeline is not training.
    assert digits.variants["fp32"].manifest.measurements.quality["accuracy"] > 0.5


def test_served_graphs_take_a_variable_batch(minilm: ModelEntry) -> None:
    session = make_session(str(minilm.variants["int8"].onnx_path), threads=1)
    for batch, tokens in ((1, 5), (3, 11)):
        feed = {
            "input_ids": np.full((batch, tokens), 2000, dtype=np.int64),
            "attention_mask": np.ones((batch, tokens), dtype=np.int64),
        }
        (embedding,) = session.run(None, feed)
        assert embedding.shape == (batch, 384)
        assert np.linalg.norm(embedding, axis=1) == pytest.approx(np.ones(batch), abs=1e-2)


def test_table_lists_every_variant(digits: ModelEntry) -> None:
    table = render_table(digits)
    for name in ("fp32", "int8", "pruned", "distilled"):
        assert name in table
    assert '"alpha_bytes"' in render_json({"digits": digits})


def test_trained_minilm_variants_record_the_precision_auto_chose(minilm: ModelEntry) -> None:
    expected = "bf16" if native_bf16() else "fp32"
    for name in ("pruned", "distilled"):
        assert minilm.variants[name].manifest.recipe["train_precision"] == expected
