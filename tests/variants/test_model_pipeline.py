"""Generic torch models (a ModelSpec): every variant built without labels, checked, scored, served.

The two example networks (slimserve.variants.models.examples), shrunk: the diabetes MLP with a
tuple of two outputs through `--entry-point`'s recipe kind (torch-classifier, dispatched on
the returned type), and the digits ResNet with a dict of two outputs through `kind:
torch-model`. One repository holds both (built once for the module, about a minute on one
thread); a real server answers them with tritonclient.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as triton
from torch import nn

from loadtest.messages import triton_inputs
from loadtest.serving import RunningServer
from slimserve.repository.fidelity import fidelity
from slimserve.repository.format import ModelEntry, RepositoryError, load_repository
from slimserve.repository.sessions import make_session
from slimserve.variants.build import build_model
from slimserve.variants.distill import (
    TrainingRowsTooLargeError,
    output_matching_loss,
    output_variances,
    teacher_outputs,
)
from slimserve.variants.model_pipeline import _check_shapes
from slimserve.variants.models import examples
from slimserve.variants.named_outputs import EXPORT_RELATIVE_TOLERANCE, check_named, export_named, head_layers
from slimserve.variants.onnx_graph import run_all
from slimserve.variants.recipes import ClassifierLowrank, ClassifierPrune, ModelDistill, ModelRecipe, load_recipes
from slimserve.variants.spec import ModelSpec
from tests.conftest import QUICK_PROFILE, tiny_digits_recipe

REGRESSION_VARIANTS = ["fp32", "int8", "pruned", "distilled", "lowrank", "pruned-int8"]
CNN_VARIANTS = ["fp32", "int8", "pruned", "distilled", "distilled-int8"]
NETWORK_KINDS = {"fp32", "pruned", "distilled", "lowrank"}


def tiny_regression() -> ModelSpec:
    return examples.regression(train_epochs=20, width=64)


def tiny_cnn() -> ModelSpec:
    return examples.residual_cnn(train_epochs=2, width=16)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("generic-torch")
    # `slimserve build --entry-point` makes a torch-classifier recipe; a ModelSpec reroutes it.
    regression = tiny_digits_recipe(name="diabetes", entry_point="tests.variants.test_model_pipeline:tiny_regression")
    regression = regression.model_copy(update={"variants": REGRESSION_VARIANTS, "lowrank": ClassifierLowrank(
        energy=0.8, finetune_epochs=1)})  # fmt: skip
    build_model(regression, folder)
    cnn = ModelRecipe(
        name="digitcodes",
        entry_point="tests.variants.test_model_pipeline:tiny_cnn",
        variants=CNN_VARIANTS,
        calibration_rows=32,
        selection_rows=64,
        max_train_rows=400,
        prune=ClassifierPrune(keep_fractions=[0.5], finetune_epochs=1),
        distill=ModelDistill(epochs=2),
        profile=QUICK_PROFILE,
    )
    build_model(cnn, folder)
    return folder


@pytest.fixture(scope="module")
def models(repo: Path) -> dict[str, ModelEntry]:
    return load_repository(repo)


# -- unit: the loss, the names, the export -------------------------------------------------


def test_the_output_matching_loss_weighs_outputs_by_their_own_variance() -> None:
    rng = np.random.default_rng(0)
    teacher = {"price": rng.normal(500.0, 100.0, (32,)), "code": rng.normal(0.0, 0.01, (32, 4))}
    student = {"price": teacher["price"] + rng.normal(0.0, 10.0, 32), "code": teacher["code"] * 0.9}
    tensors = {k: torch.from_numpy(v) for k, v in teacher.items()}
    variances = output_variances(teacher)
    loss = output_matching_loss({k: torch.from_numpy(v) for k, v in student.items()}, tensors, variances)
    # price: 10² / 100² = 1e-2 of its variance; code: 0.1² = 1e-2 of its: equal shares, whatever the units
    assert float(loss) == pytest.approx(1e-2, rel=0.3)
    assert float(output_matching_loss(tensors, tensors, variances)) == 0.0
    assert "flags" not in output_variances({**teacher, "flags": np.ones(32, dtype=bool)})  # no gradient


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 8)
        self.score = nn.Linear(8, 1)
        self.code = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = torch.relu(self.trunk(x))
        return {"score": torch.tanh(self.score(hidden)) * scale, "code": nn.functional.normalize(self.code(hidden))}


def test_a_dict_of_outputs_exports_each_named_with_a_batch_axis() -> None:
    model = _TwoHeads().eval()
    rows = {"x": np.ones((5, 3), np.float32), "scale": np.full((5, 1), 2.0, np.float32)}
    graph = export_named(model, {k: v[:2] for k, v in rows.items()}, ["score", "code"])
    assert check_named(model, graph, rows, ["score", "code"]) <= EXPORT_RELATIVE_TOLERANCE * 2
    outputs = run_all(make_session(graph, 1), rows, None)
    assert outputs["score"].shape == (5, 1) and outputs["code"].shape == (5, 4)
    # the heads are found through what follows them (tanh, a product, a normalisation)
    assert head_layers(model, tuple(torch.from_numpy(v[:2]) for v in rows.values())) == {"score", "code"}


def test_teacher_outputs_that_would_not_fit_are_refused_before_any_is_computed() -> None:
    model = _TwoHeads()
    rows = {"x": np.ones((1000, 3), np.float32), "scale": np.ones((1000, 1), np.float32)}  # 20 KB of outputs
    outputs = teacher_outputs(model, rows, ["score", "code"], available_bytes=2**20)
    assert outputs["score"].shape == (1000, 1) and outputs["code"].shape == (1000, 4)
    with pytest.raises(TrainingRowsTooLargeError, match="set the recipe's max_train_rows to 614 or fewer"):
        teacher_outputs(model, rows, ["score", "code"], available_bytes=40_960)  # 30 %: 12,288 bytes, 20 a row


def test_a_variant_whose_output_changed_width_is_refused_by_name() -> None:
    example = (torch.ones(2, 3),)
    with pytest.raises(RepositoryError, match=r"m/pruned: output 'code' is \[2, 2\], the teacher's \[2, 4\]"):
        _check_shapes(nn.Linear(3, 2), nn.Linear(3, 4), example, ["code"], "m/pruned")
    _check_shapes(nn.Linear(3, 4), nn.Linear(3, 4), example, ["code"], "m/pruned")


def test_a_model_spec_checks_its_rows() -> None:
    with pytest.raises(ValueError, match="same input names"):
        ModelSpec(nn.Identity(), {"a": np.zeros((4, 2))}, {"b": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="same, non-zero number of rows"):
        ModelSpec(nn.Identity(), {"a": np.zeros((4, 2)), "b": np.zeros((3, 2))}, {"a": np.zeros(1), "b": np.zeros(1)})


def test_the_torch_model_kind_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("kind: torch-model\nname: m\nentry_point: slimserve.variants.models.examples:regression\n"
                    "variants: [fp32, distilled-int8]\n")  # fmt: skip
    (recipe,) = load_recipes(path)
    assert isinstance(recipe, ModelRecipe) and recipe.variants == ["fp32", "distilled-int8"]


def test_an_entry_point_returning_neither_spec_names_both(tmp_path: Path) -> None:
    recipe = tiny_digits_recipe(name="bad", entry_point="tests.variants.user_model:not_a_spec")
    with pytest.raises(RepositoryError, match="not a ClassifierSpec or a ModelSpec"):
        build_model(recipe, tmp_path)


# -- slow: the two examples built (about a minute), measured and served ---------------------


@pytest.mark.slow
def test_both_models_load_as_generic_with_every_output_named(models: dict[str, ModelEntry]) -> None:
    diabetes, codes = models["diabetes"], models["digitcodes"]
    assert set(diabetes.variants) == set(REGRESSION_VARIANTS) and set(codes.variants) == set(CNN_VARIANTS)
    for entry in (diabetes, codes):
        assert entry.config.task == "generic" and entry.config.quality_metric.name == "fidelity"
    assert [(o.name, o.shape) for o in diabetes.config.outputs] == [("value", [-1]), ("embedding", [-1, 16])]
    # the teacher returns a dict: its keys are the served outputs
    assert [(o.name, o.shape) for o in codes.config.outputs] == [("embedding", [-1, 16]), ("logits", [-1, 10])]
    assert [(i.name, i.shape) for i in codes.config.inputs] == [("images", [-1, 1, 8, 8])]


@pytest.mark.slow
def test_every_network_variant_computes_what_its_torch_module_does(models: dict[str, ModelEntry]) -> None:
    for entry in models.values():
        for name, variant in entry.variants.items():
            diff = variant.manifest.measurements.export_max_abs_diff
            if variant.manifest.kind in NETWORK_KINDS:
                assert diff is not None and diff < 1e-3, (entry.config.name, name, diff)  # checked at build
            else:
                assert diff is None  # int8 rewrites the parent's graph: there is no torch module to compare


@pytest.mark.slow
def test_fidelity_is_measured_over_every_output_on_the_held_out_rows(models: dict[str, ModelEntry]) -> None:
    held_out = {"diabetes": tiny_regression().held_out_inputs, "digitcodes": tiny_cnn().held_out_inputs}
    for model, entry in models.items():
        reference = run_all(make_session(str(entry.variants["fp32"].onnx_path), 1), held_out[model], None)
        for name, variant in entry.variants.items():
            measured = variant.manifest.measurements
            assert 0.0 <= measured.quality["fidelity"] <= 1.0
            outputs = run_all(make_session(str(variant.onnx_path), 1), held_out[model], None)
            quality, each = fidelity(outputs, reference)
            assert measured.quality["fidelity"] == pytest.approx(quality, abs=1e-4), (model, name)
            assert set(measured.agreement) == {"fidelity", *(f"fidelity:{o}" for o in each)}
        assert entry.variants["fp32"].manifest.measurements.quality["fidelity"] == 1.0
        assert entry.variants["int8"].manifest.measurements.quality["fidelity"] > 0.8


@pytest.mark.slow
def test_pruning_keeps_every_output_head_whole(models: dict[str, ModelEntry]) -> None:
    for model, heads in (("diabetes", {"value": 1, "embedding": 16}), ("digitcodes", {"embedding": 16, "logits": 10})):
        pruned = models[model].variants["pruned"].manifest
        assert pruned.recipe["pruner"] == "graph"  # not an nn.Sequential
        assert {name: pruned.architecture["widths"][name] for name in heads} == heads
        assert pruned.measurements.params < models[model].variants["fp32"].manifest.measurements.params
    assert models["diabetes"].variants["lowrank"].manifest.recipe["ranks"]  # some layer was factorised


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(repo, tmp_path_factory.mktemp("server"))
    yield running
    assert running.stop() == 0


@pytest.mark.slow
def test_a_server_answers_a_generic_torch_model_with_every_output(server: RunningServer, repo: Path) -> None:
    rows = tiny_cnn().held_out_inputs["images"][:3]
    client = triton.InferenceServerClient(server.address)
    answer = client.infer("digitcodes", triton_inputs({"images": rows}), model_version="fp32")
    expected = run_all(make_session(str(repo / "digitcodes" / "fp32" / "model.onnx"), 1), {"images": rows}, None)
    for name in ("embedding", "logits"):
        assert np.allclose(answer.as_numpy(name), expected[name], atol=1e-5), name
    routed = client.infer("diabetes", triton_inputs({"features": tiny_regression().held_out_inputs["features"][:2]}))
    assert routed.as_numpy("value").shape == (2,) and routed.as_numpy("embedding").shape == (2, 16)
