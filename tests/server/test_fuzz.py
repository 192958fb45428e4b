"""Hostile input against a live server: every malformed request gets its documented code.

Hypothesis generates ModelInferRequests — random bytes, wrong and huge shapes, mismatched
byte lengths, NaN/Inf, empty tensors, unknown parameters, every datatype, ids and
parameter strings of a megabyte — and sends them to a real server. None may get INTERNAL
(or UNKNOWN), the process must not crash or grow without bound, and a well-formed call
afterwards must still be answered correctly. `make test` runs SLIMSERVE_FUZZ_EXAMPLES=2000
cases; `make soak` runs 20,000.

A second, structure-aware run aims at what a dimension-by-dimension check lets through on a
model with narrow integer inputs and unbounded dimensions (`narrow_model`): shapes whose
element count overflows int64, typed values beyond INT8 and UINT8 in their wider wire fields.
Each must be INVALID_ARGUMENT naming the input, with nothing in the server's log, and every
answer must be the right one.

Some tensors and requested outputs name a system shared memory region (the one the fuzz
server has registered, another, none) with offsets and sizes in and around it, of any
parameter type: those are answered or refused INVALID_ARGUMENT as well.

A third sends the same messages (and some only a stream makes cheap to send in numbers: ids
at and far past the limit, thousands of outputs) in ModelStreamInfer streams of up to eight:
each message gets its own answer, in order, with its id (or none when the id is too long to
echo), none INTERNAL, and every stream ends OK.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtest.messages import digits_request
from loadtest.serving import RunningServer
from slimserve.repository.format import ModelEntry
from slimserve.repository.sessions import make_session
from slimserve.server.transport.status import INTERNAL_MESSAGE
from slimserve.variants.data import load_digits_split
from tests.server import narrow_model

FUZZ_EXAMPLES = int(os.environ.get("SLIMSERVE_FUZZ_EXAMPLES", "2000"))
CALL_TIMEOUT_S = 30.0
MEGABYTE = 1 << 20
# What the README documents for bad input; INTERNAL and UNKNOWN never are.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
DATATYPES = ["FP32", "FP16", "BF16", "FP64", "INT64", "INT32", "INT16", "INT8", "UINT8", "UINT64", "BOOL", "BYTES"]
ITEMSIZE = {"FP32": 4, "FP16": 2, "BF16": 2, "FP64": 8, "INT64": 8, "INT32": 4, "INT16": 2, "INT8": 1, "UINT8": 1,
            "UINT64": 8, "BOOL": 1, "BYTES": 1}  # fmt: skip
SPECIALS = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e38, -1e38, 5e-324]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def fuzz_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The server under fuzz, with the shared memory region SHM_REGION registered."""
    running = RunningServer(repository, tmp_path_factory.mktemp("fuzz"), env={"SLIMSERVE_SHADOW_FRACTION": "0"})
    region = shm.create_shared_memory_region(SHM_REGION, f"/slimserve-fuzz-{os.getpid()}", SHM_REGION_BYTES)
    try:
        with triton.InferenceServerClient(running.address) as client:
            client.register_system_shared_memory(SHM_REGION, f"/slimserve-fuzz-{os.getpid()}", SHM_REGION_BYTES)
        yield running
        assert running.stop() == 0
    finally:
        shm.destroy_shared_memory_region(region)


SHM_REGION = "fuzz"
SHM_REGION_BYTES = 4 * 28 * 28 * 4  # four digits rows


def _shm_parameters(draw: st.DrawFn, parameters: Any) -> None:
    """Shared memory parameters (module docstring): a region, an offset and a size, each
    sometimes left out or of the wrong parameter type."""
    keys = ["shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"]
    for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)):
        if key == "shared_memory_region" and draw(st.integers(0, 4)):
            parameters[key].string_param = draw(st.sampled_from([SHM_REGION, SHM_REGION, "nope", "", "../fuzz"]))
        elif draw(st.integers(0, 5)):
            parameters[key].int64_param = draw(
                st.sampled_from([0, 40, 3136, SHM_REGION_BYTES, SHM_REGION_BYTES + 1, 2**63 - 1, -1])
                | st.integers(0, SHM_REGION_BYTES)
            )
        else:
            parameters[key].CopyFrom(draw(st.sampled_from([pb.InferParameter(bool_param=True),
                                                           pb.InferParameter(double_param=8.0),
                                                           pb.InferParameter(uint64_param=2**64 - 1)])))  # fmt: skip


