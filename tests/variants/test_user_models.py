"""A user's own models: a torch entry point (all four variants) and an ONNX file (fp32 + int8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimserve.repository.format import RepositoryError
from slimserve.variants.build import build_model
from slimserve.variants.onnx_io import export_onnx
from slimserve.variants.recipes import ClassifierLowrank, OnnxRecipe
from tests.conftest import QUICK_PROFILE, tiny_digits_recipe
from tests.variants import user_model
from tests.variants.user_model import spec


def test_torch_entry_point_builds_all_four_variants(tmp_path: Path) -> None:
    recipe = tiny_digits_recipe(name="blobs", entry_point="tests.variants.user_model:spec")
    entry = build_model(recipe, tmp_path)
    assert set(entry.variants) == {"fp32", "int8", "pruned", "distilled"}
    assert entry.config.inputs[0].name == "features"
    assert entry.config.outputs[0].shape == [-1, 3]
    assert entry.variants["fp32"].manifest.measurements.quality["accuracy"] > 0.9
    assert entry.variants["pruned"].manifest.measurements.params < entry.variants["fp32"].manifest.measurements.params


def test_the_teacher_runs_once_over_the_training_rows_for_every_distillation(tmp_path: Path) -> None:
    # Pruning's fine-tunings (2 steps) and the student's distillation (3 epochs) at 8 batches an
    # epoch: running the teacher at every step took 40 passes over 64 rows.
    user_model.TEACHER_EVAL_ROWS.clear()
    recipe = tiny_digits_recipe(name="blobs", entry_point="tests.variants.user_model:counted_spec")
    entry = build_model(recipe, tmp_path)
    assert set(entry.variants) == {"fp32", "int8", "pruned", "distilled"}
    passes_over_data = [rows for rows in user_model.TEACHER_EVAL_ROWS if rows > 2]  # not the export's 2-row trace
    assert passes_over_data == [64, 256, 256]  # fp32's export check on 64 held-out rows; the 512 training rows once
    assert entry.variants["distilled"].manifest.measurements.quality["accuracy"] > 0.9


def test_entry_point_returning_the_wrong_type_is_reported(tmp_path: Path) -> None:
    recipe = tiny_digits_recipe(name="bad", entry_point="tests.variants.user_model:not_a_spec")
    with pytest.raises(RepositoryError, match="not a ClassifierSpec"):
        build_model(recipe, tmp_path)
    assert not (tmp_path / "bad").exists()


def test_onnx_file_builds_fp32_and_int8(tmp_path: Path) -> None:
    user = spec()
    user.teacher.eval()
    graph = export_onnx(user.teacher, user.held_out.take(2).inputs, "scores", {"features": {0: "batch"}})
    (tmp_path / "user.onnx").write_bytes(graph)
    np.save(tmp_path / "calibration.npy", user.train.inputs["features"][:200])
    recipe = OnnxRecipe(
        name="usermodel", path=tmp_path / "user.onnx", calibration=tmp_path / "calibration.npy", profile=QUICK_PROFILE
    )
    entry = build_model(recipe, tmp_path / "repo")
    assert set(entry.variants) == {"fp32", "int8"}
    assert entry.config.quality_metric.name == "top1_agreement"
    assert entry.variants["int8"].manifest.measurements.quality["top1_agreement"] > 0.9
    assert entry.variants["int8"].manifest.measurements.eval_items == 40


def test_onnx_file_that_is_not_onnx_is_reported(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not a graph")
    np.save(tmp_path / "calibration.npy", np.zeros((10, 8), dtype=np.float32))
    recipe = OnnxRecipe(name="broken", path=tmp_path / "broken.onnx", calibration=tmp_path / "calibration.npy")
    with pytest.raises(RepositoryError, match="not a valid ONNX model"):
        build_model(recipe, tmp_path / "repo")


def test_a_residual_network_builds_every_variant_with_the_graph_pruner(tmp_path: Path) -> None:
    recipe = tiny_digits_recipe(name="stripes", entry_point="tests.variants.user_model:resnet_spec")
    chains = ["fp32", "int8", "pruned", "distilled", "pruned-int8", "lowrank", "distilled-lowrank"]
    # energy 0.5: a rank low enough that even the 8 → 3 head would be factorised if not kept whole
    recipe = recipe.model_copy(update={"variants": chains, "lowrank": ClassifierLowrank(energy=0.5, finetune_epochs=1)})
    entry = build_model(recipe, tmp_path)
    manifests = {name: v.manifest for name, v in entry.variants.items()}
    assert set(manifests) == set(chains)
    # factorising keeps each network's own output layer whole (the student's, not the teacher's)
    assert manifests["distilled-lowrank"].source == "distilled"
    assert manifests["distilled-lowrank"].architecture["widths"]["head"] == 3
    assert manifests["lowrank"].architecture["widths"]["head"] == 3
    assert manifests["pruned"].recipe["pruner"] == "graph"  # not an nn.Sequential: the hand-written one cannot
    assert manifests["pruned"].measurements.params < 0.5 * manifests["fp32"].measurements.params
    for name in ("fp32", "pruned", "distilled", "lowrank"):
        diff = manifests[name].measurements.export_max_abs_diff
        assert diff is not None and diff < 1e-4  # each exported graph computes what its torch network does
    assert manifests["pruned"].measurements.quality["accuracy"] > 0.5


def test_a_transformer_encoder_is_pruned_through_its_attention(tmp_path: Path) -> None:
    recipe = tiny_digits_recipe(name="sequences", entry_point="tests.variants.user_model:transformer_spec")
    recipe = recipe.model_copy(update={"variants": ["fp32", "pruned", "pruned-int8"]})
    entry = build_model(recipe, tmp_path)
    pruned = entry.variants["pruned"].manifest
    assert pruned.recipe["pruner"] == "graph"
    widths = pruned.architecture["widths"]
    assert widths["embed"] == 16 and widths["encoder.layers.0.linear1"] == 32  # model width and FFN halved
    assert pruned.measurements.export_max_abs_diff is not None and pruned.measurements.export_max_abs_diff < 1e-4
    # the quantizer's symbolic shape inference fails on this attention graph; int8 is still built
    assert entry.variants["pruned-int8"].manifest.measurements.quality["accuracy"] > 0.5


def test_an_entry_point_from_before_the_one_namespace_still_loads(caplog: pytest.LogCaptureFixture) -> None:
    from slimserve.variants.classifier_pipeline import ClassifierSpec, load_spec

    assert isinstance(load_spec("variants.models.digits:spec"), ClassifierSpec)
    assert "slimserve.variants.models.digits" in caplog.text
