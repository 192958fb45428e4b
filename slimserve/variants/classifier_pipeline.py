"""Classifier pipeline: train (if needed) → fp32 → int8 (static QDQ) → pruned → distilled."""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from slimserve.repository.format import ModelConfig, QualityMetric, RepositoryError, TensorSpec, VariantKind
from slimserve.repository.hardware import threads_for
from slimserve.repository.sessions import make_session, run_batched
from slimserve.variants.chains import REFERENCE, Chain
from slimserve.variants.data import Split
from slimserve.variants.distill import fit_classifier
from slimserve.variants.evaluate import classifier_scores
from slimserve.variants.lowrank import factorise
from slimserve.variants.onnx_io import check_export, export_onnx
from slimserve.variants.pipeline import (
    BuiltVariant,
    PipelineResult,
    build_in_stages,
    count_macs,
    count_params,
    count_weighted_layers,
    datatype_of,
    graph_variant,
    last_stage,
)
from slimserve.variants.progress import ModelProgress
from slimserve.variants.prune_graph import group_widths, output_layer, prune_graph_step
from slimserve.variants.prune_sequential import is_prunable_sequence, prune_to_fraction, widths
from slimserve.variants.quantize import quantize_best
from slimserve.variants.recipes import ClassifierRecipe
from slimserve.variants.spec import ClassifierSpec

log = logging.getLogger(__name__)
EXPORT_TOLERANCE = 1e-4
MOVED_PACKAGES = {"variants", "server", "router", "protos"}  # top-level until 0.1.0's one namespace


def load_spec(entry_point: str) -> ClassifierSpec:
    """Call a `module:function` entry point and check that it returned a ClassifierSpec."""
    module_name, _, function_name = entry_point.partition(":")
    if module_name.split(".")[0] in MOVED_PACKAGES:  # a recipe written before the one namespace
        log.warning("entry point %r: the package is slimserve.%s now; update the recipe", entry_point, module_name)
        module_name = f"slimserve.{module_name}"
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise RepositoryError(f"entry point {entry_point!r}: {exc}") from exc
    spec = function()
    if not isinstance(spec, ClassifierSpec):
        raise RepositoryError(f"entry point {entry_point!r} returned {type(spec).__name__}, not a ClassifierSpec")
    return spec


def _export(model: nn.Module, held_out: Split) -> tuple[bytes, float]:
    example = held_out.take(2).inputs
    axes = {key: {0: "batch"} for key in example}
    graph = export_onnx(model, example, "logits", axes)
    return graph, check_export(model, graph, held_out.take(64).inputs, EXPORT_TOLERANCE)


def _variant(
    name: str,
    kind: VariantKind,
    model: nn.Module,
    held_out: Split,
    source: str | None = None,
    recipe: dict[str, Any] | None = None,
) -> BuiltVariant:
    graph, diff = _export(model, held_out)
    architecture: dict[str, Any] = {"weighted_layers": count_weighted_layers(model)}
    if is_prunable_sequence(model):
        architecture["widths"] = widths(model)  # type: ignore[arg-type]
    else:
        architecture["widths"] = group_widths(model)  # by layer name: any network
    return BuiltVariant(
        name=name,
        kind=kind,
        onnx=graph,
        params=count_params(model),
        macs=count_macs(model, held_out.take(1).inputs),
        export_max_abs_diff=diff,
        source=source,
        recipe=recipe or {},
        architecture=architecture,
    )


def _int8(
    parent: BuiltVariant, chain: Chain, recipe: ClassifierRecipe, train: Split, progress: ModelProgress
) -> BuiltVariant:
    """Static int8 of `parent`'s graph, settings chosen by fidelity to `parent` on a selection slice."""
    selection = {k: v[-recipe.selection_rows :] for k, v in train.inputs.items()}
    reference = run_batched(make_session(parent.onnx, threads=1), selection)

    def score(graph: bytes) -> float:
        _, agreement = classifier_scores(run_batched(make_session(graph, 1), selection), reference.argmax(1), reference)
        return agreement["top1"] - 0.1 * agreement["kl"]  # KL breaks the ties top-1 leaves

    graph, chosen, scores = quantize_best(
        parent.onnx,
        score,
        train.take(recipe.calibration_rows).inputs,
        timing_item=train.take(1).inputs,
        threads=threads_for("cloud-cpu"),
        progress=progress,
    )
    return graph_variant(
        parent,
        chain.name,
        "int8",
        graph,
        {
            "method": "static QDQ",
            "calibration_rows": recipe.calibration_rows,
            "settings": chosen.label,
            "selection_scores": scores,
        },
    )


class _Network(NamedTuple):
    """What a network step made: the network, its recipe entry, and what the variant's
    architecture records beyond what `_variant` reads off the network."""

    module: nn.Module
    recipe: dict[str, Any]
    architecture: dict[str, Any]


