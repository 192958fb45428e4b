"""What every torch pipeline shares: its entry point, and the chain steps on a network.

A classifier (variants.classifier_pipeline) is fine-tuned with the Hinton loss against its
labels and the teacher; any other network (variants.model_pipeline) against the teacher's
outputs alone. The steps are otherwise the same, so they are written once here and take the
fine-tuning as a function (`Finetune`): iterative structured pruning (`prune_network`),
low-rank factorisation (`lowrank_network`) and static int8 of an exported graph
(`int8_variant`). Layers named in `keep` (the ones producing the model's outputs) are
neither pruned nor factorised: their width is the served output's width.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from slimserve.repository.format import RepositoryError
from slimserve.variants.chains import Chain
from slimserve.variants.lowrank import factorise
from slimserve.variants.pipeline import BuiltVariant, count_weighted_layers, graph_variant
from slimserve.variants.progress import ModelProgress
from slimserve.variants.prune_graph import group_widths, prune_graph_step
from slimserve.variants.prune_sequential import is_prunable_sequence, prune_to_fraction, widths
from slimserve.variants.quantize import quantize_best
from slimserve.variants.recipes import ClassifierLowrank, ClassifierPrune

log = logging.getLogger(__name__)
MOVED_PACKAGES = {"variants", "server", "router", "protos"}  # top-level until 0.1.0's one namespace
# (network, epochs, learning rate, progress-bar description): trains the network in place.
Finetune = Callable[[nn.Module, int, float, str], object]
GraphScore = Callable[[bytes], float]  # a candidate int8 graph's selection score, higher is better


def load_entry_point(entry_point: str) -> object:
    """Call a `module:function` entry point and return what it returned (a spec, checked by the caller)."""
    module_name, _, function_name = entry_point.partition(":")
    if module_name.split(".")[0] in MOVED_PACKAGES:  # a recipe written before the one namespace
        log.warning("entry point %r: the package is slimserve.%s now; update the recipe", entry_point, module_name)
        module_name = f"slimserve.{module_name}"
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise RepositoryError(f"entry point {entry_point!r}: {exc}") from exc
    return function()


class Network(NamedTuple):
    """What a network step made: the network, its recipe entry, and what the variant's
    architecture records beyond what `architecture` reads off the network."""

    module: nn.Module
    recipe: dict[str, Any]
    architecture: dict[str, Any]


def architecture(model: nn.Module) -> dict[str, Any]:
    """Weighted layers and the width of each (by position in a plain sequence, else by name)."""
    shape = widths(model) if is_prunable_sequence(model) else group_widths(model)  # type: ignore[arg-type]
    return {"weighted_layers": count_weighted_layers(model), "widths": shape}


def prune_network(
    parent: nn.Module,
    settings: ClassifierPrune,
    what: str,
    example: tuple[torch.Tensor, ...],
    keep: set[str],
    finetune: Finetune,
    progress: ModelProgress,
) -> Network:
    """Iterative structured pruning of a copy of `parent`, fine-tuned between steps.

    `what` names the chain in messages (`digits: pruned`); layers in `keep` keep their width."""
    pruned = copy.deepcopy(parent)
    pruner = settings.pruner
    if pruner == "auto":
        pruner = "sequential" if is_prunable_sequence(pruned) else "graph"
    elif pruner == "sequential" and not is_prunable_sequence(pruned):
        raise RepositoryError(f"{what}: pruner 'sequential' needs an nn.Sequential of Conv2d/Linear layers")
    reference = widths(pruned) if pruner == "sequential" else group_widths(pruned)  # type: ignore[arg-type]
    progress.expect(len(settings.keep_fractions) * settings.finetune_epochs)
    for step, fraction in enumerate(settings.keep_fractions, start=1):
        progress.step(step, len(settings.keep_fractions))
        if pruner == "sequential":
            prune_to_fraction(pruned, reference, fraction)  # type: ignore[arg-type]
        else:
            # A layer missing from the reference is not a pruning root: it keeps its width.
            prunable = {name: width for name, width in reference.items() if name not in keep}  # type: ignore[union-attr]
            prune_graph_step(pruned, example, prunable, fraction)
        finetune(pruned, settings.finetune_epochs, settings.lr, f"{what} step {step}")
    return Network(pruned, settings.model_dump() | {"pruner": pruner}, {"reference_widths": reference})


def lowrank_network(
    parent: nn.Module, settings: ClassifierLowrank, what: str, keep: set[str], finetune: Finetune
) -> Network:
    """Truncated SVD of a copy of `parent`'s layers (not those in `keep`), then fine-tuning."""
    factorised = copy.deepcopy(parent)
    ranks = factorise(factorised, settings.energy, skip=keep)
    if settings.finetune_epochs:
        finetune(factorised, settings.finetune_epochs, settings.lr, f"{what} fine-tune")
    return Network(factorised, settings.model_dump() | {"ranks": ranks}, {})


def int8_variant(
    parent: BuiltVariant,
    chain: Chain,
    score: GraphScore,
    calibration: dict[str, np.ndarray],
    timing_item: dict[str, np.ndarray],
    progress: ModelProgress,
    dynamic_if_static_fails: bool = False,
) -> BuiltVariant:
    """Static QDQ int8 of `parent`'s graph, calibrated on `calibration`, its settings chosen by
    `score` (variants.quantize.quantize_best). With `dynamic_if_static_fails`, a graph that
    static quantization cannot handle (an operator its calibration cannot range) is
    quantized dynamically instead, and the recipe entry says so."""
    rows = len(next(iter(calibration.values())))
    method: dict[str, Any] = {"method": "static QDQ", "calibration_rows": rows}
    try:
        graph, chosen, scores = quantize_best(parent.onnx, score, calibration, timing_item, progress=progress)
    except Exception as exc:  # ORT's static quantizer raises many types (shape inference, calibration)
        if not dynamic_if_static_fails:
            raise
        log.warning("%s: static int8 failed (%s); quantizing dynamically", chain.name, exc)
        graph, chosen, scores = quantize_best(parent.onnx, score, None, timing_item, progress=progress)
        method = {"method": "dynamic", "static_failed": str(exc)[:200]}
    return graph_variant(parent, chain.name, "int8", graph,
                         method | {"settings": chosen.label, "selection_scores": scores})  # fmt: skip
