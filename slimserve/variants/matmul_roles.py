"""The MatMuls of a graph that int8 can rewrite, and the role each plays in its layer.

A transformer repeats the same layer: `/layers.3/feed_forward/down/MatMul` plays the role
`/layers.*/feed_forward/down/MatMul` in layer 3. Sensitivity to quantization follows the
role much more than the layer (measured on minilm: keeping one role's six MatMuls in float
recovers up to 3x more quality than keeping any one layer's), so the mixed-precision
search decides per role and the number of choices stays small whatever the depth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

# A layer index in a node name: `/layers.3/`, `.layer.3.`, `_h_3_`; it becomes `*`.
_LAYER_INDEX = re.compile(r"(?<=[./_])\d+(?=[./_])")


@dataclass(frozen=True)
class WeightedMatMul:
    """A MatMul whose second input is a constant 2-D weight: its node, input and size."""

    node: str
    activation: str  # the tensor it multiplies (what dynamic int8 quantizes per call)
    weight: str
    count: int  # weights in the matrix

    @property
    def role(self) -> str:
        return role_of(self.node)


def role_of(node_name: str) -> str:
    """The node's name with its layer index replaced by `*`."""
    return _LAYER_INDEX.sub("*", node_name)


def weighted_matmuls(model: onnx.ModelProto) -> list[WeightedMatMul]:
    """Every MatMul with a constant 2-D weight, in graph order."""
    constants = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in constants:
            dims = constants[node.input[1]].dims
            if len(dims) == 2:
                found.append(WeightedMatMul(node.name, node.input[0], node.input[1], int(dims[0] * dims[1])))
    return found


def roles(model: onnx.ModelProto) -> dict[str, list[WeightedMatMul]]:
    """The weighted MatMuls grouped by role, roles in order of first appearance."""
    grouped: dict[str, list[WeightedMatMul]] = {}
    for matmul in weighted_matmuls(model):
        grouped.setdefault(matmul.role, []).append(matmul)
    return grouped
