"""Mixed-precision int8: each MatMul role at its own precision, on a smoothed graph.

Three precisions for a weighted MatMul (variants.matmul_roles), measured on minilm (AMD
EPYC, AVX-512 VNNI, batch 1, 2 threads):
- `dynamic`: ORT's MatMulInteger with int8 weights per channel and the input quantized per
  call with one scale: the fastest (all 36 MatMuls: 2.1× fp32), the least precise;
- `blockwise`: MatMulNBits with 8-bit weights and accuracy_level 4, which quantizes the
  input per row in blocks of `block_size` along the inner dimension: near-float quality
  (cosine 0.9996 for all 36), slower (1.45× fp32 for all 36);
- `float`: left alone.
Before quantizing, the graph can be smoothed (variants.smooth, α = `alpha`), and its large
embedding tables stored as int8 (variants.embedding_int8). Static QDQ int8 was measured
too and left out: on smoothed minilm it lost more (cosine 0.940) and ran slower (1.88×)
than dynamic int8 (0.998, 2.1×), as ORT's own guidance for transformers predicts.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx.version_converter
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from slimserve.variants.embedding_int8 import quantize_embeddings
from slimserve.variants.matmul_roles import weighted_matmuls
from slimserve.variants.smooth import smooth

log = logging.getLogger(__name__)

Precision = Literal["dynamic", "blockwise", "float"]
PRECISIONS: tuple[Precision, ...] = ("dynamic", "blockwise", "float")
# MatMulNBits' 8-bit weights need the opset its quantizer writes (as in variants.weight_only).
BLOCKWISE_OPSET = 21
BLOCKWISE_BITS = 8
# accuracy_level 4: int8 inputs per block, VNNI dot products (0 would dequantize to float).
BLOCKWISE_ACCURACY_LEVEL = 4
DEFAULT_BLOCK_SIZE = 256


@dataclass(frozen=True)
class MixedSettings:
    """How to quantize a graph: a precision per MatMul role (others take `default`),
    SmoothQuant strength (None: no smoothing), per-channel weights for dynamic MatMuls,
    the blockwise block size, and whether embedding tables go int8."""

    default: Precision = "dynamic"
    by_role: tuple[tuple[str, Precision], ...] = field(default=())
    alpha: float | None = None
    per_channel: bool = True
    block_size: int = DEFAULT_BLOCK_SIZE
    embedding_int8: bool = False

    def precision(self, role: str) -> Precision:
        return dict(self.by_role).get(role, self.default)

    @property
    def label(self) -> str:
        """A short, stable name: `d+smooth0.8+emb8[down=b,value=f]`."""
        parts = [self.default[0]]
        if self.alpha is not None:
            parts.append(f"smooth{self.alpha:g}")
        if not self.per_channel:
            parts.append("per-tensor")
        if self.embedding_int8:
            parts.append("emb8")
        if any(p == "blockwise" for _, p in self.by_role) or self.default == "blockwise":
            parts.append(f"block{self.block_size}")
        named = ",".join(f"{_short(role)}={p[0]}" for role, p in sorted(self.by_role))
        return "+".join(parts) + (f"[{named}]" if named else "")

    def to_dict(self) -> dict[str, object]:
        return {
            "default": self.default, "by_role": dict(self.by_role), "alpha": self.alpha,
            "per_channel": self.per_channel, "block_size": self.block_size, "embedding_int8": self.embedding_int8,
        }  # fmt: skip


def _short(role: str) -> str:
    """`/layers.*/feed_forward/down/MatMul` → `feed_forward/down`."""
    parts = [p for p in role.split("/") if p and p != "MatMul" and "*" not in p]
    return "/".join(parts[-2:]) or role


def quantize_mixed(
    parent: onnx.ModelProto, settings: MixedSettings, maxima: dict[str, np.ndarray] | None = None
) -> bytes:
    """`parent` quantized as `settings` say. `maxima` (smooth.input_maxima of `parent` on
    calibration rows) is needed when settings.alpha is set."""
    model = parent
    if settings.alpha is not None:
        if maxima is None:
            raise ValueError("smoothing needs the inputs' maxima on calibration rows")
        model = smooth(model, maxima, settings.alpha)
    if settings.embedding_int8:
        model = quantize_embeddings(model)
    matmuls = weighted_matmuls(model)
    chosen = {m.node: settings.precision(m.role) for m in matmuls}
    blockwise = [node for node, p in chosen.items() if p == "blockwise"]
    if blockwise:
        model = onnx.version_converter.convert_version(model, BLOCKWISE_OPSET)
        # nodes_to_include is ignored by the quantizer (ORT 1.32): exclude the others instead.
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in blockwise]
        quantizer = MatMulNBitsQuantizer(
            model, bits=BLOCKWISE_BITS, block_size=settings.block_size, is_symmetric=False,
            accuracy_level=BLOCKWISE_ACCURACY_LEVEL, nodes_to_exclude=others, op_types_to_quantize=("MatMul",),
        )  # fmt: skip
        quantizer.process()
        model = quantizer.model.model
    dynamic = [node for node, p in chosen.items() if p == "dynamic"]
    if not dynamic:
        return model.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="slimserve-mixed-") as tmp:
        source, target = Path(tmp) / "source.onnx", Path(tmp) / "mixed.onnx"
        onnx.save(model, source)
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=settings.per_channel,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=[node for node in chosen if node not in dynamic],
        )
        return target.read_bytes()
