"""Self-attention fused into one operator before dynamic int8 quantization.

Exported as plain ONNX, a BERT layer's attention is about twenty small operators (three
projections, reshapes, transposes, two batched MatMuls, a softmax); ONNX Runtime's
transformer optimizer rewrites each such block into one `com.microsoft.Attention` with a
packed QKV weight, which dynamic quantization then turns into `QAttention`: the input is
quantized once for Q, K and V together and the small operators' per-call overhead goes.
At batch 1 that overhead is a large share of an int8 encoder's time, since its MatMuls are
already cheap. The optimizer reads every layer's head count from the graph, so a pruned
encoder whose layers keep different numbers of heads fuses too.

Whether the fused graph is faster, and whether one scale for the packed QKV weight keeps
the quality, depends on the chip and the weights: `variants.quantize` builds it as one more
candidate and measures it like the others.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def fused_attention(graph: bytes) -> bytes | None:
    """`graph` with every BERT self-attention block as one Attention operator (and its
    LayerNorms and GELUs fused as ONNX Runtime does), or None where no block was found or
    the optimizer failed on the graph."""
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory(prefix="slimserve-fuse-") as tmp:
        source, target = Path(tmp) / "graph.onnx", Path(tmp) / "fused.onnx"
        source.write_bytes(graph)
        try:
            # num_heads/hidden_size 0: read from each block's reshapes (pruned layers differ).
            model = optimize_model(str(source), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
        except Exception as exc:  # the optimizer asserts on graphs it does not expect
            log.info("attention fusion: the optimizer failed (%s)", exc)
            return None
        fused = model.get_fused_operator_statistics().get("Attention", 0)
        if not fused:
            return None
        log.info("attention fusion: %d attention blocks fused", fused)
        model.save_model_to_file(str(target))
        return target.read_bytes()