def _raw_for(datatype: str, shape: list[int], draw: st.DrawFn) -> bytes:
    """Contents of about the right size, often exactly right, filled with hostile values."""
    count = math.prod(max(d, 0) for d in shape) if shape else 0  # Python ints: no overflow
    size = count * ITEMSIZE.get(datatype, 4)
    if size > 4 * MEGABYTE:
        return draw(st.binary(max_size=64))
    exact = draw(st.booleans())
    size = size if exact else max(size + draw(st.integers(-9, 9)), 0)
    if datatype == "FP32" and exact:
        values = draw(st.lists(st.sampled_from(SPECIALS), min_size=1, max_size=4))
        return np.resize(np.array(values, dtype=np.float32), count).tobytes()
    if datatype == "INT64" and exact:
        values = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=4))
        return np.resize(np.array(values, dtype=np.int64), count).tobytes()
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).bytes(size)  # reproducible from the seed


INPUTS = {"digits": [("images", "FP32")], "minilm": [("input_ids", "INT64"), ("attention_mask", "INT64")]}


@st.composite
def tensors(draw: st.DrawFn, model: str, position: int) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]:
    """Mostly the model's own input for this position, with its datatype (so that the case
    gets past the first checks), sometimes anything."""
    own = INPUTS.get(model, [("images", "FP32")])
    name, datatype = own[position % len(own)]
    if draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(["images", "input_ids", "attention_mask", "logits", ""]) | st.text(max_size=12))
    if draw(st.integers(0, 3)) == 0:
        datatype = draw(st.sampled_from(DATATYPES) | st.text(max_size=6))
    typical = {
        "images": [draw(st.integers(0, 40)), 1, 28, 28],
        "input_ids": [draw(st.integers(0, 40)), draw(st.sampled_from([0, 1, 8, 513, 600]))],
        "attention_mask": [draw(st.integers(0, 40)), draw(st.sampled_from([0, 1, 8, 513]))],
    }.get(name, [1, 1])
    shape = draw(
        st.just(typical)
        | st.lists(st.integers(-3, 64), max_size=6)
        | st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=4)
    )
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if draw(st.integers(0, 3)) == 0:  # typed contents, of any field
        field = draw(st.sampled_from(["fp32_contents", "int64_contents", "int_contents", "bool_contents",
                                      "uint_contents", "fp64_contents", "bytes_contents"]))  # fmt: skip
        count = draw(st.integers(0, 3000))
        if field in ("fp32_contents", "fp64_contents"):
            getattr(tensor.contents, field).extend(draw(st.sampled_from(SPECIALS)) for _ in range(count))
        elif field == "bool_contents":
            tensor.contents.bool_contents.extend([True] * count)
        elif field == "bytes_contents":
            tensor.contents.bytes_contents.extend([b"x"] * min(count, 10))
        elif field == "uint_contents":
            tensor.contents.uint_contents.extend([2**31] * count)
        else:
            getattr(tensor.contents, field).extend([draw(st.integers(-(2**31), 2**31 - 1))] * count)
        return tensor, None
    if draw(st.integers(0, 7)) == 0:  # in shared memory: no raw contents of its own
        _shm_parameters(draw, tensor.parameters)
        return tensor, None
    return tensor, _raw_for(datatype, shape, draw)


@st.composite
def parameters(draw: st.DrawFn) -> dict[str, pb.InferParameter]:
    result: dict[str, pb.InferParameter] = {}
    for key in draw(st.lists(st.sampled_from(["slo_ms", "min_quality", "policy", "x" * 70]) | st.text(max_size=8),
                             max_size=5)):  # fmt: skip
        kind = draw(st.sampled_from(["bool", "int", "double", "string", "huge"]))
        if kind == "bool":
            result[key] = pb.InferParameter(bool_param=draw(st.booleans()))
        elif kind == "int":
            result[key] = pb.InferParameter(int64_param=draw(st.integers(-(2**63), 2**63 - 1)))
        elif kind == "double":
            result[key] = pb.InferParameter(double_param=draw(st.sampled_from([*SPECIALS, 5.0, 0.5, -1.0])))
        elif kind == "string":
            result[key] = pb.InferParameter(string_param=draw(st.sampled_from(["slo", "fastest", "", "🙂"])))
        else:
            result[key] = pb.InferParameter(string_param="p" * MEGABYTE)
    return result


