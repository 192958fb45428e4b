"""Any torch network (a ModelSpec): fp32 → int8, pruned, distilled, lowrank, qat and chains of them.

A regression, ranking, embedding or multi-output network has no labels the build can use,
but it has a teacher: every variant that changes the network is fine-tuned to reproduce the
teacher's outputs on the training rows (task-agnostic distillation,
distill.output_matching_loss: per float output the squared error over the teacher's
variance, averaged over outputs), and its quality is its **fidelity** to fp32 on the
held-out rows, by the rule of the generic ONNX kind (repository.fidelity: exact match for
integer and bool outputs, 1 − relative L2 error for float ones, the minimum over the
outputs). The model's task is `generic`, so the server, the router and the shadow sampler
treat it as they treat a generic ONNX model.

The steps are the classifier's (variants.torch_steps): structured pruning through the
hand-written or Torch-Pruning's pruner, truncated SVD, static QDQ int8 calibrated on training
rows (dynamic where static quantization fails) and quantization-aware training for it
(variants.qat), each chain built on its parent. The layers
producing the outputs keep their width (named_outputs.head_layers). Every network is
exported with all of its outputs named and a variable batch axis, and checked against torch
(named_outputs.check_named).

variants.build scores a variant from its *first* output; this pipeline measures each
variant's fidelity over every output as soon as it is built and hands build a scorer that
looks the figures up by that first output (onnx_pipeline's `MeasuredScorer`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from slimserve.repository.fidelity import METRIC, fidelity
from slimserve.repository.format import ModelConfig, QualityMetric, RepositoryError, TensorSpec, VariantKind
from slimserve.repository.hardware import threads_for
from slimserve.repository.sessions import make_session, run_batched
from slimserve.variants.chains import REFERENCE, Chain
from slimserve.variants.distill import fit_outputs, teacher_outputs
from slimserve.variants.named_outputs import as_named, check_named, export_named, head_layers, output_names_of
from slimserve.variants.onnx_graph import ONNX_DATATYPES, run_all
from slimserve.variants.onnx_pipeline import FIDELITY_DESCRIPTION, MeasuredScorer
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
from slimserve.variants.qat import qat_variant
from slimserve.variants.recipes import ModelRecipe
from slimserve.variants.spec import ModelSpec
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
EXPORT_CHECK_ROWS = 64


def load_model_spec(entry_point: str) -> ModelSpec:
    """Call a `module:function` entry point and check that it returned a ModelSpec."""
    spec = load_entry_point(entry_point)
    if not isinstance(spec, ModelSpec):
        raise RepositoryError(f"entry point {entry_point!r} returned {type(spec).__name__}, not a ModelSpec")
    return spec


def _rows(inputs: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {name: array[rows] for name, array in inputs.items()}


def _tensors(inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(array) for array in inputs.values())


def _variant(
    name: str,
    kind: VariantKind,
    model: nn.Module,
    names: list[str],
    held_out: dict[str, np.ndarray],
    source: str | None = None,
    recipe: dict[str, Any] | None = None,
) -> BuiltVariant:
    graph = export_named(model, _rows(held_out, slice(2)), names)
    return BuiltVariant(
        name=name,
        kind=kind,
        onnx=graph,
        params=count_params(model),
        macs=count_macs(model, _rows(held_out, slice(1))),
        export_max_abs_diff=check_named(model, graph, _rows(held_out, slice(EXPORT_CHECK_ROWS)), names),
        source=source,
        recipe=recipe or {},
        architecture=architecture(model),
    )


class _Fidelity:
    """Measures each built variant's fidelity to fp32 over every output on the held-out rows,
    and records it in the scorer build uses (module docstring). Sessions and chunks are
    build's own (threads_for("cloud-cpu"), 64 rows a call), so the first output build
    computes is the one recorded here, bit for bit."""

    def __init__(self, recipe_name: str, held_out: dict[str, np.ndarray]) -> None:
        self.scorer = MeasuredScorer()
        self._name = recipe_name
        self._held_out = held_out
        self._threads = threads_for("cloud-cpu")
        self._reference: dict[str, np.ndarray] | None = None

    def measure(self, variant: BuiltVariant) -> float:
        session = make_session(variant.onnx, self._threads)
        outputs = run_all(session, self._held_out, None)
        if self._reference is None:
            self._reference = outputs  # the reference is measured first
        quality, each = fidelity(outputs, self._reference)
        self.scorer.add(run_batched(session, self._held_out), quality, each)
        log.info("%s/%s: fidelity %.5f (%s)", self._name, variant.name, quality,
                 ", ".join(f"{k} {v:.5f}" for k, v in each.items()))  # fmt: skip
        return quality


def _finetune(recipe: ModelRecipe, train: dict[str, np.ndarray], targets: dict[str, np.ndarray],
              progress: ModelProgress) -> Finetune:  # fmt: skip
    """Fine-tuning after pruning or factorising: matching the teacher's outputs (no labels)."""

    def finetune(network: nn.Module, epochs: int, lr: float, desc: str) -> nn.Module:
        return fit_outputs(network, train, targets, epochs=epochs, lr=lr, desc=f"{recipe.name}: {desc}",
                           progress=progress)  # fmt: skip

    return finetune


