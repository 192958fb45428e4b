"""The compressed variants of a generic ONNX model: made where the graph allows, kept where they pay.

Each kind is tried in turn on the fp32 graph:

- `int8`: where the graph has MatMul, Gemm or Conv. `variants.quantize.quantize_best`
  (static QDQ where the graph has a Conv, dynamic otherwise, unless the recipe says), its
  settings chosen by fidelity on the calibration rows;
- `fp16`: weights and arithmetic in half precision, inputs and outputs as they were
  (onnxruntime.transformers.float16), where the graph has float32 weights;
- `int4`: where the graph has MatMuls with a constant 2-D float weight: weight-only 4-bit
  (`variants.weight_only`, no embedding tables), 8-bit for the MatMuls that lose the most,
  within the recipe's fidelity budget.

A variant that cannot be made is skipped with the reason. One that can is timed at batch 1
side by side with fp32 (repository.profile) and skipped when it is slower and not smaller;
fp16 is kept only when faster, since on a CPU it exists for speed (most CPUs have no fp16
arithmetic, and ONNX Runtime then inserts casts). The reasons go into the build log and into
model.yaml's `skipped_variants`, which `slimserve variants show --json` prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
from onnx import numpy_helper

from slimserve.repository.format import VariantKind
from slimserve.repository.profile import profile_sessions
from slimserve.repository.sessions import make_session
from slimserve.variants.progress import ModelProgress
from slimserve.variants.quantize import CALIBRATION_ROWS_PER_CALL, quantize_best
from slimserve.variants.recipes import OnnxRecipe
from slimserve.variants.weight_only import quantize_weight_only

log = logging.getLogger(__name__)
INITIALIZERS_APART_IR = 4  # the first IR version in which a weight need not be a graph input
QDQ_OPSET = 13  # DequantizeLinear with an axis (per-channel weights) and int32 biases
QUANTIZABLE_OPS = frozenset({"MatMul", "Gemm", "Conv"})
TIMING_SECONDS = 1.0  # per candidate, at batch 1, interleaved with fp32
FP16_MIN_SPEEDUP = 1.05  # fp16 is kept only this much faster than fp32 at batch 1
Score = Callable[[bytes], float]


@dataclass
class Candidates:
    """What was made (kind → graph and recipe) and what was skipped (kind → reason)."""

    made: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def skip(self, kind: str, reason: str) -> None:
        log.info("%s: skipped: %s", kind, reason)
        self.skipped[kind] = reason


def _has_float_weights(model: onnx.ModelProto) -> bool:
    return any(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer)


def _matmul_weights(model: onnx.ModelProto) -> int:
    constants = {t.name: t for t in model.graph.initializer}
    return sum(
        1
        for node in model.graph.node
        if node.op_type == "MatMul"
        and len(node.input) == 2
        and node.input[1] in constants
        and len(constants[node.input[1]].dims) == 2
        and constants[node.input[1]].data_type == onnx.TensorProto.FLOAT
    )


def _without_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights listed as graph inputs too (older exporters, ONNX's own test models) are
    inputs a caller could override; the quantizers then ask calibration rows for them.
    slimserve serves only the inputs without an initializer, so they become weights alone."""
    weights = {t.name for t in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in weights]
    if len(kept) < len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.ir_version = max(model.ir_version, INITIALIZERS_APART_IR)
    return model


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:300]


def _int8(
    graph: bytes,
    model: onnx.ModelProto,
    recipe: OnnxRecipe,
    score: Score,
    calibration: dict[str, np.ndarray],
    timing_item: dict[str, np.ndarray],
    progress: ModelProgress,
    fixed_batch: int | None,
) -> tuple[bytes, dict[str, Any]] | str:
    ops = {node.op_type for node in model.graph.node}
    if not ops & QUANTIZABLE_OPS:
        return "no MatMul, Gemm or Conv to quantize"
    method = recipe.quantization
    if method == "auto":
        method = "static" if "Conv" in ops else "dynamic"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), QDQ_OPSET)
    if opset < QDQ_OPSET:  # QDQ per channel and int32 biases need opset 13
        graph = onnx.version_converter.convert_version(model, QDQ_OPSET).SerializeToString()
    int8, chosen, scores = quantize_best(
        graph, score, calibration if method == "static" else None, timing_item, progress=progress,
        calibration_rows_per_call=fixed_batch or CALIBRATION_ROWS_PER_CALL,
    )  # fmt: skip
    return int8, {"method": method, "settings": chosen.label, "selection_scores": scores}


