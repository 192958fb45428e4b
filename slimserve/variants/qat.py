"""The `qat` chain step: quantization-aware fine-tuning, then an int8 graph ONNX Runtime runs.

Post-training int8 (the `int8` step, variants.quantize) rounds weights the network was never
trained to be rounded; `qat` fine-tunes a copy of the parent network with the rounding in its
forward pass (variants.fake_quant), against the fp32 teacher with the loss the model's
pipeline already fine-tunes with (Hinton for a classifier, token states + embedding for the
encoder, output matching for any other network), then exports the float graph of the rounded
weights and has ONNX Runtime's quantizer make the int8 graph with exactly the settings the
fine-tuning simulated (one candidate, no search): static QDQ for a classifier or a torch
model, dynamic for the encoder (as its `int8`). Its weights are already on the int8 grid, so
the quantizer's rounding is exact for them; activation ranges are re-measured (MinMax) on the
calibration rows, as for `int8`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from slimserve.variants.chains import Chain
from slimserve.variants.fake_quant import FakeQuantized, QuantScheme, fold_batch_norms
from slimserve.variants.pipeline import BuiltVariant, graph_variant
from slimserve.variants.progress import ModelProgress
from slimserve.variants.quantize import QuantCandidate, quantize_best
from slimserve.variants.recipes import QatSettings
from slimserve.variants.torch_steps import Finetune, GraphScore

log = logging.getLogger(__name__)
Export = Callable[[nn.Module], bytes]  # the float ONNX graph of a network
CALIBRATION_BATCH_ROWS = 64


def candidate_of(scheme: QuantScheme) -> QuantCandidate:
    """The ONNX Runtime settings that quantize as `scheme` simulates (int8 weights, uint8 inputs)."""
    return QuantCandidate(per_channel=scheme.per_channel, reduce_range=scheme.reduce_range, weight_type="QInt8")


def qat_network(
    parent: nn.Module, scheme: QuantScheme, calibration: dict[str, np.ndarray] | None, epochs: int, lr: float,
    finetune: Finetune, what: str,
) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """A copy of `parent` with BatchNorms folded, fine-tuned under fake quantization (static
    ranges first calibrated on `calibration`), its weights left rounded to the int8 grid."""
    network = copy.deepcopy(parent).eval()
    folded = fold_batch_norms(network)
    fake = FakeQuantized(network, scheme)
    if calibration is not None:
        rows, step = len(next(iter(calibration.values()))), CALIBRATION_BATCH_ROWS
        fake.calibrate(
            tuple(torch.from_numpy(np.ascontiguousarray(v[start : start + step])) for v in calibration.values())
            for start in range(0, rows, step)
        )
    if epochs:
        finetune(network, epochs, lr, f"{what} qat")
    fake.bake()
    log.info("%s: qat %d epochs, %d activations fake-quantized, %d BatchNorms folded", what, epochs,
             len(fake.quantizers), folded)  # fmt: skip
    return network.eval(), {"quantized_activations": len(fake.quantizers), "folded_batch_norms": folded}


def qat_variant(
    parent_variant: BuiltVariant,
    parent_network: nn.Module,
    chain: Chain,
    settings: QatSettings,
    *,
    calibration: dict[str, np.ndarray] | None,
    finetune: Finetune,
    export: Export,
    score: GraphScore,
    timing_item: dict[str, np.ndarray],
    progress: ModelProgress,
    dynamic_if_static_fails: bool = False,
) -> BuiltVariant:
    """The `qat` step on `parent_network` (module docstring): static int8 ranged on
    `calibration` rows (in torch and in ONNX Runtime), or dynamic int8 when it is None.
    `score` is reported as the int8 step reports it. With `dynamic_if_static_fails`, a
    graph ONNX Runtime cannot quantize statically is quantized dynamically (its weights as
    trained; the activations ranged per call instead of as simulated), and the recipe says so."""
    scheme = QuantScheme(settings.per_channel, settings.reduce_range, static=calibration is not None)
    network, info = qat_network(parent_network, scheme, calibration, settings.epochs, settings.lr, finetune,
                                chain.name)  # fmt: skip
    graph = export(network)
    candidates = (candidate_of(scheme),)
    method: dict[str, Any] = {"method": "static QDQ" if scheme.static else "dynamic"}
    try:
        quantized, chosen, scores = quantize_best(graph, score, calibration, timing_item, candidates, progress)
    except Exception as exc:  # ORT's static quantizer raises many types (shape inference, calibration)
        if not (scheme.static and dynamic_if_static_fails):
            raise
        log.warning("%s: static int8 failed (%s); quantizing dynamically", chain.name, exc)
        quantized, chosen, scores = quantize_best(graph, score, None, timing_item, candidates, progress)
        method = {"method": "dynamic", "static_failed": str(exc)[:200]}
    recipe = settings.model_dump() | info | method | {"settings": chosen.label, "selection_scores": scores}
    return graph_variant(parent_variant, chain.name, "qat", quantized, recipe)
