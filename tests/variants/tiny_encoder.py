"""A tiny transformer-shaped ONNX graph for the int8 tests: made in milliseconds, runs in microseconds.

Token ids → a 1,024-row embedding table (large enough to count as a vocabulary for
variants.embedding_int8) → LAYERS residual blocks `x + down(relu(up(x)))`, whose MatMuls are
named as an exported transformer's are (`/layers.{i}/feed_forward/up/MatMul`) → the mean
over tokens. Channel OUTLIER_CHANNEL of the table is OUTLIER_SCALE× the others, the shape of
activation outliers that make per-tensor int8 lose precision (variants.smooth).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB = 1024
HIDDEN = 32
FFN = 64
LAYERS = 2
OUTLIER_CHANNEL = 3
OUTLIER_SCALE = 40.0
ROLES = ("/layers.*/feed_forward/up/MatMul", "/layers.*/feed_forward/down/MatMul")


def tiny_encoder(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    table = rng.normal(0, 1, (VOCAB, HIDDEN)).astype(np.float32)
    table[:, OUTLIER_CHANNEL] *= OUTLIER_SCALE
    initializers = [numpy_helper.from_array(table, "word.weight")]
    nodes = [helper.make_node("Gather", ["word.weight", "input_ids"], ["x0"], name="/word/Gather")]
    for layer in range(LAYERS):
        up = rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, FFN)).astype(np.float32)
        down = rng.normal(0, 1 / np.sqrt(FFN), (FFN, HIDDEN)).astype(np.float32)
        prefix = f"/layers.{layer}/feed_forward"
        initializers += [numpy_helper.from_array(up, f"up{layer}"), numpy_helper.from_array(down, f"down{layer}")]
        x, y = f"x{layer}", f"x{layer + 1}"
        nodes += [
            helper.make_node("MatMul", [x, f"up{layer}"], [f"{prefix}/up"], name=f"{prefix}/up/MatMul"),
            helper.make_node("Relu", [f"{prefix}/up"], [f"{prefix}/relu"], name=f"{prefix}/Relu"),
            helper.make_node(
                "MatMul", [f"{prefix}/relu", f"down{layer}"], [f"{prefix}/down"], name=f"{prefix}/down/MatMul"
            ),
            helper.make_node("Add", [x, f"{prefix}/down"], [y], name=f"{prefix}/Add"),
        ]
    nodes.append(helper.make_node("ReduceMean", [f"x{LAYERS}"], ["embedding"], axes=[1], keepdims=0, name="/pool"))
    graph = helper.make_graph(
        nodes,
        "tiny_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", HIDDEN])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def token_rows(count: int, tokens: int = 8, seed: int = 1) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, VOCAB, (count, tokens), dtype=np.int64)}