def _pick(rng: random.Random, weighted: list[tuple[float, object]]) -> object:
    return rng.choices([v for _, v in weighted], weights=[w for w, _ in weighted])[0]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One serialized request: usually a ModelInferRequest, sometimes arbitrary bytes.

    Hypothesis favours the edges of every choice, its own randoms() included (the empty
    name, '..', the megabyte id); the categorical choices are weighted here with a plain
    seeded Random instead, so that most cases get past the first check and reach the
    tensors, while every hostile value still comes up."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))  # uniform, and reproducible from the seed
    if rng.random() < 0.05:
        return draw(st.binary(max_size=2000))
    model = _pick(rng, [(8, "digits"), (8, "minilm"), (1, ""), (1, ".."), (1, "../etc"), (1, None)])
    model = draw(st.text(max_size=8)) if model is None else model
    version = _pick(rng, [(4, ""), (2, "fp32"), (2, "int8"), (1, "pruned"), (1, "distilled"), (1, ".."), (1, None)])
    version = draw(st.text(max_size=8)) if version is None else version
    request_id = _pick(rng, [(10, ""), (6, "req-1"), (1, "i" * 300), (1, "i" * MEGABYTE)])
    request = pb.ModelInferRequest(model_name=str(model), model_version=str(version), id=str(request_id))
    if rng.random() < 0.3:
        for key, value in draw(parameters()).items():
            request.parameters[key].CopyFrom(value)
    raws = []
    count = len(INPUTS.get(str(model), [])) if rng.random() < 0.8 else rng.randint(0, 3)
    for position in range(count):
        tensor, raw = draw(tensors(str(model), position))
        request.inputs.append(tensor)
        if raw is not None:
            raws.append(raw)
    if rng.random() < 0.85:
        request.raw_input_contents.extend(raws)
    if rng.random() < 0.2:
        for name in draw(st.lists(st.sampled_from(["logits", "embedding", "nope"]), max_size=2)):
            output = request.outputs.add(name=name)
            if rng.random() < 0.3:
                _shm_parameters(draw, output.parameters)
    return request.SerializeToString()


