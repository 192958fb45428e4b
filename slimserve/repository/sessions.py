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


def run_batched(session: ort.InferenceSession, inputs: dict[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
    """The first output for every row, computed `batch_size` rows at a time."""
    count = len(next(iter(inputs.values())))
    parts = [
        session.run(None, {k: v[start : start + batch_size] for k, v in inputs.items()})[0]
        for start in range(0, count, batch_size)
    ]
    return np.concatenate(parts)