def _fp16(model: onnx.ModelProto) -> tuple[bytes, dict[str, Any]] | str:
    if not _has_float_weights(model):
        return "no float32 weights to halve"
    from onnxruntime.transformers.float16 import convert_float_to_float16  # heavy: only when fp16 is tried

    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    return half.SerializeToString(), {"method": "float16 weights and arithmetic, float32 inputs and outputs"}


def _int4(
    graph: bytes, model: onnx.ModelProto, recipe: OnnxRecipe, score: Score, progress: ModelProgress
) -> tuple[bytes, dict[str, Any]] | str:
    count = _matmul_weights(model)
    if not count:
        return "no MatMul with a constant 2-D float weight"
    made, chosen = quantize_weight_only(
        graph, score, recipe.int4.max_drop, recipe.int4.block_size, embedding_block_size=None, progress=progress
    )
    if len(chosen["matmuls_at_8_bits"]) >= count:
        return (
            f"every MatMul had to stay 8-bit to lose at most {recipe.int4.max_drop} fidelity "
            f"(int4 of the most sensitive alone: {max(chosen['loss_at_4_bits_alone'].values()):.4f} lost): "
            "the same graph as a dynamic int8"
        )
    return made, chosen


def make_candidates(
    graph: bytes,
    recipe: OnnxRecipe,
    score: Score,
    calibration: dict[str, np.ndarray],
    timing_item: dict[str, np.ndarray],
    threads: int,
    progress: ModelProgress,
    fixed_batch: int | None,
) -> Candidates:
    """Every kind of `recipe.variants` made and timed, or skipped (module docstring).
    `score(graph)` is a graph's fidelity to fp32 on the calibration rows; `fixed_batch` the
    rows a call of a fixed-shape graph takes (None: batched)."""
    model = _without_initializer_inputs(onnx.load_from_string(graph))
    graph = model.SerializeToString()
    found = Candidates()
    for kind in recipe.variants:
        progress.stage(kind, kind)
        try:
            if kind == "int8":
                made = _int8(graph, model, recipe, score, calibration, timing_item, progress, fixed_batch)
            elif kind == "fp16":
                made = _fp16(model)
            else:
                made = _int4(graph, model, recipe, score, progress)
        except Exception as exc:  # the quantizers and converters raise anything on graphs they do not handle
            log.debug("%s failed", kind, exc_info=True)
            found.skip(kind, f"cannot be made: {type(exc).__name__}: {_short(exc)}")
            continue
        if isinstance(made, str):
            found.skip(kind, made)
            continue
        try:
            make_session(made[0], 1)
        except Exception as exc:  # e.g. an fp16 graph with an op ONNX Runtime has no fp16 kernel for
            found.skip(kind, f"made, but ONNX Runtime cannot load it: {_short(exc)}")
            continue
        found.made[kind] = made
        progress.stage(kind, "made")
    _drop_the_slow(graph, found, timing_item, threads)
    return found


def _drop_the_slow(graph: bytes, found: Candidates, timing_item: dict[str, np.ndarray], threads: int) -> None:
    """Time every made candidate beside fp32 at batch 1; skip those that do not pay."""
    if not found.made:
        return
    sessions = {"fp32": make_session(graph, threads)}
    sessions.update({kind: make_session(made[0], threads) for kind, made in found.made.items()})
    latency = profile_sessions(sessions, lambda _n: timing_item, [1], TIMING_SECONDS * len(sessions), bars=False)
    reference_ms = latency["fp32"][1].p50_ms
    for kind in list(found.made):
        speedup = reference_ms / latency[kind][1].p50_ms
        alpha = len(graph) / len(found.made[kind][0])
        found.made[kind][1]["build_timing"] = {"speedup_batch1": round(speedup, 3), "alpha_bytes": round(alpha, 3)}
        if kind == "fp16" and speedup < FP16_MIN_SPEEDUP:
            reason = f"not faster than fp32 on this CPU (δ {speedup:.2f} at batch 1, below {FP16_MIN_SPEEDUP})"
        elif speedup < 1.0 and alpha <= 1.0:
            reason = f"slower (δ {speedup:.2f} at batch 1) and not smaller (α {alpha:.2f}) than fp32"
        else:
            continue
        del found.made[kind]
        found.skip(kind, reason)


def float_params(model: onnx.ModelProto) -> int:
    """Float weights of a graph (the params the size formulas count)."""
    return sum(
        int(np.prod(numpy_helper.to_array(t).shape))
        for t in model.graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    )


KINDS: dict[str, VariantKind] = {"int8": "int8", "fp16": "fp16", "int4": "int4"}
