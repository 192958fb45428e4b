"""Generic ONNX models served and called with tritonclient, as a Triton user calls them.

The zoo (tests.variants.onnx_zoo) is built through `slimserve build --onnx` into one
repository, served on port 0, and called with `tritonclient.grpc`: each answer equals ONNX
Runtime's on the fp32 graph; BYTES travel both ways, over the wire and through system shared
memory; a malformed BYTES length prefix is INVALID_ARGUMENT naming the input; every numeric
datatype decodes from raw and typed contents; Triton's ModelConfig names every datatype, and
says max_batch_size 0 with whole shapes for a graph that fixes its first dimension (as Triton
configures such a model). Raw requests use tritonclient's own messages (slimserve's generated
`inference` module cannot share a process with them), as tests/server/test_codec_limits.py does.
"""

from __future__ import annotations

import os
import random
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, serialize_byte_tensor

from loadtest.messages import triton_inputs
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
    graphs["fixed"] = _fixed(folder)
    for name in ("types", "fixed"):
        assert main(["build", "--repository", str(folder / "repo"), "--onnx", str(graphs[name]), "--name", name]) == 0
    return folder / "repo", graphs


def _fixed(folder: Path) -> Path:
    """A graph exported with its first dimension fixed at 2: FP64 [2, 3] doubled."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "X"], ["Y"])],
        "fixed",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [2, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_zoo.OPSET)])
    model.ir_version = 8
    onnx.save(model, folder / "fixed.onnx")
    return folder / "fixed.onnx"


@pytest.fixture(scope="module")
def server(zoo: tuple[Path, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(zoo[0], tmp_path_factory.mktemp("server"))
    yield running
    assert running.stop() == 0


def _fp32(graph: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, arrays), strict=True))


def test_tritons_simple_model_adds_and_subtracts(server: RunningServer, zoo: tuple[Path, dict[str, Path]]) -> None:
    rng = np.random.default_rng(5)
    arrays = {n: rng.integers(-100, 100, (3, 16), dtype=np.int32) for n in ("INPUT0", "INPUT1")}
    client = triton.InferenceServerClient(server.address)
    answer = client.infer("simple", triton_inputs(arrays))
    expected = _fp32(zoo[1]["simple"], arrays)
    assert answer.as_numpy("OUTPUT0").dtype == np.int32
    assert np.array_equal(answer.as_numpy("OUTPUT0"), arrays["INPUT0"] + arrays["INPUT1"])
    assert np.array_equal(answer.as_numpy("OUTPUT1"), expected["OUTPUT1"])


def test_bytes_travel_both_ways(server: RunningServer) -> None:
    words = np.array([["hello", "wörld"], ["", "ünïcode 7"]], dtype=np.object_)
    client = triton.InferenceServerClient(server.address)
    answer = client.infer("echo", triton_inputs({"TEXT": words}))
    assert [b.decode() for b in answer.as_numpy("ECHO").ravel()] == words.ravel().tolist()
    encoded = np.array([w.encode() for w in words.ravel()], dtype=np.object_).reshape(2, 2)
    assert answer.as_numpy("ECHO").tolist() == encoded.tolist()


def test_bytes_travel_through_system_shared_memory(server: RunningServer) -> None:
    words = np.array([["shared", "mémoire"], ["", "x" * 300]], dtype=np.object_)
    serialized = serialize_byte_tensor(words)  # Triton's serialization: each element's length, then its bytes
    size = len(serialized.item())
    key = f"/slimserve-test-{os.getpid()}-echo"
    handle = shm.create_shared_memory_region("echo", key, 2 * size)
    try:
        shm.set_shared_memory_region(handle, [serialized])
        with triton.InferenceServerClient(server.address) as client:
            client.register_system_shared_memory("echo", key, 2 * size)
            try:
                text = triton.InferInput("TEXT", [2, 2], "BYTES")
                text.set_shared_memory("echo", size)
                echoed = triton.InferRequestedOutput("ECHO")
                echoed.set_shared_memory("echo", size, offset=size)
                client.infer("echo", [text], outputs=[echoed])
                tight = triton.InferRequestedOutput("ECHO")
                tight.set_shared_memory("echo", size - 1, offset=size)
                with pytest.raises(InferenceServerException, match=f"output 'ECHO': {size} bytes do not fit"):
                    client.infer("echo", [text], outputs=[tight])
            finally:
                client.unregister_system_shared_memory()
        answer = shm.get_contents_as_numpy(handle, np.object_, [2, 2], offset=size)
        assert [[b.decode() for b in row] for row in answer] == words.tolist()
    finally:
        shm.destroy_shared_memory_region(handle)


def test_a_multi_output_model_answers_as_onnx_runtime(server: RunningServer, zoo: tuple[Path, dict[str, Path]]) -> None:
    rows = np.random.default_rng(6).standard_normal((4, 64)).astype(np.float32)
    client = triton.InferenceServerClient(server.address)
    answer = client.infer("mlp", triton_inputs({"X": rows}), model_version="fp32")
    expected = _fp32(zoo[1]["mlp"], {"X": rows})
    for name in ("EMBED", "SCORE", "LABEL"):
        assert np.array_equal(answer.as_numpy(name), expected[name]), name
    routed = client.infer("mlp", triton_inputs({"X": rows}))  # whichever variant the router picks: every output there
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
        triton.InferenceServerClient(server.address).infer("simple", triton_inputs(arrays))


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
    raw = triton.InferenceServerClient(server.address).infer("types", triton_inputs({name: expected, **others}))
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


def test_model_config_names_every_datatype(server: RunningServer) -> None:
    with triton.InferenceServerClient(server.address) as client:
        types = client.get_model_config("types").config
        echo = client.get_model_config("echo").config
    data_type = model_config_pb2.DataType.Name
    expected = {"I16": "TYPE_INT16", "U16": "TYPE_UINT16", "U32": "TYPE_UINT32", "U64": "TYPE_UINT64",
                "F64": "TYPE_FP64", "FLAG": "TYPE_BOOL"}  # fmt: skip
    assert {t.name: data_type(t.data_type) for t in types.input} == expected
    assert {t.name: data_type(t.data_type) for t in types.output} == {f"{n}_OUT": t for n, t in expected.items()}
    assert all(list(t.dims) == [2] for t in types.input)  # batched: the dims leave the batch out
    assert types.max_batch_size > 0 and types.HasField("dynamic_batching")
    assert [(t.name, data_type(t.data_type)) for t in echo.input] == [("TEXT", "TYPE_STRING")]  # Triton's BYTES
    assert [(t.name, data_type(t.data_type)) for t in echo.output] == [("ECHO", "TYPE_STRING")]


def test_a_fixed_shape_graph_is_configured_as_tritons_max_batch_size_0(server: RunningServer) -> None:
    with triton.InferenceServerClient(server.address) as client:
        config = client.get_model_config("fixed").config
        metadata = client.get_model_metadata("fixed")
        # What a Triton client does with that config: the dims are the whole shape to send.
        rows = np.arange(6, dtype=np.float64).reshape(list(config.input[0].dims))
        answer = client.infer("fixed", triton_inputs({"X": rows}))
        with pytest.raises(InferenceServerException, match="dimension 0 is 1; the model's graph fixes it at 2"):
            client.infer("fixed", triton_inputs({"X": rows[:1]}))
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("X", [2, 3])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("Y", [2, 3])]
    assert [list(t.shape) for t in metadata.inputs] == [[2, 3]]  # Triton's metadata for max_batch_size 0
    assert np.array_equal(answer.as_numpy("Y"), rows * 2)


BYTES_FUZZ_CASES = 600
VALID_SHARE = 0.25  # of the cases: well formed, so that answering them is tested too


def _bytes_case(rng: random.Random) -> service_pb2.ModelInferRequest:
    """A BYTES request to the echo model, well formed or broken in one of the ways a client
    can break Triton's serialization: prefixes past the end or short, bytes left over, not
    UTF-8, a shape that disagrees with the elements, typed and raw contents mixed, huge counts."""
    if rng.random() < VALID_SHARE:  # a well-formed request: it must be echoed
        rows = rng.randrange(1, 4)  # the echo model's TEXT is [-1, 2]
        words = ["".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(160, 0x2FFF)])) for _ in range(n))
                 for n in (rng.randrange(0, 30) for _ in range(2 * rows))]  # fmt: skip
        valid = service_pb2.ModelInferRequest(model_name="echo")
        valid.inputs.add(name="TEXT", datatype="BYTES", shape=[rows, 2])
        valid.raw_input_contents.append(b"".join(struct.pack("<I", len(w.encode())) + w.encode() for w in words))
        return valid
    count = rng.choice([0, 1, 2, 3, 7, 1 << 20, 1 << 62])
    shape = rng.choice([[1, count], [count, 1], [1, max(count - 1, 0)], [1, count, 1], [-1, count]])
    request = service_pb2.ModelInferRequest(model_name="echo", id=rng.choice(["", "bytes-fuzz"]))
    request.inputs.add(name=rng.choice(["TEXT", "TEXT", "text", ""]), datatype=rng.choice(["BYTES"] * 4 + ["INT8"]),
                       shape=shape)  # fmt: skip
    elements = [bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 5, 40]))) for _ in range(min(count, 8))]
    if rng.random() < 0.6:
        elements = [e.decode("latin-1").encode() for e in elements]  # valid UTF-8 most of the time
    if rng.random() < 0.2:
        request.inputs[0].contents.bytes_contents.extend(elements)
    else:
        parts = []
        for element in elements:
            declared = len(element) + rng.choice([0, 0, 0, 1, -1, 1 << 31, rng.getrandbits(32)])
            parts.append(struct.pack("<I", max(declared, 0) % (1 << 32)) + element)
        tail = rng.choice([b"", b"", b"\x00", b"\x01\x00\x00", bytes(5)])
        request.raw_input_contents.append(b"".join(parts) + tail)
        if rng.random() < 0.1:
            request.inputs[0].contents.bytes_contents.append(b"mixed")
    return request


def test_bytes_fuzz_gets_no_internal_error(server: RunningServer) -> None:
    """Issue 24: seeded BYTES cases against the echo model; every answer a defined status,
    never INTERNAL, and the server still echoes afterwards."""
    rng = random.Random(24)
    codes: Counter[str] = Counter()
    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(BYTES_FUZZ_CASES):
            try:
                stub.ModelInfer(_bytes_case(rng), timeout=30)
                codes["OK"] += 1
            except grpc.RpcError as refused:
                codes[refused.code().name] += 1  # type: ignore[attr-defined]
    print(f"\nbytes fuzz: {dict(codes)}")
    assert not {"INTERNAL", "UNKNOWN"} & set(codes) and codes["OK"] > 0 and codes["INVALID_ARGUMENT"] > 0
    still = np.array([[b"still", b"here"]], dtype=np.object_)
    answer = triton.InferenceServerClient(server.address).infer("echo", triton_inputs({"TEXT": still}))
    assert answer.as_numpy("ECHO").tolist() == still.tolist()
