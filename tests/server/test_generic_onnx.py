"""Generic ONNX models served and called with tritonclient, as a Triton user calls them.

The zoo (tests.variants.onnx_zoo) is built through `slimserve build --onnx` into one
repository, served on port 0, and called with `tritonclient.grpc`: each answer equals ONNX
Runtime's on the fp32 graph; BYTES travel both ways; a malformed BYTES length prefix is
INVALID_ARGUMENT naming the input; every numeric datatype decodes from raw and typed contents.
Raw requests use tritonclient's own messages (slimserve's generated `inference` module cannot
share a process with them), as tests/server/test_codec_limits.py does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from loadtest.serving import RunningServer
from slimserve.cli import main
from tests.variants import onnx_zoo

ZOO = {"simple": onnx_zoo.simple, "echo": onnx_zoo.echo, "mlp": onnx_zoo.mlp}
DTYPES = {"I16": np.int16, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "F64": np.float64, "FLAG": np.bool_}
TYPED_FIELDS = {"I16": "int_contents", "U16": "uint_contents", "U32": "uint_contents", "U64": "uint64_contents",
                "F64": "fp64_contents", "FLAG": "bool_contents"}  # fmt: skip


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("zoo")
    graphs = {}
    for name, make in ZOO.items():
        graph, calibration = make(folder)
        graphs[name] = graph
        args = ["--onnx", str(graph), "--name", name, "--calibration", str(calibration)]
        assert main(["build", "--repository", str(folder / "repo"), *args]) == 0
    graphs["types"] = onnx_zoo.types(folder)  # no calibration: fp32 alone
    assert main(["build", "--repository", str(folder / "repo"), "--onnx", str(graphs["types"]), "--name", "types"]) == 0
    return folder / "repo", graphs


@pytest.fixture(scope="module")
def server(zoo: tuple[Path, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(zoo[0], tmp_path_factory.mktemp("server"))
    yield running
    assert running.stop() == 0


def _inputs(arrays: dict[str, np.ndarray]) -> list[triton.InferInput]:
    tensors = []
    for name, array in arrays.items():
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _fp32(graph: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, arrays), strict=True))


def test_tritons_simple_model_adds_and_subtracts(server: RunningServer, zoo: tuple[Path, dict[str, Path]]) -> None:
    rng = np.random.default_rng(5)
    arrays = {n: rng.integers(-100, 100, (3, 16), dtype=np.int32) for n in ("INPUT0", "INPUT1")}
    client = triton.InferenceServerClient(server.address)
    answer = client.infer("simple", _inputs(arrays))
    expected = _fp32(zoo[1]["simple"], arrays)
    assert answer.as_numpy("OUTPUT0").dtype == np.int32
    assert np.array_equal(answer.as_numpy("OUTPUT0"), arrays["INPUT0"] + arrays["INPUT1"])
    assert np.array_equal(answer.as_numpy("OUTPUT1"), expected["OUTPUT1"])


def test_bytes_travel_both_ways(server: RunningServer) -> None:
    words = np.array([["hello", "wörld"], ["", "ünïcode 7"]], dtype=np.object_)
    client = triton.InferenceServerClient(server.address)
    answer = client.infer("echo", _inputs({"TEXT": words}))
    assert [b.decode() for b in answer.as_numpy("ECHO").ravel()] == words.ravel().tolist()
    encoded = np.array([w.encode() for w in words.ravel()], dtype=np.object_).reshape(2, 2)
    assert answer.as_numpy("ECHO").tolist() == encoded.tolist()


def test_a_multi_output_model_answers_as_onnx_runtime(server: RunningServer, zoo: tuple[Path, dict[str, Path]]) -> None:
    rows = np.random.default_rng(6).standard_normal((4, 64)).astype(np.float32)
    client = triton.InferenceServerClient(server.address)
    answer = client.infer("mlp", _inputs({"X": rows}), model_version="fp32")
    expected = _fp32(zoo[1]["mlp"], {"X": rows})
    for name in ("EMBED", "SCORE", "LABEL"):
        assert np.array_equal(answer.as_numpy(name), expected[name]), name
    routed = client.infer("mlp", _inputs({"X": rows}))  # whichever variant the router picks: every output there
    assert routed.as_numpy("LABEL").dtype == np.int64 and routed.as_numpy("EMBED").shape == (4, 32)


def test_a_malformed_bytes_length_prefix_is_invalid_argument(server: RunningServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="echo")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 2])
    request.raw_input_contents.append(b"\x02\x00\x00\x00ok" + b"\xff\x00\x00\x00" + b"short")
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "input 'TEXT': element 1 declares 255 bytes; only 5 remain" in caught.value.details()  # type: ignore[attr-defined]


def test_a_wrong_datatype_names_the_input(server: RunningServer) -> None:
    arrays = {n: np.zeros((1, 16), dtype=np.int64) for n in ("INPUT0", "INPUT1")}
    with pytest.raises(InferenceServerException, match="input 'INPUT0': datatype 'INT64', expected INT32"):
        triton.InferenceServerClient(server.address).infer("simple", _inputs(arrays))


@pytest.mark.parametrize(
    ("name", "field", "values", "dtype"),
    [
        ("I16", "int_contents", [-32768, 32767], np.int16),
        ("U16", "uint_contents", [0, 65535], np.uint16),
        ("U32", "uint_contents", [0, 2**32 - 1], np.uint32),
        ("U64", "uint64_contents", [0, 2**64 - 1], np.uint64),
        ("F64", "fp64_contents", [0.5, -1e300], np.float64),
        ("FLAG", "bool_contents", [True, False], np.bool_),
    ],
)
def test_every_numeric_datatype_travels_raw_and_typed(
    server: RunningServer, name: str, field: str, values: list[Any], dtype: type
) -> None:
    expected: np.ndarray = np.array([values], dtype=dtype)
    others: dict[str, np.ndarray] = {n: np.zeros((1, 2), dtype=t) for n, t in DTYPES.items() if n != name}
    raw = triton.InferenceServerClient(server.address).infer("types", _inputs({name: expected, **others}))
    assert np.array_equal(raw.as_numpy(f"{name}_OUT"), expected)
    request = service_pb2.ModelInferRequest(model_name="types")
    for input_name in onnx_zoo.TYPES:
        tensor = request.inputs.add(name=input_name, datatype=np_to_triton_dtype(np.dtype(DTYPES[input_name])),
                                    shape=[1, 2])  # fmt: skip
        typed_field = TYPED_FIELDS[input_name]
        getattr(tensor.contents, typed_field).extend(values if input_name == name else [0, 0])
    with grpc.insecure_channel(server.address) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    index = [o.name for o in answer.outputs].index(f"{name}_OUT")
    assert np.array_equal(np.frombuffer(answer.raw_output_contents[index], dtype=dtype), expected.ravel())


def test_a_typed_value_outside_a_narrow_datatype_is_refused(server: RunningServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="types")
    for input_name in onnx_zoo.TYPES:
        tensor = request.inputs.add(name=input_name, datatype=np_to_triton_dtype(np.dtype(DTYPES[input_name])),
                                    shape=[1, 2])  # fmt: skip
        getattr(tensor.contents, TYPED_FIELDS[input_name]).extend([0, 70000] if input_name == "U16" else [0, 0])
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "input 'U16': contents.uint_contents holds 70000, outside UINT16's range" in caught.value.details()  # type: ignore[attr-defined]


def test_typed_bytes_contents_and_bad_utf8(server: RunningServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="echo")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 2]).contents.bytes_contents.extend([b"a", "ü".encode()])
    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(request, timeout=10)
        assert answer.raw_output_contents[0] == b"\x01\x00\x00\x00a\x02\x00\x00\x00" + "ü".encode()
        request.inputs[0].contents.bytes_contents[1] = b"\xff"
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=10)
    assert "input 'TEXT': BYTES element 1 is not UTF-8" in caught.value.details()  # type: ignore[attr-defined]
