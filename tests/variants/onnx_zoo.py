"""A zoo of ONNX models a user might bring, made with onnx.helper, with calibration rows.

- `simple`: Triton's own example model (qa/common/gen_qa_models.py, "simple"): two INT32
  inputs INPUT0 and INPUT1 of [batch, 16], OUTPUT0 = their sum, OUTPUT1 = their difference.
- `echo`: a BYTES identity, a string tensor in and the same out.
- `mlp`: a float MLP with three outputs (an embedding, a score per row, the argmax as INT64):
  MatMuls, so int8, fp16 and int4 apply.
- `types`: one identity per datatype beyond FP32/INT64 (INT16, UINT16, UINT32, UINT64, FP64,
  BOOL), built without calibration rows.
- `squeezenet`: a third-party graph that an installed package ships, ONNX's backend test
  model `light_squeezenet.onnx` (onnx/backend/test/data/light: SqueezeNet 1.0 with its weights
  made by ConstantOfShape; fixed shape [1, 3, 224, 224]).
- `iris`: ONNX Runtime's `datasets/logreg_iris.onnx` (a scikit-learn logistic regression)
  whose second output is a ZipMap (`seq(map(int64, tensor(float)))`): refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
ROWS = 40
SQUEEZENET = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
IRIS = Path(onnxruntime.__file__).parent / "datasets/logreg_iris.onnx"


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def simple(folder: Path) -> tuple[Path, Path]:
    """Triton's `simple` and 40 rows of INT32 pairs."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16]) for n in ("INPUT0", "INPUT1")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16]) for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    rng = np.random.default_rng(0)
    rows = {name: rng.integers(-1000, 1000, (ROWS, 16), dtype=np.int32) for name in ("INPUT0", "INPUT1")}
    np.savez(folder / "simple.npz", INPUT0=rows["INPUT0"], INPUT1=rows["INPUT1"])
    return _save(helper.make_graph(nodes, "simple", inputs, outputs), folder / "simple.onnx"), folder / "simple.npz"


def echo(folder: Path) -> tuple[Path, Path]:
    """A string identity over [batch, 2] and 40 rows of words (a numpy str array)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["TEXT"], ["ECHO"])],
        "echo",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("ECHO", TensorProto.STRING, ["batch", 2])],
    )
    words = np.array([[f"word {i}", f"ünïcode {i * 7}"] for i in range(ROWS)])
    np.savez(folder / "echo.npz", TEXT=words)
    return _save(graph, folder / "echo.onnx"), folder / "echo.npz"


def mlp(folder: Path) -> tuple[Path, Path]:
    """X [batch, 64] → MatMul 128 → Relu → MatMul 32 = EMBED; SCORE = its sum; LABEL = argmax."""
    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array((rng.standard_normal((64, 128)) / 8).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((128, 32)) / 11).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["X", "w1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["active"]),
        helper.make_node("MatMul", ["active", "w2"], ["EMBED"]),
        helper.make_node("ReduceSum", ["EMBED", "axes"], ["SCORE"], keepdims=1),
        helper.make_node("ArgMax", ["EMBED"], ["LABEL"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info("EMBED", TensorProto.FLOAT, ["batch", 32]),
            helper.make_tensor_value_info("SCORE", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("LABEL", TensorProto.INT64, ["batch"]),
        ],
        initializer=[w1, w2, numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    np.save(folder / "mlp.npy", rng.standard_normal((ROWS * 2, 64)).astype(np.float32))
    return _save(graph, folder / "mlp.onnx"), folder / "mlp.npy"


TYPES = {"I16": TensorProto.INT16, "U16": TensorProto.UINT16, "U32": TensorProto.UINT32,
         "U64": TensorProto.UINT64, "F64": TensorProto.DOUBLE, "FLAG": TensorProto.BOOL}  # fmt: skip


def types(folder: Path) -> Path:
    """Identity of one [batch, 2] input of each datatype beyond FP32 and INT64 (no calibration)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], [f"{name}_OUT"]) for name in TYPES],
        "types",
        [helper.make_tensor_value_info(name, kind, ["batch", 2]) for name, kind in TYPES.items()],
        [helper.make_tensor_value_info(f"{name}_OUT", kind, ["batch", 2]) for name, kind in TYPES.items()],
    )
    return _save(graph, folder / "types.onnx")


def squeezenet(folder: Path, rows: int = 10) -> tuple[Path, Path]:
    """The shipped light SqueezeNet and `rows` random images."""
    rng = np.random.default_rng(2)
    np.save(folder / "squeezenet.npy", rng.random((rows, 3, 224, 224), dtype=np.float32))
    return SQUEEZENET, folder / "squeezenet.npy"
