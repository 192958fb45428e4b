"""What every model pipeline hands to the build: graphs, how to score them, how to time them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slimserve.repository.format import Datatype, ModelConfig, VariantKind
from slimserve.repository.sessions import make_session, run_batched
from slimserve.variants.chains import REFERENCE, Chain, build_plan
from slimserve.variants.progress import ModelProgress

Scorer = Callable[[np.ndarray, np.ndarray], tuple[dict[str, float], dict[str, float]]]
# (graph, held-out rows, threads) -> the graph's first output for every row.
Runner = Callable[[bytes, dict[str, np.ndarray], int], np.ndarray]


def run_every_row(graph: bytes, inputs: dict[str, np.ndarray], threads: int) -> np.ndarray:
    """The default `Runner`: rows as they are, 64 at a time (fixed-shape inputs)."""
    return run_batched(make_session(graph, threads), inputs)


@dataclass
class BuiltVariant:
    """A variant's graph and what is known about it before evaluation."""

    name: str
    kind: VariantKind
    onnx: bytes
    params: int
    macs: int | None
    source: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    export_max_abs_diff: float | None = None


def graph_variant(
    parent: BuiltVariant, name: str, kind: VariantKind, graph: bytes, recipe: dict[str, Any]
) -> BuiltVariant:
    """A variant made by rewriting `parent`'s graph (int8, int4): same network, other weights."""
    return BuiltVariant(
        name=name,
        kind=kind,
        onnx=graph,
        params=parent.params,
        macs=parent.macs,
        source=parent.name,
        architecture=parent.architecture,
        recipe=recipe,
    )


# The progress stage of each chain step (variants.progress): what the step does.
STEP_STAGES = {
    "distilled": "distill",
    "pruned": "prune",
    "lowrank": "lowrank",
    "int8": "int8",
    "int4": "int4",
    "int8mixed": "int8mixed",
    "qat": "qat",
}

# Built and published first, so that a new repository serves within minutes: the cheap
# variants (no training beyond the reference's); the others follow (`slimserve build --staged`).
FIRST_STAGE: tuple[str, ...] = ("fp32", "int8")


@dataclass
class PipelineResult:
    """A model's config and variants (reference first), its held-out set, how a graph is
    run on it, and the scorer of what comes out."""

    config: ModelConfig
    variants: list[BuiltVariant]
    held_out: dict[str, np.ndarray]
    labels: np.ndarray | None
    score: Scorer
    run: Runner = run_every_row

    def snapshot(self) -> PipelineResult:
        """This result with the variants built so far, unaffected by those added later."""
        return replace(self, variants=list(self.variants))


def build_in_stages(
    result: PipelineResult,
    names: list[str],
    built: dict[str, BuiltVariant],
    make: Callable[[Chain], BuiltVariant],
    progress: ModelProgress,
) -> Iterator[PipelineResult]:
    """Build every chain `names` needs with `make`, each after its parent (variants.chains),
    FIRST_STAGE first. Yields `result` holding the variants of `names` built so far (the
    reference first; parents not in `names` left out): after the first stage if more are to
    come, and at the end. `built` starts with the reference and collects every chain.
    `progress` is told each chain's stage (STEP_STAGES) before `make` and `made` after it."""
    plan = build_plan(names)
    first = [chain for chain in plan if chain.name in FIRST_STAGE]
    for stage in (first, [chain for chain in plan if chain not in first]):
        for chain in stage:
            if chain.name not in built:
                progress.stage(chain.name, STEP_STAGES[chain.last])
                built[chain.name] = make(chain)
                progress.stage(chain.name, "made")
        result.variants = [built[REFERENCE]] + [built[n] for n in names if n in built and n != REFERENCE]
        if stage is first and len(result.variants) < len(set(names) | {REFERENCE}):
            yield result.snapshot()
    yield result.snapshot()


def last_stage(stages: Iterator[PipelineResult]) -> PipelineResult:
    """The complete result of a staged pipeline (its last stage)."""
    results = list(stages)  # each stage is a snapshot: only the last is kept once done
    if not results:
        raise RuntimeError("the pipeline produced no stage")
    return results[-1]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_weighted_layers(model: nn.Module) -> int:
    """Layers that carry weights and do the multiply-adds (Conv2d, Linear)."""
    return sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())


@torch.no_grad()
def count_macs(model: nn.Module, example: dict[str, np.ndarray]) -> int:
    """Multiply-accumulates of one forward pass per item of `example`'s batch."""
    batch = len(next(iter(example.values())))
    with FlopCounterMode(display=False) as counter:
        model.eval()(*(torch.from_numpy(v) for v in example.values()))
    return counter.get_total_flops() // 2 // batch


def datatype_of(array: np.ndarray) -> Datatype:
    """Triton/KServe datatype name of a numpy dtype."""
    names: dict[str, Datatype] = {
        "float32": "FP32",
        "float16": "FP16",
        "int64": "INT64",
        "int32": "INT32",
        "int8": "INT8",
        "uint8": "UINT8",
        "bool": "BOOL",
    }
    return names[str(array.dtype)]
