"""ONNX Runtime sessions, for serving and for the build alike: numpy and ONNX Runtime only.

The serving process imports this and never torch (`variants.onnx_io` holds the torch export).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort


def make_session(model: bytes | str, threads: int) -> ort.InferenceSession:
    """A CPU session with a fixed thread count and no spinning.

    Spinning threads make sessions that share cores slow each other down (measured: 5×
    at batch 1 with eight sessions side by side), and a serving process holds many.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# Operators that compute an activation's quantization scale from the tensor at run time. Their
# names are stored as plain strings in the ONNX protobuf, so the graph's bytes are searched.
DYNAMIC_QUANTIZATION_OPS = (b"DynamicQuantizeLinear", b"DynamicQuantizeMatMul", b"DynamicQuantizeLSTM")


def merges_requests(graph: bytes) -> bool:
    """Whether requests may share a session call of this graph: not when it quantizes an
    activation at run time, since one scale over a merged batch lets one request's values
    move another's answer."""
    return not any(op in graph for op in DYNAMIC_QUANTIZATION_OPS)


def run_batched(session: ort.InferenceSession, inputs: dict[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
    """The first output for every row, computed `batch_size` rows at a time."""
    count = len(next(iter(inputs.values())))
    parts = [
        session.run(None, {k: v[start : start + batch_size] for k, v in inputs.items()})[0]
        for start in range(0, count, batch_size)
    ]
    return np.concatenate(parts)


def run_as_served(
    graph: bytes, inputs: dict[str, np.ndarray], lengths: np.ndarray, threads: int, batch_size: int = 64
) -> np.ndarray:
    """The first output for every row as the server answers it, for inputs padded along
    their second axis (`lengths`: each row's real length there; every input of rank 2 or
    more is cut). A graph that `merges_requests` runs `batch_size` rows of similar length at
    a time, each call cut to its longest row, as a merged batch is padded to its longest
    request; any other runs each row alone at its own length. The first output's shape must
    not depend on the length (an embedding does; per-token outputs do not qualify)."""
    session = make_session(graph, threads)
    order = np.argsort(lengths, kind="stable")
    step = batch_size if merges_requests(graph) else 1
    out: np.ndarray | None = None
    for start in range(0, len(order), step):
        rows = order[start : start + step]
        length = int(lengths[rows].max())
        part = session.run(None, {k: v[rows, :length] if v.ndim > 1 else v[rows] for k, v in inputs.items()})[0]
        if out is None:
            out = np.empty((len(order), *part.shape[1:]), dtype=part.dtype)
        out[rows] = part
    assert out is not None, "run_as_served needs at least one row"
    return out
