"""Deep Compression's storage figure: a graph's weights entropy-coded, plus its structure.

Han et al. report "compressed size" after Huffman-coding the quantized weights: a value that
occurs often gets a short code. We compute, for every constant tensor of the ONNX graph, the
exact length of its bytes under a Huffman code built from that tensor's own byte
frequencies, plus one byte per symbol for the code book (canonical codes need only each
symbol's code length), plus the graph with its weights removed. Coding bytes rather than
values is what a storage format could do for any tensor type: an int8 tensor's bytes are
its values; a float tensor's bytes code poorly, as they should.
"""

from __future__ import annotations

import heapq

import numpy as np
import onnx
from onnx import numpy_helper


def huffman_bits(counts: np.ndarray) -> int:
    """Total length in bits of data with these symbol counts under an optimal prefix code."""
    weights = [int(c) for c in counts if c > 0]
    if len(weights) <= 1:
        return sum(weights)  # one symbol still needs a bit per occurrence to be decodable
    heapq.heapify(weights)
    total = 0
    while len(weights) > 1:
        merged = heapq.heappop(weights) + heapq.heappop(weights)
        total += merged  # every merge adds one bit to each occurrence below it
        heapq.heappush(weights, merged)
    return total


def coded_tensor_bytes(raw: bytes) -> int:
    """Bytes of `raw` Huffman-coded by its own byte frequencies, code book included."""
    counts = np.bincount(np.frombuffer(raw, dtype=np.uint8), minlength=256)
    return -(-huffman_bits(counts) // 8) + int(np.count_nonzero(counts))


def coded_bytes(graph: bytes) -> int:
    """The graph's size with every weight tensor Huffman-coded (see the module docstring)."""
    model = onnx.load_from_string(graph)
    weights = 0
    for tensor in model.graph.initializer:
        raw = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
        weights += coded_tensor_bytes(raw)
    del model.graph.initializer[:]
    return weights + len(model.SerializeToString())