def _prune(
    parent: nn.Module, teacher: nn.Module, chain: Chain, recipe: ClassifierRecipe, train: Split, progress: ModelProgress
) -> _Network:
    """Iterative structured pruning of a copy of `parent`, distilled from `teacher` between steps."""
    assert train.labels is not None
    pruned = copy.deepcopy(parent)
    settings = recipe.prune_by_chain.get(chain.name, recipe.prune)
    pruner = settings.pruner
    if pruner == "auto":
        pruner = "sequential" if is_prunable_sequence(pruned) else "graph"
    elif pruner == "sequential" and not is_prunable_sequence(pruned):
        raise RepositoryError(f"{recipe.name}: pruner 'sequential' needs an nn.Sequential of Conv2d/Linear layers")
    example = tuple(torch.from_numpy(v) for v in train.take(2).inputs.values())
    reference = widths(pruned) if pruner == "sequential" else group_widths(pruned)  # type: ignore[arg-type]
    progress.expect(len(settings.keep_fractions) * settings.finetune_epochs)
    for step, fraction in enumerate(settings.keep_fractions, start=1):
        progress.step(step, len(settings.keep_fractions))
        if pruner == "sequential":
            prune_to_fraction(pruned, reference, fraction)  # type: ignore[arg-type]
        else:
            prune_graph_step(pruned, example, reference, fraction)  # type: ignore[arg-type]
        fit_classifier(
            pruned,
            train.inputs,
            train.labels,
            epochs=settings.finetune_epochs,
            lr=settings.lr,
            teacher=teacher,
            desc=f"{recipe.name}: {chain.name} step {step}",
            progress=progress,
        )
    return _Network(pruned, settings.model_dump() | {"pruner": pruner}, {"reference_widths": reference})


def _lowrank(
    parent: nn.Module, teacher: nn.Module, chain: Chain, recipe: ClassifierRecipe, train: Split, progress: ModelProgress
) -> _Network:
    """Truncated SVD of a copy of `parent`'s layers (not its output layer), then distillation."""
    assert train.labels is not None
    factorised = copy.deepcopy(parent)
    head = output_layer(factorised, tuple(torch.from_numpy(v) for v in train.take(2).inputs.values()))
    head_name = next(name for name, m in factorised.named_modules() if m is head)
    ranks = factorise(factorised, recipe.lowrank.energy, skip={head_name})
    if recipe.lowrank.finetune_epochs:
        fit_classifier(
            factorised,
            train.inputs,
            train.labels,
            epochs=recipe.lowrank.finetune_epochs,
            lr=recipe.lowrank.lr,
            teacher=teacher,
            desc=f"{recipe.name}: {chain.name} fine-tune",
            progress=progress,
        )
    return _Network(factorised, recipe.lowrank.model_dump() | {"ranks": ranks}, {})


def classifier_pipeline(recipe: ClassifierRecipe) -> PipelineResult:
    return last_stage(classifier_stages(recipe))


def classifier_stages(recipe: ClassifierRecipe, progress: ModelProgress | None = None) -> Iterator[PipelineResult]:
    """The pipeline in stages (variants.pipeline.FIRST_STAGE): what is built so far, each time.

    Every chain in the recipe is built after its parent (variants.chains); parents the
    recipe does not list are built too and left out of the result. `progress` (by default
    a ModelProgress of the recipe's model) is told every stage, step and epoch."""
    progress = progress or ModelProgress(recipe.name)
    spec = load_spec(recipe.entry_point)
    train = spec.train.take(recipe.max_train_rows) if recipe.max_train_rows else spec.train
    assert train.labels is not None and spec.held_out.labels is not None
    teacher = spec.teacher
    progress.stage(REFERENCE, "export" if spec.trained else "train")
    if not spec.trained:
        fit_classifier(
            teacher,
            train.inputs,
            train.labels,
            epochs=recipe.teacher_epochs,
            lr=recipe.teacher_lr,
            desc=f"{recipe.name}: train fp32",
            progress=progress,
        )
    built = {
        REFERENCE: _variant("fp32", "fp32", teacher, spec.held_out, recipe={"teacher_epochs": recipe.teacher_epochs})
    }
    progress.stage(REFERENCE, "made")
    labels = spec.held_out.labels
    result = PipelineResult(
        config=_config(recipe, spec, built[REFERENCE]),
        variants=[built[REFERENCE]],
        held_out=spec.held_out.inputs,
        labels=spec.held_out.labels,
        score=lambda logits, reference: classifier_scores(logits, labels, reference),
    )
    networks: dict[str, nn.Module] = {REFERENCE: teacher}

    def make(chain: Chain) -> BuiltVariant:
        parent = chain.parent.name
        if chain.last == "int8":
            return _int8(built[parent], chain, recipe, train, progress)
        if chain.last == "distilled":
            if spec.student is None:
                raise RepositoryError(f"{recipe.name}: the 'distilled' variant needs the spec to provide a student")
            assert train.labels is not None
            student = fit_classifier(
                spec.student,
                train.inputs,
                train.labels,
                epochs=recipe.distill.epochs,
                lr=recipe.distill.lr,
                teacher=teacher,
                temperature=recipe.distill.temperature,
                alpha=recipe.distill.alpha,
                desc=f"{recipe.name}: distil student",
                progress=progress,
            )
            step = _Network(student, recipe.distill.model_dump(), {})
        elif chain.last == "pruned":
            step = _prune(networks[parent], teacher, chain, recipe, train, progress)
        else:
            step = _lowrank(networks[parent], teacher, chain, recipe, train, progress)
        networks[chain.name] = step.module
        variant = _variant(chain.name, chain.kind, step.module, spec.held_out, source=parent, recipe=step.recipe)
        variant.architecture.update(step.architecture)
        return variant

    yield from build_in_stages(result, recipe.variants, built, make, progress)


def _config(recipe: ClassifierRecipe, spec: ClassifierSpec, fp32: BuiltVariant) -> ModelConfig:
    classes = run_batched(make_session(fp32.onnx, 1), spec.held_out.take(1).inputs).shape[1]
    return ModelConfig(
        name=recipe.name,
        task="classifier",
        description=spec.description,
        inputs=[
            TensorSpec(name=k, datatype=datatype_of(v), shape=[-1, *v.shape[1:]]) for k, v in spec.train.inputs.items()
        ],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, classes])],
        quality_metric=QualityMetric(name="accuracy", description="top-1 accuracy on the held-out split"),
        labels=spec.labels,
        **recipe.serving.model_yaml_fields(),
    )