def _fidelity_to(parent: BuiltVariant, recipe: ModelRecipe, train: dict[str, np.ndarray]) -> GraphScore:
    """A graph's fidelity to `parent` on a selection slice of the training rows (never the held-out ones)."""
    selection = _rows(train, slice(-recipe.selection_rows, None))
    reference = run_all(make_session(parent.onnx, 1), selection, None)

    def score(graph: bytes) -> float:
        return fidelity(run_all(make_session(graph, 1), selection, None), reference)[0]

    return score


def _int8(parent: BuiltVariant, chain: Chain, recipe: ModelRecipe, train: dict[str, np.ndarray],
          progress: ModelProgress) -> BuiltVariant:  # fmt: skip
    """int8 of `parent`'s graph, its settings chosen by fidelity to `parent` on a selection slice."""
    calibration = _rows(train, slice(recipe.calibration_rows))
    return int8_variant(parent, chain, _fidelity_to(parent, recipe, train), calibration, _rows(train, slice(1)),
                        progress, dynamic_if_static_fails=True)  # fmt: skip


@torch.no_grad()
def _check_shapes(
    network: nn.Module, teacher: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], what: str
) -> None:
    """A variant must serve the outputs model.yaml declares (the teacher's). Pruning can change an
    output's width where the output is a stream that pruned layers share (a residual stream
    returned as it is, without a head layer of its own): that is refused here, naming it."""
    got = as_named(network.eval()(*example), names)
    want = as_named(teacher.eval()(*example), names)
    for name in names:
        if got[name].shape != want[name].shape:
            raise RepositoryError(
                f"{what}: output {name!r} is {list(got[name].shape)}, the teacher's {list(want[name].shape)}: its "
                "width comes from layers that were pruned or factorised; end it with a layer of its own (a Linear "
                "head) or leave this variant out"
            )


def model_pipeline(recipe: ModelRecipe) -> PipelineResult:
    return last_stage(model_stages(recipe))