def test_malformed_requests_get_documented_codes_and_the_server_lives(
    fuzz_server: RunningServer, digits: ModelEntry
) -> None:
    codes: Counter[grpc.StatusCode] = Counter()
    internal: list[str] = []
    examples: dict[grpc.StatusCode, Counter[str]] = {}
    rss_before = _rss_kib(fuzz_server.process.pid)
    options = [("grpc.max_send_message_length", 16 * MEGABYTE), ("grpc.max_receive_message_length", 16 * MEGABYTE)]
    with grpc.insecure_channel(fuzz_server.address, options=options) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out

        @seed(20261124)
        @settings(
            max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=False,
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(requests())
        def one(message: bytes) -> None:
            try:
                infer(message, timeout=CALL_TIMEOUT_S)
                codes[grpc.StatusCode.OK] += 1
            except grpc.RpcError as error:
                codes[error.code()] += 1
                examples.setdefault(error.code(), Counter())[(error.details() or "")[:60]] += 1
                if error.code() not in DOCUMENTED:
                    internal.append(f"{error.code()}: {error.details()} ← {message[:200]!r}")

        one()
        rss_after = _rss_kib(fuzz_server.process.pid)
        print(f"\nfuzz: {sum(codes.values())} cases, codes {dict(codes)}, RSS {rss_before} → {rss_after} KiB")
        for code, messages in examples.items():
            print(f"  {code.name}: {messages.most_common(4)}")
        assert not internal, internal[:5]
        assert sum(codes.values()) >= FUZZ_EXAMPLES
        # The generator reaches answers and more than one kind of refusal.
        assert codes[grpc.StatusCode.OK] > 0 and len(codes) >= 3
        assert fuzz_server.process.poll() is None
        # Bounded: the fuzzing sends megabyte ids and strings; none of it may be kept.
        assert rss_after - rss_before < 256 * 1024

        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        images = load_digits_split()[1].inputs["images"][:3]
        response = stub.ModelInfer(digits_request(images, variant="int8"), timeout=CALL_TIMEOUT_S)
        logits = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(3, 10)
        expected = make_session(str(digits.variants["int8"].onnx_path), 1).run(None, {"images": images})[0]
        np.testing.assert_allclose(logits, expected, atol=1e-4)


NARROW_EXAMPLES = max(FUZZ_EXAMPLES // 4, 100)
SMALL_COUNT = 64  # elements up to which a narrow case carries the contents its shape needs
# Dimensions a per-dimension check accepts, large enough that a batch of 2 to 4 of them
# overflows int64. numpy's product wraps around: [4, 2**62] claims 0 elements, [4, 2**62 + 1]
# 4 and [3, (2**64 + 2) // 3] 2, which a request can then carry.
HUGE_DIMS = [2**31, 2**32, 2**62, 2**62 + 1, 2**62 + 3, (2**64 + 2) // 3, (2**64 + 5) // 3, 2**63 - 1]
INT8_EDGES = [-(2**31), -129, -128, -1, 0, 127, 128, 255, 256, 2**31 - 1]
UINT8_EDGES = [0, 1, 127, 255, 256, 2**31, 2**32 - 1]


@pytest.fixture(scope="module")
def narrow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("narrow-fuzz")
    narrow_model.write_narrow_model(workdir / "repo")
    running = RunningServer(workdir / "repo", workdir, env=narrow_model.SERVER_ENV)
    yield running
    assert running.stop() == 0


@st.composite
def narrow_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Both inputs of `narrow`, typed or raw, mostly in one shape of the right rank: small
    shapes carry the values they need (now and then one beyond INT8 or UINT8, or at an edge),
    huge ones carry a few, often as many as an int64 product that wrapped around would
    expect. Choices are weighted with a seeded Random, as in `requests`."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))

    def dim() -> int:
        roll = rng.random()
        return rng.randint(1, 6) if roll < 0.6 else rng.choice(HUGE_DIMS) if roll < 0.95 else rng.randint(-2, 2**63 - 1)

    batch = rng.randint(1, 4) if rng.random() < 0.9 else rng.choice([0, 33, 2**62])
    shape = [batch, dim()] if rng.random() < 0.9 else [batch, dim(), dim()]
    shapes = [shape, shape if rng.random() < 0.9 else [batch, dim()]]
    count = math.prod(shape) if min(shape) >= 0 else 0  # Python ints: exact
    wrapped = (count + 2**63) % 2**64 - 2**63  # what numpy's int64 product makes of it
    if count <= SMALL_COUNT:
        size = count if rng.random() < 0.9 else rng.randint(0, 3)
    else:
        size = wrapped if 0 <= wrapped <= SMALL_COUNT and rng.random() < 0.7 else rng.randint(0, 3)
    raw = rng.random() < 0.25
    request = pb.ModelInferRequest(model_name=narrow_model.MODEL)
    for (name, datatype, edges, (low, high), wire), tensor_shape in zip(
        [("codes", "INT8", INT8_EDGES, (-128, 127), (-(2**31), 2**31 - 1)),
         ("levels", "UINT8", UINT8_EDGES, (0, 255), (0, 2**32 - 1))],
        shapes,
        strict=True,
    ):  # fmt: skip
        tensor = request.inputs.add(name=name, datatype=datatype, shape=tensor_shape)
        values = [rng.randint(low, high) for _ in range(size)]
        if values and rng.random() < 0.15:
            values[rng.randrange(size)] = rng.choice([*edges, rng.randint(*wire)])
        if raw:
            request.raw_input_contents.append(np.array(values, dtype=np.int64).astype(np.uint8).tobytes())
        elif datatype == "INT8":
            tensor.contents.int_contents.extend(values)
        else:
            tensor.contents.uint_contents.extend(values)
    return request


def _narrow_expected(request: pb.ModelInferRequest) -> np.ndarray:
    """The row sums `narrow` returns for a request it answered."""
    codes, levels = request.inputs
    if request.raw_input_contents:
        raws = request.raw_input_contents
        values = [np.frombuffer(raws[0], np.int8), np.frombuffer(raws[1], np.uint8)]
    else:
        values = [np.array(codes.contents.int_contents), np.array(levels.contents.uint_contents)]
    total = values[0].astype(np.float64) + values[1].astype(np.float64)
    return total.reshape(list(codes.shape)).sum(axis=1)


def test_narrow_types_and_overflowing_shapes_are_refused_by_name(narrow_server: RunningServer) -> None:
    codes: Counter[grpc.StatusCode] = Counter()
    refusals: Counter[str] = Counter()  # by what the message says, numbers left out
    wrong: list[str] = []
    with grpc.insecure_channel(narrow_server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        @seed(20261125)
        @settings(max_examples=NARROW_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(narrow_requests())
        def one(request: pb.ModelInferRequest) -> None:
            shown = f"{[list(t.shape) for t in request.inputs]} raw={bool(request.raw_input_contents)}"
            try:
                response = stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as error:
                codes[error.code()] += 1
                details = error.details() or ""
                refusals["".join(c for c in details if not c.isdigit())[:48]] += 1
                if error.code() != grpc.StatusCode.INVALID_ARGUMENT or not details.startswith(
                    ("input 'codes'", "input 'levels'", "inputs 'codes'", "inputs disagree")
                ):
                    wrong.append(f"{error.code().name}: {details[:200]} ← {shown}")
                return
            codes[grpc.StatusCode.OK] += 1
            total = np.frombuffer(response.raw_output_contents[0], np.float32)
            if not np.array_equal(total, _narrow_expected(request)):
                wrong.append(f"OK with {total[:4]} ← {shown}")

        one()
    print(f"\nnarrow fuzz: {sum(codes.values())} cases, codes {dict(codes)}, refusals {refusals.most_common(12)}")
    assert not wrong, wrong[:5]
    assert codes[grpc.StatusCode.OK] > 0 and codes[grpc.StatusCode.INVALID_ARGUMENT] > 0
    log = narrow_server.log_path.read_text().splitlines()
    assert not [line for line in log if line.startswith(("Traceback", "ERROR", "CRITICAL"))], log[-40:]


STREAM_EXAMPLES = max(FUZZ_EXAMPLES // 10, 50)
STREAM_MESSAGES = 8  # at most, per stream
MAX_ID_CHARS = 256  # transport.codec.MAX_ID_CHARS (its module imports slimserve's own stubs)
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


@st.composite
def stream_messages(draw: st.DrawFn) -> bytes:
    """One message of a stream: mostly one of `requests`, else a well-formed digits request
    with an id around or far past the limit, or with many outputs (repeated or unknown)."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    roll = rng.random()
    if roll < 0.7:
        return draw(requests())
    request = digits_request(rows=rng.randint(1, 3), request_id="s")
    if roll < 0.85:
        request.id = rng.choice(["i" * MAX_ID_CHARS, "i" * (MAX_ID_CHARS + 1), "i" * MEGABYTE, "🙂" * 200])
    else:
        count = rng.choice([2, 100, 10_000])
        names = ["logits"] * count if rng.random() < 0.5 else [f"o{n}" for n in range(count)]
        for name in names:
            request.outputs.add(name=name)
    return request.SerializeToString()


def _echoed_id(message: bytes) -> str:
    """The id an answer to `message` carries: the request's, unless it is too long to echo or
    the bytes are no request."""
    try:
        request_id = pb.ModelInferRequest.FromString(message).id
    except DecodeError:
        return ""
    return request_id if len(request_id) <= MAX_ID_CHARS else ""


def test_malformed_messages_in_a_stream_are_answered_one_by_one_and_the_stream_lives(
    fuzz_server: RunningServer,
) -> None:
    codes: Counter[str] = Counter()
    internal: list[str] = []
    wrong: list[str] = []
    options = [("grpc.max_send_message_length", 16 * MEGABYTE), ("grpc.max_receive_message_length", 16 * MEGABYTE)]
    with grpc.insecure_channel(fuzz_server.address, options=options) as channel:
        stream = channel.stream_stream(MODEL_STREAM_INFER)  # bytes in, bytes out

        @seed(20261126)
        @settings(max_examples=STREAM_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(stream_messages(), min_size=1, max_size=STREAM_MESSAGES))
        def one(messages: list[bytes]) -> None:
            # A stream that does not end OK raises here, and the case fails.
            raw = list(stream(iter(messages), timeout=CALL_TIMEOUT_S))
            answers = [pb.ModelStreamInferResponse.FromString(answer) for answer in raw]
            if len(answers) != len(messages):
                wrong.append(f"{len(answers)} answers to {len(messages)} messages")
                return
            for message, answer in zip(messages, answers, strict=True):
                code = answer.infer_response.parameters["code"].string_param if answer.error_message else "OK"
                codes[code] += 1
                if code in ("INTERNAL", "UNKNOWN", "") or answer.error_message == INTERNAL_MESSAGE:
                    internal.append(f"{code}: {answer.error_message[:200]} ← {message[:200]!r}")
                if answer.infer_response.id != _echoed_id(message):
                    wrong.append(f"id {answer.infer_response.id[:40]!r} ← {message[:200]!r}")

        one()
    print(f"\nstream fuzz: {STREAM_EXAMPLES} streams, answers by code {dict(codes)}")
    assert not internal, internal[:5]
    assert not wrong, wrong[:5]
    assert codes["OK"] > 0 and len(codes) >= 3
    assert fuzz_server.process.poll() is None
