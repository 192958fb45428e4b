"""What a user's ONNX graph takes and returns, read from the graph, and its calibration rows.

Every input and output becomes a TensorSpec: its name, its Open Inference Protocol datatype
(ONNX_DATATYPES; a string tensor is BYTES) and its shape, each dimension the graph leaves
open (a symbolic name or none) as -1. slimserve batches along the first dimension, so the
graph must say what that is:

- *batched*: every input's and output's first dimension is open. The first dimension is the
  batch (-1), requests are merged up to `max_batch_size` rows; the build checks that every
  output really has one row per input row.
- *fixed*: every input's first dimension is the same number N (a graph exported with batch
  1). Then a request is exactly N rows, as the graph takes, the TensorSpec keeps N, and
  `max_batch_size` is N so that no two requests are merged (Triton's max_batch_size 0, in
  slimserve's terms: the codec refuses any other first dimension).

Anything else is refused with the tensor named: a scalar input (no dimension to batch), inputs
that disagree (one batched, one fixed), an output that is not a tensor (a scikit-learn
ZipMap's `seq(map(...))`), or an element type ONNX Runtime's Python API cannot carry.

Calibration rows (`.npy` for a one-input graph, `.npz` with one array per input name) hold
rows along the first dimension; each array is checked against its input's datatype and shape.
Strings may be saved as numpy `str` or `bytes` arrays (`.npz` cannot hold object arrays
without pickle, which is never loaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from slimserve.repository.format import DATATYPE_DTYPES, Datatype, RepositoryError, TensorSpec

# ONNX Runtime's type strings → the Open Inference Protocol's datatypes.
ONNX_DATATYPES: dict[str, Datatype] = {
    "tensor(bool)": "BOOL", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}  # fmt: skip
ZIPMAP_HINT = (
    "a scikit-learn converter's ZipMap returns a list of dicts; convert with "
    "options={id(model): {'zipmap': False}} (skl2onnx) for a probabilities tensor"
)


@dataclass(frozen=True)
class GraphSignature:
    """A graph's inputs and outputs as TensorSpecs, and how it batches (module docstring).

    `fixed_batch` is None for a batched graph, else the N every request must have."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    fixed_batch: int | None

    @property
    def rows_per_call(self) -> int | None:
        """Rows one session call must take: N for a fixed graph, any (None) for a batched one."""
        return self.fixed_batch


def _datatype(node: Any, what: str) -> Datatype:
    if node.type not in ONNX_DATATYPES:
        hint = f"; {ZIPMAP_HINT}" if node.type.startswith(("seq(", "map(")) else ""
        raise RepositoryError(
            f"{what} {node.name!r} is {node.type}: slimserve serves tensors of "
            f"{', '.join(sorted(set(ONNX_DATATYPES.values())))}{hint}"
        )
    return ONNX_DATATYPES[node.type]


def _dims(node: Any) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in node.shape]


def read_signature(session: ort.InferenceSession, path: Path) -> GraphSignature:
    """The graph's TensorSpecs and batching (module docstring); RepositoryError naming the
    tensor for anything slimserve cannot serve."""
    inputs = [(node, _datatype(node, "input"), _dims(node)) for node in session.get_inputs()]
    outputs = [(node, _datatype(node, "output"), _dims(node)) for node in session.get_outputs()]
    scalars = [node.name for node, _, dims in inputs if not dims]
    if scalars:
        raise RepositoryError(f"{path}: input(s) {scalars} are scalars; slimserve batches along a first dimension")
    firsts = {node.name: dims[0] for node, _, dims in inputs}
    if all(first == -1 for first in firsts.values()):
        fixed = None
    elif len(set(firsts.values())) == 1:
        fixed = next(iter(firsts.values()))
    else:
        raise RepositoryError(
            f"{path}: the inputs' first dimensions differ ({firsts}; -1 = open); slimserve batches along the "
            "first dimension, which must be open for every input (a batch) or the same fixed size for all"
        )
    specs_out = []
    for node, datatype, dims in outputs:
        if not dims:
            raise RepositoryError(
                f"{path}: output {node.name!r} declares no dimensions; every output needs a row per input row"
            )
        first = -1 if fixed is None else fixed
        specs_out.append(TensorSpec(name=node.name, datatype=datatype, shape=[first, *dims[1:]]))
    specs_in = [TensorSpec(name=node.name, datatype=datatype, shape=dims) for node, datatype, dims in inputs]
    return GraphSignature(specs_in, specs_out, fixed)


