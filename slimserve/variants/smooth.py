"""SmoothQuant on an ONNX graph: move activation outliers into the weights before int8.

Dynamic int8 quantizes a MatMul's input with one scale per call, so a few channels with
large values (transformers have them: minilm's LayerNorm outputs reach 28 where the median
channel peaks at 1.9) leave the other channels a handful of levels. SmoothQuant (Xiao et
al., 2023) divides each input channel j by s_j = max|X_j|^α / max|W_j|^(1-α) and
multiplies row j of the weight by s_j: the product is unchanged in exact arithmetic, the
activations are flatter and the weights, quantized per output channel, absorb the range.
The division is one Mul per input tensor (shared by the MatMuls that read it), placed
before the first of them; α is measured, not assumed (minilm: 0.8 best of 0.3-1.0).
Maxima come from calibration rows, never from the held-out set.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from slimserve.repository.sessions import make_session
from slimserve.variants.matmul_roles import weighted_matmuls

MAXIMA_ROWS_PER_CALL = 32
# Channels that never fire would get an infinite scale; this floor keeps them finite.
SCALE_FLOOR = 1e-5
SUFFIX = "_smooth"


def input_maxima(model: onnx.ModelProto, rows: dict[str, np.ndarray], threads: int = 1) -> dict[str, np.ndarray]:
    """max |x| per channel (last axis) of every weighted MatMul's input over `rows`."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    wanted = sorted({m.activation for m in weighted_matmuls(model)})
    existing = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in existing:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = make_session(probe.SerializeToString(), threads)
    names = [o.name for o in session.get_outputs()]
    count = len(next(iter(rows.values())))
    maxima: dict[str, np.ndarray] = {}
    for start in range(0, count, MAXIMA_ROWS_PER_CALL):
        outputs = session.run(None, {k: v[start : start + MAXIMA_ROWS_PER_CALL] for k, v in rows.items()})
        for name, value in zip(names, outputs, strict=True):
            if name in wanted:
                peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
                maxima[name] = np.maximum(maxima[name], peak) if name in maxima else peak
    return maxima


def smooth(model: onnx.ModelProto, maxima: dict[str, np.ndarray], alpha: float) -> onnx.ModelProto:
    """A copy of `model` with every weighted MatMul's input smoothed at strength `alpha`."""
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    graph = smoothed.graph
    constants = {t.name: t for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    by_input: dict[str, list[str]] = {}
    for matmul in weighted_matmuls(smoothed):
        by_input.setdefault(matmul.activation, []).append(matmul.node)
    for activation, users in by_input.items():
        weights = {name: numpy_helper.to_array(constants[nodes[name].input[1]]) for name in users}
        weight_peak = np.max([np.abs(w).max(axis=1) for w in weights.values()], axis=0)
        scale = maxima[activation].clip(SCALE_FLOOR) ** alpha / weight_peak.clip(SCALE_FLOOR) ** (1 - alpha)
        scale = scale.astype(np.float32)
        inverse, flattened = activation + SUFFIX + "_inverse", activation + SUFFIX
        graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        for name, weight in weights.items():
            node = nodes[name]
            constants[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
            node.input[0] = flattened
        # Before the first reader, so the graph stays in topological order.
        first = min(i for i, n in enumerate(graph.node) if n.name in users)
        graph.node.insert(first, helper.make_node("Mul", [activation, inverse], [flattened], name=flattened))
    return smoothed
