"""Int8 embedding tables: a Gather on int8 rows, then one scale per gathered row.

minilm's word-embedding table is 30,522 × 384 floats, 47 MB of its 90 MB, and a call reads
only its own tokens' rows. Stored as int8 with one symmetric scale per row, the table is a
quarter of the size; the graph gathers the int8 rows and their scales and multiplies
(Gather, Gather, Cast, Unsqueeze, Mul: a few microseconds at 32 tokens). Per-row scales
keep a rare token's small row as precise as a common token's large one. Only tables of at
least MIN_TABLE_ROWS rows are rewritten: smaller ones (positions, token types) save little.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_TABLE_ROWS = 1024
INT8_MAX = 127


def embedding_tables(model: onnx.ModelProto) -> list[str]:
    """Names of the Gather nodes that alone read a float 2-D constant of at least MIN_TABLE_ROWS rows."""
    constants = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    found = []
    for node in model.graph.node:
        table = constants.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or axis != 0 or len(table.dims) != 2 or table.dims[0] < MIN_TABLE_ROWS:
            continue
        # A table another node also reads (tied weights) must stay float for it.
        if table.data_type == TensorProto.FLOAT and readers[table.name] == 1:
            found.append(node.name)
    return found


def quantize_embeddings(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose large embedding tables (embedding_tables) are int8 per row."""
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    graph = quantized.graph
    constants = {t.name: t for t in graph.initializer}
    for name in embedding_tables(quantized):
        index = next(i for i, n in enumerate(graph.node) if n.name == name)
        gather = graph.node[index]
        table_name, ids, output = gather.input[0], gather.input[1], gather.output[0]
        table = numpy_helper.to_array(constants[table_name])
        scale = (np.abs(table).max(axis=1) / INT8_MAX).clip(min=np.finfo(np.float32).tiny).astype(np.float32)
        codes = np.round(table / scale[:, None]).clip(-INT8_MAX, INT8_MAX).astype(np.int8)
        graph.initializer.remove(constants[table_name])
        prefix = f"{name}_int8"
        graph.initializer.extend([
            numpy_helper.from_array(codes, f"{prefix}_codes"),
            numpy_helper.from_array(scale, f"{prefix}_scales"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{prefix}_last_axis"),
        ])  # fmt: skip
        replacement = [
            helper.make_node("Gather", [f"{prefix}_codes", ids], [f"{prefix}_rows"], name=f"{prefix}_rows"),
            helper.make_node("Gather", [f"{prefix}_scales", ids], [f"{prefix}_row_scales"], name=f"{prefix}_scales"),
            helper.make_node(
                "Cast", [f"{prefix}_rows"], [f"{prefix}_float"], name=f"{prefix}_cast", to=TensorProto.FLOAT
            ),
            helper.make_node(
                "Unsqueeze",
                [f"{prefix}_row_scales", f"{prefix}_last_axis"],
                [f"{prefix}_column"],
                name=f"{prefix}_column",
            ),
            helper.make_node("Mul", [f"{prefix}_float", f"{prefix}_column"], [output], name=f"{prefix}_dequantize"),
        ]
        del graph.node[index]
        for offset, node in enumerate(replacement):
            graph.node.insert(index + offset, node)
    return quantized
