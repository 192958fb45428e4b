"""Classifier pipeline: train (if needed) → fp32 → int8 (static QDQ) → pruned → distilled → qat."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from slimserve.repository.format import ModelConfig, QualityMetric, RepositoryError, TensorSpec, VariantKind
from slimserve.repository.sessions import make_session, run_batched
from slimserve.variants.chains import REFERENCE, Chain
from slimserve.variants.data import Split
from slimserve.variants.distill import LogitTargets, classifier_targets, fit_classifier
from slimserve.variants.evaluate import classifier_scores
from slimserve.variants.onnx_io import check_export, export_onnx
from slimserve.variants.pipeline import (
    BuiltVariant,
    PipelineResult,
    build_in_stages,
    count_macs,
    count_params,
    datatype_of,
    last_stage,
)
from slimserve.variants.progress import ModelProgress
from slimserve.variants.prune_graph import output_layer
from slimserve.variants.qat import qat_variant
from slimserve.variants.recipes import ClassifierRecipe
from slimserve.variants.spec import ClassifierSpec
from slimserve.variants.torch_steps import (
    Finetune,
    GraphScore,
    Network,
    architecture,
    int8_variant,
    load_entry_point,
    lowrank_network,
    prune_network,
)

log = logging.getLogger(__name__)
EXPORT_TOLERANCE = 1e-4


def load_spec(entry_point: str) -> ClassifierSpec:
    """Call a `module:function` entry point and check that it returned a ClassifierSpec."""
    return checked_spec(entry_point, load_entry_point(entry_point))


def checked_spec(entry_point: str, spec: object) -> ClassifierSpec:
    """`spec`, what `entry_point` returned, if it is a ClassifierSpec; RepositoryError otherwise
    (the build also takes a ModelSpec, variants.build, so the message names both)."""
    if not isinstance(spec, ClassifierSpec):
        raise RepositoryError(
            f"entry point {entry_point!r} returned {type(spec).__name__}, not a ClassifierSpec or a ModelSpec"
        )
    return spec


def _variant(
    name: str,
    kind: VariantKind,
    model: nn.Module,
    held_out: Split,
    source: str | None = None,
    recipe: dict[str, Any] | None = None,
) -> BuiltVariant:
    example = held_out.take(2).inputs
    graph = export_onnx(model, example, "logits", {key: {0: "batch"} for key in example})
    return BuiltVariant(
        name=name,
        kind=kind,
        onnx=graph,
        params=count_params(model),
        macs=count_macs(model, held_out.take(1).inputs),
        export_max_abs_diff=check_export(model, graph, held_out.take(64).inputs, EXPORT_TOLERANCE),
        source=source,
        recipe=recipe or {},
        architecture=architecture(model),
    )


def _fidelity_to(parent: BuiltVariant, recipe: ClassifierRecipe, train: Split) -> GraphScore:
    """A graph's fidelity to `parent` on a selection slice of the training rows."""
    selection = {k: v[-recipe.selection_rows :] for k, v in train.inputs.items()}
    reference = run_batched(make_session(parent.onnx, threads=1), selection)

    def score(graph: bytes) -> float:
        _, agreement = classifier_scores(run_batched(make_session(graph, 1), selection), reference.argmax(1), reference)
        return agreement["top1"] - 0.1 * agreement["kl"]  # KL breaks the ties top-1 leaves

    return score


def _int8(
    parent: BuiltVariant, chain: Chain, recipe: ClassifierRecipe, train: Split, progress: ModelProgress
) -> BuiltVariant:
    """Static int8 of `parent`'s graph, settings chosen by fidelity to `parent` on a selection slice."""
    calibration = train.take(recipe.calibration_rows).inputs
    return int8_variant(parent, chain, _fidelity_to(parent, recipe, train), calibration, train.take(1).inputs, progress)


def _finetune(
    recipe: ClassifierRecipe, teacher: Callable[[], LogitTargets], train: Split, progress: ModelProgress
) -> Finetune:
    """Fine-tuning after pruning or factorising: distillation from the teacher's logits on
    `train` with the Hinton loss."""
    assert train.labels is not None
    labels = train.labels

    def finetune(network: nn.Module, epochs: int, lr: float, desc: str) -> nn.Module:
        return fit_classifier(network, train.inputs, labels, epochs=epochs, lr=lr, teacher=teacher(),
                              desc=f"{recipe.name}: {desc}", progress=progress)  # fmt: skip

    return finetune


def classifier_pipeline(recipe: ClassifierRecipe) -> PipelineResult:
    return last_stage(classifier_stages(recipe))


def classifier_stages(
    recipe: ClassifierRecipe, progress: ModelProgress | None = None, spec: ClassifierSpec | None = None
) -> Iterator[PipelineResult]:
    """The pipeline in stages (variants.pipeline.FIRST_STAGE): what is built so far, each time.

    Every chain in the recipe is built after its parent (variants.chains); parents the
    recipe does not list are built too and left out of the result. `progress` (by default
    a ModelProgress of the recipe's model) is told every stage, step and epoch. `spec` is
    the entry point's result when the caller has already called it (variants.build)."""
    progress = progress or ModelProgress(recipe.name)
    spec = spec or load_spec(recipe.entry_point)
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
    example = tuple(torch.from_numpy(v) for v in train.take(2).inputs.values())
    # Computed when a chain first distils (a recipe of fp32 and int8 alone never does), then kept.
    targets = functools.cache(lambda: classifier_targets(teacher, train.inputs))
    finetune = _finetune(recipe, targets, train, progress)

    def make(chain: Chain) -> BuiltVariant:
        parent = chain.parent.name
        if chain.last == "int8":
            return _int8(built[parent], chain, recipe, train, progress)
        if chain.last == "qat":
            return qat_variant(
                built[parent], networks[parent], chain, recipe.qat,
                calibration=train.take(recipe.calibration_rows).inputs, finetune=finetune,
                export=lambda network: _variant(chain.name, "qat", network, spec.held_out).onnx,
                score=_fidelity_to(built[parent], recipe, train), timing_item=train.take(1).inputs, progress=progress,
            )  # fmt: skip
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
                teacher=targets(),
                temperature=recipe.distill.temperature,
                alpha=recipe.distill.alpha,
                desc=f"{recipe.name}: distil student",
                progress=progress,
            )
            step = Network(student, recipe.distill.model_dump(), {})
        elif chain.last == "pruned":
            settings = recipe.prune_by_chain.get(chain.name, recipe.prune)
            step = prune_network(networks[parent], settings, chain.name, example, set(), finetune, progress)
        else:
            head = output_layer(networks[parent], example)
            keep = {name for name, m in networks[parent].named_modules() if m is head}
            step = lowrank_network(networks[parent], recipe.lowrank, chain.name, keep, finetune)
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
