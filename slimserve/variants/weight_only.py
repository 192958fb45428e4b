"""Weight-only 4-bit quantization of a transformer, 8-bit where 4 bits cost too much quality.

ONNX Runtime's MatMulNBits and GatherBlockQuantized store weights in blocks of
`block_size` 4-bit values with one scale and zero point each, and dequantize on the fly:
activations stay float, so nothing is lost per call, only per weight. Measured on minilm
(selection sentences): the embedding tables lose almost nothing at 4 bits (cosine 0.999),
but all 36 MatMuls at 4 bits lose 0.028 of cosine, and a few of them (the last layers'
value, output and FFN projections) lose most of it. So each MatMul's loss is measured alone,
and the ones that lose the most per byte they save stay at 8 bits (dynamic int8, 1 byte per
weight) until the whole graph's measured loss is within the recipe's budget.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnx.version_converter
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
from tqdm import tqdm

from slimserve.variants.matmul_roles import weighted_matmuls
from slimserve.variants.progress import ModelProgress

log = logging.getLogger(__name__)

Scorer = Callable[[bytes], float]
# int4 (and GatherBlockQuantized) need opset 21; the quantizer says the same and bumps the
# number without converting the graph, which breaks ops whose signature changed (ReduceL2).
INT4_OPSET = 21
# How many upgrades to 8 bits are tried after the predicted set still misses the budget.
MAX_CORRECTIONS = 12


def _four_bit(
    model: onnx.ModelProto, nodes: set[str], block_size: int, embedding_block_size: int | None
) -> onnx.ModelProto:
    """A copy with the MatMuls `nodes` at 4 bits and, given a block size, every constant
    embedding table (Gather) too; everything else as it was."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    others = sorted({w.node for w in weighted_matmuls(model)} - nodes)
    if nodes:
        quantizer = MatMulNBitsQuantizer(
            copy, block_size=block_size, is_symmetric=False, nodes_to_exclude=others, op_types_to_quantize=("MatMul",)
        )
        quantizer.process()
        copy = quantizer.model.model
    if embedding_block_size is None:
        return copy
    gathers = MatMulNBitsQuantizer(
        copy,
        block_size=embedding_block_size,
        is_symmetric=False,
        op_types_to_quantize=("Gather",),
        quant_axes=(("Gather", 1),),
    )
    gathers.process()
    return gathers.model.model


def _eight_bit(model: onnx.ModelProto, work: Path) -> bytes:
    """The MatMuls still in float → dynamic int8 (per-tensor, signed weights)."""
    if not weighted_matmuls(model):
        return model.SerializeToString()
    source, target = work / "mixed.onnx", work / "mixed-int8.onnx"
    onnx.save(model, source)
    quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    return target.read_bytes()


def quantize_weight_only(
    parent_onnx: bytes,
    score: Scorer,
    max_drop: float,
    block_size: int,
    embedding_block_size: int | None,
    rank_score: Scorer | None = None,
    progress: ModelProgress | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """A mixed 4/8-bit graph within `max_drop` of the parent's selection score, as small as a
    greedy choice makes it (most harm per weight kept at 8 bits first).

    `score(graph)` compares a graph's outputs with the parent's (1.0 = the same);
    `rank_score`, a cheaper one on fewer inputs, ranks the MatMuls (default: `score`).
    `embedding_block_size` None leaves embedding tables (Gather) as they are (a generic graph's
    Gathers need not be embeddings). Returns the graph and what was chosen: which MatMuls stay
    8-bit, each one's measured loss at 4 bits alone, and the final score. `progress`, when
    given, counts the MatMuls ranked.
    """
    rank_score = rank_score or score
    model = onnx.version_converter.convert_version(onnx.load_from_string(parent_onnx), INT4_OPSET)
    weights = weighted_matmuls(model)
    with tempfile.TemporaryDirectory(prefix="slimserve-int4-") as tmp:
        work = Path(tmp)
        losses: dict[str, float] = {}
        if progress is not None:
            progress.loop(len(weights), unit="matmul")
        for weight in tqdm(weights, desc="int4: loss per MatMul", unit="matmul", leave=False):
            alone = _four_bit(model, {weight.node}, block_size, None).SerializeToString()
            losses[weight.node] = 1.0 - rank_score(alone)
            if progress is not None:
                progress.tick()
        # A MatMul kept at 8 bits costs about half a byte more per weight: keep first those
        # that lose the most quality per weight, until the losses left (which add up only
        # roughly) fit the budget; then measure, and keep one more while the graph misses it.
        by_harm = sorted(weights, key=lambda w: losses[w.node] / w.count, reverse=True)
        left = sum(losses.values())
        kept = 0
        while kept < len(by_harm) and left > max_drop:
            left -= losses[by_harm[kept].node]
            kept += 1
        for _attempt in range(MAX_CORRECTIONS + 1):
            four = {w.node for w in by_harm[kept:]}
            graph = _eight_bit(_four_bit(model, four, block_size, embedding_block_size), work)
            final = score(graph)
            log.info("int4: %d of %d MatMuls at 8 bits, score %.4f", kept, len(weights), final)
            if 1.0 - final <= max_drop or kept == len(weights):
                break
            kept += 1
    if 1.0 - final > max_drop:
        log.warning("int4: %d corrections left the graph at %.4f, outside the budget %.3f; kept as measured",
                    MAX_CORRECTIONS, final, max_drop)  # fmt: skip
    at_four = sum(w.count for w in by_harm[kept:])
    return graph, {
        "method": "weight-only 4-bit MatMulNBits and GatherBlockQuantized; dynamic int8 for the MatMuls kept",
        "block_size": block_size,
        "embedding_block_size": embedding_block_size,
        "max_drop": max_drop,
        "matmuls_at_8_bits": [w.node for w in by_harm[:kept]],
        "share_of_matmul_weights_at_4_bits": round(at_four / max(1, sum(w.count for w in weights)), 4),
        "loss_at_4_bits_alone": {node: round(loss, 5) for node, loss in losses.items()},
        "selection_score": round(final, 5),
    }
