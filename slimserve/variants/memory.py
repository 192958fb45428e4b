"""Memory per variant: what a fresh process gains by loading a session and running it.

On an edge device memory is the first limit, and a graph's file size says little about it:
ONNX Runtime pre-packs weights, keeps arenas for activations, and may hold a float copy of
what it dequantizes. So each graph is loaded in a fresh Python process that imports only
numpy and ONNX Runtime, reads its input batch, notes its resident memory, creates the
session, runs the batch a few times, and reports its peak resident memory; the difference
is the session's (`session_rss_bytes`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

WARM_UP_RUNS = 3
MEASURE_TIMEOUT_S = 300


def _proc_kib(path: str, field: str) -> int | None:
    """A `Field:  N kB` figure of a /proc file; None where the file or the field is missing."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def available_memory_bytes() -> int | None:
    """What the kernel says can be allocated without swapping (MemAvailable); None off Linux."""
    kib = _proc_kib("/proc/meminfo", "MemAvailable")
    return None if kib is None else kib * 1024


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc (VmRSS: now; VmHWM: peak)."""
    kib = _proc_kib("/proc/self/status", field)
    if kib is None:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return kib


def _measure(onnx_path: str, inputs_path: str, threads: int) -> dict[str, int]:
    """Runs in the fresh process: RSS before the session, and peak RSS after warm-up."""
    import onnxruntime as ort

    inputs = dict(np.load(inputs_path))
    before = _status_kib("VmRSS")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    for _ in range(WARM_UP_RUNS):
        session.run(None, inputs)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a child of a
    # large build process would report the parent's peak.
    return {"before_kib": before, "peak_kib": _status_kib("VmHWM")}


def session_rss_bytes(graph: bytes, inputs: dict[str, np.ndarray], threads: int) -> int:
    """Peak RSS a fresh process gains from loading `graph` and running it on `inputs`."""
    with tempfile.TemporaryDirectory(prefix="slimserve-memory-") as tmp:
        onnx_path, inputs_path = Path(tmp) / "model.onnx", Path(tmp) / "inputs.npz"
        onnx_path.write_bytes(graph)
        np.savez(inputs_path, **inputs)  # type: ignore[arg-type]  # numpy types **kwds loosely
        answer = subprocess.run(
            [sys.executable, "-m", "slimserve.variants.memory", str(onnx_path), str(inputs_path), str(threads)],
            capture_output=True,
            text=True,
            timeout=MEASURE_TIMEOUT_S,
            check=False,
        )
    if answer.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {answer.stderr.strip().splitlines()[-1:]}")
    figures = json.loads(answer.stdout.strip().splitlines()[-1])
    return max(0, figures["peak_kib"] - figures["before_kib"]) * 1024


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