def _as_input(path: Path, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """`array` as the dtype `spec` takes, or RepositoryError saying what differs."""
    if spec.datatype == "BYTES":
        if array.dtype.kind not in "US":
            raise RepositoryError(f"{path}: input {spec.name!r} takes strings (BYTES); its rows are {array.dtype}")
        text = array.astype(np.str_) if array.dtype.kind == "U" else np.char.decode(array, "utf-8")
        return text.astype(np.object_)
    want = np.dtype(DATATYPE_DTYPES[spec.datatype])
    if array.dtype == want:
        return array
    same_kind = (array.dtype.kind == "f" and want.kind == "f") or (array.dtype.kind in "iub" and want.kind in "iub")
    cast = array.astype(want) if same_kind else None
    if cast is None or (want.kind != "f" and not np.array_equal(cast.astype(array.dtype), array)):
        raise RepositoryError(
            f"{path}: input {spec.name!r} takes {spec.datatype} ({want}); its rows are {array.dtype}"
            + (" with values outside that type" if cast is not None else "")
        )
    return cast


def load_rows(path: Path, inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Calibration rows for every input, checked against `inputs` (module docstring)."""
    names = [spec.name for spec in inputs]
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"{path}: cannot read calibration data: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise RepositoryError(f"{path}: the model has inputs {names}; give an .npz with one array each")
        arrays = {names[0]: loaded}
    else:
        missing = [name for name in names if name not in loaded.files]
        if missing:
            raise RepositoryError(f"{path}: no array for input(s) {missing} (found {loaded.files})")
        arrays = {name: loaded[name] for name in names}
    rows: dict[str, np.ndarray] = {}
    for spec in inputs:
        array = arrays[spec.name]
        if array.ndim != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(array.shape[1:], spec.shape[1:], strict=True)
        ):
            raise RepositoryError(
                f"{path}: rows of input {spec.name!r} have shape {list(array.shape)}; the graph takes "
                f"{spec.shape} (-1: any), rows along the first dimension"
            )
        rows[spec.name] = _as_input(path, spec, array)
    counts = {name: len(array) for name, array in rows.items()}
    if len(set(counts.values())) != 1:
        raise RepositoryError(f"{path}: inputs have different numbers of rows: {counts}")
    return rows


def run_all(
    session: ort.InferenceSession, inputs: dict[str, np.ndarray], rows_per_call: int | None, chunk_rows: int = 64
) -> dict[str, np.ndarray]:
    """Every output for every row, `rows_per_call` rows a call (a fixed graph) or `chunk_rows`."""
    step = rows_per_call or chunk_rows
    count = len(next(iter(inputs.values())))
    names = [node.name for node in session.get_outputs()]
    parts = [
        session.run(names, {k: v[start : start + step] for k, v in inputs.items()}) for start in range(0, count, step)
    ]
    return {name: np.concatenate([part[i] for part in parts]) for i, name in enumerate(names)}


def check_rows_follow_batch(session: ort.InferenceSession, rows: dict[str, np.ndarray], path: Path) -> None:
    """A batched graph's outputs must have one row per input row, or merging requests would
    hand one caller another's rows: checked with one and with two rows."""
    names = [node.name for node in session.get_outputs()]
    for count in (1, 2):
        outputs = session.run(names, {k: v[:count] for k, v in rows.items()})
        wrong = {
            name: list(np.shape(out))
            for name, out in zip(names, outputs, strict=True)
            if np.ndim(out) == 0 or len(out) != count
        }
        if wrong:
            raise RepositoryError(
                f"{path}: with {count} input row(s), output(s) {wrong} do not have {count} row(s); slimserve "
                "batches along the first dimension, so every output needs one row per input row"
            )