def model_stages(
    recipe: ModelRecipe, progress: ModelProgress | None = None, spec: ModelSpec | None = None
) -> Iterator[PipelineResult]:
    """The pipeline in stages (variants.pipeline.FIRST_STAGE), as classifier_stages: every chain
    after its parent. `spec` is the entry point's result when the caller already has it."""
    progress = progress or ModelProgress(recipe.name)
    spec = spec or load_model_spec(recipe.entry_point)
    train = _rows(spec.train_inputs, slice(recipe.max_train_rows))
    held_out = spec.held_out_inputs
    teacher = spec.teacher.eval()
    example = _tensors(_rows(train, slice(2)))
    with torch.no_grad():
        names = output_names_of(teacher(*example), spec.output_names)
    progress.stage(REFERENCE, "export")
    built = {REFERENCE: _variant("fp32", "fp32", teacher, names, held_out)}
    progress.stage(REFERENCE, "made")
    measured = _Fidelity(recipe.name, held_out)
    measured.measure(built[REFERENCE])
    result = PipelineResult(
        config=_config(recipe, spec, built[REFERENCE]),
        variants=[built[REFERENCE]],
        held_out=held_out,
        labels=None,
        score=measured.scorer,
    )
    networks: dict[str, nn.Module] = {REFERENCE: teacher}
    targets: dict[str, np.ndarray] = {}  # the teacher's outputs on the training rows, once needed

    def make(chain: Chain) -> BuiltVariant:
        parent = chain.parent.name
        if chain.last == "int8":
            variant = _int8(built[parent], chain, recipe, train, progress)
            measured.measure(variant)
            return variant
        if not targets:
            targets.update(teacher_outputs(teacher, train, names))
        finetune = _finetune(recipe, train, targets, progress)
        if chain.last == "qat":
            variant = qat_variant(
                built[parent], networks[parent], chain, recipe.qat,
                calibration=_rows(train, slice(recipe.calibration_rows)), finetune=finetune,
                export=lambda network: export_named(network, _rows(held_out, slice(2)), names),
                score=_fidelity_to(built[parent], recipe, train), timing_item=_rows(train, slice(1)),
                progress=progress, dynamic_if_static_fails=True,
            )  # fmt: skip
            measured.measure(variant)
            return variant
        if chain.last == "distilled":
            if spec.student is None:
                raise RepositoryError(f"{recipe.name}: the 'distilled' variant needs the spec to provide a student")
            student = fit_outputs(spec.student, train, targets, epochs=recipe.distill.epochs, lr=recipe.distill.lr,
                                  desc=f"{recipe.name}: distil student", progress=progress)  # fmt: skip
            step = Network(student, recipe.distill.model_dump() | {"loss": "output_matching"}, {})
        elif chain.last == "pruned":
            settings = recipe.prune_by_chain.get(chain.name, recipe.prune)
            keep = head_layers(networks[parent], example)
            step = prune_network(networks[parent], settings, chain.name, example, keep, finetune, progress)
        else:
            keep = head_layers(networks[parent], example)
            step = lowrank_network(networks[parent], recipe.lowrank, chain.name, keep, finetune)
        _check_shapes(step.module, teacher, example, names, f"{recipe.name}/{chain.name}")
        networks[chain.name] = step.module
        variant = _variant(chain.name, chain.kind, step.module, names, held_out, source=parent, recipe=step.recipe)
        variant.architecture.update(step.architecture)
        measured.measure(variant)
        return variant

    yield from build_in_stages(result, recipe.variants, built, make, progress)


def _config(recipe: ModelRecipe, spec: ModelSpec, fp32: BuiltVariant) -> ModelConfig:
    session = make_session(fp32.onnx, 1)
    sample = run_all(session, _rows(spec.held_out_inputs, slice(1)), None)
    return ModelConfig(
        name=recipe.name,
        task="generic",
        description=spec.description or f"torch model {recipe.entry_point}",
        inputs=[
            TensorSpec(name=k, datatype=datatype_of(v), shape=[-1, *v.shape[1:]]) for k, v in spec.train_inputs.items()
        ],
        outputs=[
            TensorSpec(name=node.name, datatype=ONNX_DATATYPES[node.type], shape=[-1, *sample[node.name].shape[1:]])
            for node in session.get_outputs()
        ],
        quality_metric=QualityMetric(name=METRIC, description=FIDELITY_DESCRIPTION),
        **recipe.serving.model_yaml_fields(),
    )
