"""Classifier pipeline: train (if needed) → fp32 → int8 (static QDQ) → pruned → distilled."""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Iterator
from typing import Any

from torch import nn

from variants.data import Split
from variants.distill import fit_classifier
from variants.evaluate import classifier_scores
from variants.hardware import threads_for
from variants.onnx_io import check_export, export_onnx, make_session, run_batched
from variants.pipeline import (
    FIRST_STAGE,
    BuiltVariant,
    PipelineResult,
    count_macs,
    count_params,
    count_weighted_layers,
    datatype_of,
    last_stage,
    quantized_variant,
)
from variants.prune_sequential import prune_to_fraction, widths
from variants.quantize import quantize_best
from variants.recipes import ClassifierRecipe
from variants.repository import ModelConfig, QualityMetric, RepositoryError, TensorSpec, VariantKind
from variants.spec import ClassifierSpec

log = logging.getLogger(__name__)
EXPORT_TOLERANCE = 1e-4


def load_spec(entry_point: str) -> ClassifierSpec:
    """Call a `module:function` entry point and check that it returned a ClassifierSpec."""
    module_name, _, function_name = entry_point.partition(":")
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
    kind: VariantKind,
    model: nn.Module,
    held_out: Split,
    source: str | None = None,
    recipe: dict[str, Any] | None = None,
) -> BuiltVariant:
    graph, diff = _export(model, held_out)
    architecture: dict[str, Any] = {"weighted_layers": count_weighted_layers(model)}
    if isinstance(model, nn.Sequential):
        architecture["widths"] = widths(model)
    return BuiltVariant(
        name=kind,
        kind=kind,
        onnx=graph,
        params=count_params(model),
        macs=count_macs(model, held_out.take(1).inputs),
        export_max_abs_diff=diff,
        source=source,
        recipe=recipe or {},
        architecture=architecture,
    )


def _int8(fp32: BuiltVariant, recipe: ClassifierRecipe, train: Split) -> BuiltVariant:
    selection = {k: v[-recipe.selection_rows :] for k, v in train.inputs.items()}
    reference = run_batched(make_session(fp32.onnx, threads=1), selection)

    def score(graph: bytes) -> float:
        _, agreement = classifier_scores(run_batched(make_session(graph, 1), selection), reference.argmax(1), reference)
        return agreement["top1"] - 0.1 * agreement["kl"]  # KL breaks the ties top-1 leaves

    graph, chosen, scores = quantize_best(
        fp32.onnx,
        score,
        train.take(recipe.calibration_rows).inputs,
        timing_item=train.take(1).inputs,
        threads=threads_for("cloud-cpu"),
    )
    return quantized_variant(
        fp32,
        graph,
        {
            "method": "static QDQ",
            "calibration_rows": recipe.calibration_rows,
            "settings": chosen.label,
            "selection_scores": scores,
        },
    )


def classifier_pipeline(recipe: ClassifierRecipe) -> PipelineResult:
    return last_stage(classifier_stages(recipe))


def classifier_stages(recipe: ClassifierRecipe) -> Iterator[PipelineResult]:
    """The pipeline in stages (variants.pipeline.FIRST_STAGE): what is built so far, each time."""
    spec = load_spec(recipe.entry_point)
    train = spec.train.take(recipe.max_train_rows) if recipe.max_train_rows else spec.train
    assert train.labels is not None and spec.held_out.labels is not None
    teacher = spec.teacher
    if not spec.trained:
        fit_classifier(
            teacher,
            train.inputs,
            train.labels,
            epochs=recipe.teacher_epochs,
            lr=recipe.teacher_lr,
            desc=f"{recipe.name}: train fp32",
        )
    fp32 = _variant("fp32", teacher, spec.held_out, recipe={"teacher_epochs": recipe.teacher_epochs})
    built = [fp32]
    if "int8" in recipe.variants:
        built.append(_int8(fp32, recipe, train))
    labels = spec.held_out.labels
    result = PipelineResult(
        config=_config(recipe, spec, fp32),
        variants=built,
        held_out=spec.held_out.inputs,
        labels=spec.held_out.labels,
        score=lambda logits, reference: classifier_scores(logits, labels, reference),
    )
    if set(recipe.variants) - set(FIRST_STAGE):
        yield result.snapshot()
    if "pruned" in recipe.variants:
        if not isinstance(teacher, nn.Sequential):
            raise RepositoryError(f"{recipe.name}: structured pruning needs an nn.Sequential teacher")
        pruned = copy.deepcopy(teacher)
        reference_widths = widths(pruned)
        for step, fraction in enumerate(recipe.prune.keep_fractions, start=1):
            prune_to_fraction(pruned, reference_widths, fraction)
            fit_classifier(
                pruned,
                train.inputs,
                train.labels,
                epochs=recipe.prune.finetune_epochs,
                lr=recipe.prune.lr,
                teacher=teacher,
                desc=f"{recipe.name}: prune step {step}",
            )
        variant = _variant("pruned", pruned, spec.held_out, source="fp32", recipe=recipe.prune.model_dump())
        variant.architecture["reference_widths"] = reference_widths
        built.append(variant)
    if "distilled" in recipe.variants:
        if spec.student is None:
            raise RepositoryError(f"{recipe.name}: the 'distilled' variant needs the spec to provide a student")
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
        )
        built.append(_variant("distilled", student, spec.held_out, source="fp32", recipe=recipe.distill.model_dump()))
    yield result.snapshot()


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
        **recipe.serving.model_dump(),
    )
