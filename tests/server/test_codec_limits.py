"""What a caller sends is bounded before it can cost anything, against a real server: element
counts too large for int64, typed values outside a narrow datatype, and names of a megabyte
all get INVALID_ARGUMENT with a short message naming the input, and nothing in the log.

The server hosts `narrow` (tests/server/narrow_model.py): INT8 and UINT8 inputs whose
dimensions are variable with no declared limit, as a user's model.yaml may have them."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtest.serving import RunningServer
from slimserve.server.errors import ECHO_CHARS, listed, shown
from slimserve.server.transport.status import MAX_MESSAGE_CHARS, bounded
from tests.server.narrow_model import MODEL, SERVER_ENV, write_narrow_model

TIMEOUT_S = 30.0
MEGABYTE = 1 << 20
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 8 * MEGABYTE)]
# The longest message one long name may come back in: the text around one name of ECHO_CHARS.
ONE_NAME_MESSAGE_CHARS = 300
# transport.codec.MAX_PARAMETER_STRING_CHARS: the codec imports slimserve's `inference` stubs,
# which cannot share a process with tritonclient's (the same proto package).
MAX_PARAMETER_STRING_CHARS = 1024


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("narrow")
    write_narrow_model(workdir / "repo")
    running = RunningServer(workdir / "repo", workdir, env=SERVER_ENV)
    yield running
    assert running.stop() == 0


def _request(
    shape: list[int], codes: list[int] | None = None, levels: list[int] | None = None, raw: bool = False
) -> pb.ModelInferRequest:
    """Both inputs of `narrow` in `shape`: raw contents (empty) or the typed values given."""
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="codes", datatype="INT8", shape=shape).contents.int_contents.extend(codes or [])
    request.inputs.add(name="levels", datatype="UINT8", shape=shape).contents.uint_contents.extend(levels or [])
    if raw:
        for tensor in request.inputs:
            tensor.ClearField("contents")
        request.raw_input_contents.extend([b"", b""])
    return request


def _refusal(server: RunningServer, call: str, request: object) -> grpc.RpcError:
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        method = getattr(service_pb2_grpc.GRPCInferenceServiceStub(channel), call)
        with pytest.raises(grpc.RpcError) as error:
            method(request, timeout=TIMEOUT_S)
    return error.value


def _assert_log_clean(server: RunningServer) -> None:
    """Refusals are the caller's business: no traceback, no error line in the server's log."""
    lines = server.log_path.read_text().splitlines()
    assert not [line for line in lines if line.startswith(("Traceback", "ERROR", "CRITICAL"))], lines[-40:]


# (shape, raw?) whose element count numpy's int64 product gets wrong: 2**64 wraps to 0 (so
# empty contents "matched"), 2**64 - 2 to -2, 2**63 + ... to a negative count.
OVERFLOWING = [([4, 2**62], True), ([4, 2**62], False), ([2, 2**63 - 1], True), ([3, 2**62 + 1], True)]


@pytest.mark.parametrize(("shape", "raw"), OVERFLOWING, ids=[f"{s}-{'raw' if r else 'typed'}" for s, r in OVERFLOWING])
def test_a_shape_too_large_for_int64_is_invalid_argument(narrow: RunningServer, shape: list[int], raw: bool) -> None:
    error = _refusal(narrow, "ModelInfer", _request(shape, raw=raw))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    count = shape[0] * shape[1]
    expected = f"expected {count} for shape" if raw else f"{count} typed values"
    assert (error.details() or "").startswith("input 'codes': ") and expected in (error.details() or "")
    _assert_log_clean(narrow)


NARROW_VALUES = [
    ("codes", [300], [1], "contents.int_contents holds 300, outside INT8's range [-128, 127]"),
    ("codes", [-129], [1], "contents.int_contents holds -129, outside INT8's range [-128, 127]"),
    ("codes", [2**31 - 1], [1], "holds 2147483647, outside INT8's range"),
    ("levels", [1], [256], "contents.uint_contents holds 256, outside UINT8's range [0, 255]"),
    ("levels", [1], [2**32 - 1], "holds 4294967295, outside UINT8's range [0, 255]"),
]


@pytest.mark.parametrize(("name", "codes", "levels", "message"), NARROW_VALUES)
def test_typed_values_outside_a_narrow_datatype_are_invalid_argument(
    narrow: RunningServer, name: str, codes: list[int], levels: list[int], message: str
) -> None:
    error = _refusal(narrow, "ModelInfer", _request([1, 1], codes, levels))
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(f"input '{name}': ") and message in details, details
    _assert_log_clean(narrow)


def test_values_at_the_ends_of_a_narrow_range_are_served(narrow: RunningServer) -> None:
    with grpc.insecure_channel(narrow.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        typed = stub.ModelInfer(_request([2, 2], [-128, 127, 0, -1], [0, 255, 7, 1]), timeout=TIMEOUT_S)
        raw = _request([2, 2], raw=True)
        raw.raw_input_contents[:] = [np.array([-128, 127, 0, -1], np.int8).tobytes(), bytes([0, 255, 7, 1])]
        from_raw = stub.ModelInfer(raw, timeout=TIMEOUT_S)
    for response in (typed, from_raw):
        np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.float32), [254.0, 7.0])


def _long_name_cases() -> list[tuple[str, str, object, int]]:
    """(label, method, request, the longest its refusal may be): one name, or a list of them."""
    long = "n" * MEGABYTE
    wrong_input = _request([1, 1], [1], [1])
    wrong_input.inputs[0].name = long
    wrong_datatype = _request([1, 1], [1], [1])
    wrong_datatype.inputs[0].datatype = long
    many_inputs = _request([1, 1], [1], [1])
    for index in range(1000):
        many_inputs.inputs.add(name=f"{long[:1000]}{index}", datatype="INT8", shape=[1, 1])
    wrong_output = _request([1, 1], [1], [1])
    wrong_output.outputs.add(name=long)
    one = ONE_NAME_MESSAGE_CHARS
    return [
        ("model", "ModelInfer", pb.ModelInferRequest(model_name=long), one),
        ("version", "ModelInfer", pb.ModelInferRequest(model_name=MODEL, model_version=long), one),
        ("input", "ModelInfer", wrong_input, one),
        ("datatype", "ModelInfer", wrong_datatype, one),
        ("1000 inputs", "ModelInfer", many_inputs, MAX_MESSAGE_CHARS),
        ("output", "ModelInfer", wrong_output, one),
        ("ready", "ModelReady", pb.ModelReadyRequest(name=long), one),
        ("metadata", "ModelMetadata", pb.ModelMetadataRequest(name=MODEL, version=long), one),
        ("config", "ModelConfig", pb.ModelConfigRequest(name=long), one),
        ("statistics", "ModelStatistics", pb.ModelStatisticsRequest(name=long), one),
        ("load", "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=long), one),
    ]


@pytest.mark.parametrize(
    ("label", "call", "request_", "longest"), _long_name_cases(), ids=[c[0] for c in _long_name_cases()]
)
def test_a_megabyte_name_comes_back_cut_short(
    narrow: RunningServer, label: str, call: str, request_: object, longest: int
) -> None:
    error = _refusal(narrow, call, request_)
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, error.code(), details[:300])
    assert len(details) <= longest, (label, len(details), details[:300])
    assert "n" * (ECHO_CHARS + 1) not in details, details  # the name is quoted at most ECHO_CHARS long
    assert "characters)" in details or "in all]" in details, details  # and says it was cut
    _assert_log_clean(narrow)


def test_a_long_value_quoted_beyond_the_transport_is_cut_at_the_edge(narrow: RunningServer) -> None:
    # The router quotes a parameter's value whole (at most MAX_PARAMETER_STRING_CHARS); the
    # status table bounds every message it sends, keeping both ends.
    request = _request([1, 1], [1], [1])
    request.parameters["policy"].string_param = "n" * MAX_PARAMETER_STRING_CHARS
    error = _refusal(narrow, "ModelInfer", request)
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, details[:300]
    assert len(details) <= MAX_MESSAGE_CHARS and details.startswith("parameter 'policy'"), details
    assert "characters in all" in details and details.endswith("'"), details
    _assert_log_clean(narrow)


def test_the_quoting_helpers_cut_and_say_so() -> None:
    assert shown("images") == "'images'"
    assert shown("x" * 100, 4) == "'xxxx'… (100 characters)"
    assert shown("a\nb") == "'a\\nb'"  # no line breaks into logs or terminals
    assert listed(["a", 1]) == "['a', 1]"
    assert listed(range(20), 3) == "[0, 1, 2, … 20 in all]"
    message = "start " + "m" * 5000 + " end"
    cut = bounded(message)
    assert len(cut) == MAX_MESSAGE_CHARS and cut.startswith("start m") and cut.endswith("m end")
    assert "5010 characters in all" in cut and bounded("short") == "short"
