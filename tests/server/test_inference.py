"""Real clients over real sockets: tritonclient, raw gRPC stubs, the health checker.

Raw requests are built with tritonclient's own generated messages (its `inference`
package), not ours: that both checks wire compatibility and avoids registering two
`inference` packages in one process.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as inference_pb2_grpc
from tritonclient.utils import InferenceServerException

from loadtest.messages import MINILM_INPUTS, digits_request, triton_inputs
from loadtest.serving import RunningServer
from slimserve.protos import slimserve_pb2, slimserve_pb2_grpc
from slimserve.repository.format import ModelEntry
from slimserve.repository.sessions import make_session
from slimserve.variants.data import load_digits_split, minilm_tokenizer

TOLERANCE = 1e-4


def _digits_inputs(rows: int) -> np.ndarray:
    _, held_out = load_digits_split()
    return held_out.inputs["images"][:rows]


def _infer_digits(client: triton.InferenceServerClient, images: np.ndarray, variant: str = "") -> triton.InferResult:
    tensor = triton.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return client.infer("digits", [tensor], model_version=variant)


@pytest.mark.parametrize("variant", ["fp32", "int8", "pruned", "distilled"])
def test_tritonclient_digits_equals_in_process_onnxruntime(
    server: RunningServer, digits: ModelEntry, variant: str
) -> None:
    images = _digits_inputs(5)
    with triton.InferenceServerClient(server.address) as client:
        result = _infer_digits(client, images, variant)
    expected = make_session(str(digits.variants[variant].onnx_path), 1).run(None, {"images": images})[0]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=TOLERANCE)
    parameters = result.get_response().parameters
    assert parameters["variant"].string_param == variant
    assert parameters["queue_ms"].double_param >= 0
    assert parameters["compute_ms"].double_param > 0


def test_tritonclient_minilm_equals_in_process_onnxruntime(server: RunningServer, minilm: ModelEntry) -> None:
    tokens = minilm_tokenizer()(["Serving compressed models.", "The quick brown fox."], pad_to=16)
    with triton.InferenceServerClient(server.address) as client:
        inputs = triton_inputs({name: tokens[name] for name in MINILM_INPUTS})
        result = client.infer("minilm", inputs, model_version="int8")
    expected = make_session(str(minilm.variants["int8"].onnx_path), 1).run(None, tokens)[0]
    np.testing.assert_allclose(result.as_numpy("embedding"), expected, atol=TOLERANCE)


def test_concurrent_requests_are_batched_and_each_caller_gets_its_rows(
    server: RunningServer, digits: ModelEntry
) -> None:
    images = _digits_inputs(64)
    expected = make_session(str(digits.variants["pruned"].onnx_path), 1).run(None, {"images": images})[0]

    def one(row: int) -> tuple[int, np.ndarray, int]:
        with triton.InferenceServerClient(server.address) as client:
            result = _infer_digits(client, images[row : row + 1], "pruned")
        return row, result.as_numpy("logits")[0], result.get_response().parameters["batch_size"].int64_param

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(one, range(64)))
    for row, logits, _ in answers:
        np.testing.assert_allclose(logits, expected[row], atol=TOLERANCE)
    assert max(batch for _, _, batch in answers) > 1
    with triton.InferenceServerClient(server.address) as client:
        stats = client.get_inference_statistics("digits", "pruned", as_json=True)
    batch_sizes = [int(b["batch_size"]) for b in stats["model_stats"][0]["batch_stats"]]
    assert max(batch_sizes) > 1


def test_health_metadata_and_readiness(server: RunningServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "slimserve.v1.Management"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == 1  # SERVING
    with triton.InferenceServerClient(server.address) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("minilm", "distilled")
        metadata = client.get_model_metadata("minilm", as_json=True)
        assert metadata["versions"] == ["fp32", "int8", "pruned", "distilled"]
        assert [i["name"] for i in metadata["inputs"]] == ["input_ids", "attention_mask"]
        index = client.get_model_repository_index(as_json=True)
        assert {m["name"] for m in index["models"]} == {"digits", "minilm"}


def test_list_variants_reports_measurements(server: RunningServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        management = slimserve_pb2_grpc.ManagementStub(channel)
        variants = management.ListVariants(slimserve_pb2.ListVariantsRequest(model="digits")).variants
    assert [v.name for v in variants] == ["fp32", "int8", "pruned", "distilled"]
    assert all(v.size_bytes > 0 and "accuracy" in v.quality for v in variants)
    assert any(p.this_machine for v in variants for p in v.profiles)


def _raw_request(**fields: object) -> pb.ModelInferRequest:
    request = digits_request(_digits_inputs(1), variant="fp32")
    for key, value in fields.items():
        setattr(request, key, value)
    return request


def _cases() -> list[tuple[str, pb.ModelInferRequest, grpc.StatusCode, str]]:
    unknown_model = _raw_request(model_name="nope")
    path_as_model = _raw_request(model_name="../digits")
    unknown_variant = _raw_request(model_version="fp8")
    wrong_name = _raw_request()
    wrong_name.inputs[0].name = "pixels"
    wrong_dtype = _raw_request()
    wrong_dtype.inputs[0].datatype = "INT64"
    wrong_shape = _raw_request()
    wrong_shape.inputs[0].shape[:] = [1, 1, 14, 56]
    short_bytes = _raw_request()
    short_bytes.raw_input_contents[0] = short_bytes.raw_input_contents[0][:-4]
    both = _raw_request()
    both.inputs[0].contents.fp32_contents.extend([0.0] * 784)
    too_big = digits_request(rows=500, variant="fp32")
    repeated_output = _raw_request()
    for _ in range(3):  # once per entry, each a copy of the answer: a small request, a huge response
        repeated_output.outputs.add(name="logits")
    return [
        ("unknown model", unknown_model, grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ("path as model", path_as_model, grpc.StatusCode.INVALID_ARGUMENT, "model name '../digits' is not allowed"),
        ("unknown variant", unknown_variant, grpc.StatusCode.NOT_FOUND, "no variant 'fp8'"),
        ("wrong name", wrong_name, grpc.StatusCode.INVALID_ARGUMENT, "pixels"),
        ("wrong dtype", wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT, "'images': datatype 'INT64', expected FP32"),
        ("wrong shape", wrong_shape, grpc.StatusCode.INVALID_ARGUMENT, "input 'images': dimension 2 is 14"),
        ("byte length", short_bytes, grpc.StatusCode.INVALID_ARGUMENT, "3132 bytes of raw contents, expected 3136"),
        ("raw and typed", both, grpc.StatusCode.INVALID_ARGUMENT, "both raw_input_contents and typed contents"),
        ("batch too big", too_big, grpc.StatusCode.INVALID_ARGUMENT, "batch size 500 outside 1..32"),
        ("repeated output", repeated_output, grpc.StatusCode.INVALID_ARGUMENT, "output 'logits' is requested 3 times"),
    ]


@pytest.mark.parametrize(("label", "request_", "code", "message"), _cases(), ids=[c[0] for c in _cases()])
def test_bad_input_gets_its_status_and_the_server_keeps_serving(
    server: RunningServer, label: str, request_: pb.ModelInferRequest, code: grpc.StatusCode, message: str
) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(request_, timeout=30)
        assert error.value.code() == code, label
        assert message in error.value.details()
        assert stub.ModelInfer(_raw_request(), timeout=30).model_version == "fp32"


def test_typed_contents_are_accepted(server: RunningServer) -> None:
    images = _digits_inputs(2)
    request = pb.ModelInferRequest(model_name="digits", model_version="int8")
    tensor = request.inputs.add(name="images", datatype="FP32", shape=list(images.shape))
    tensor.contents.fp32_contents.extend(images.ravel().tolist())
    with grpc.insecure_channel(server.address) as channel:
        response = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    logits = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 10)
    assert logits.shape == (2, 10)


def test_tritonclient_sees_not_found_for_unknown_variant(server: RunningServer) -> None:
    with triton.InferenceServerClient(server.address) as client, pytest.raises(InferenceServerException) as error:
        _infer_digits(client, _digits_inputs(1), "fp8")
    assert "StatusCode.NOT_FOUND" in str(error.value.status())


def test_reflection_lists_the_services(server: RunningServer) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"inference.GRPCInferenceService", "slimserve.v1.Management", "grpc.health.v1.Health"} <= services


def test_an_unknown_model_or_variant_is_refused_without_listing_what_is_served(server: RunningServer) -> None:
    """ModelReady is open to every caller (the health group): its NOT_FOUND names what was
    asked, never the models and variants served (issue 23, L2)."""
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
    for request in (pb.ModelReadyRequest(name="nope"), pb.ModelReadyRequest(name="digits", version="nope")):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelReady(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        details = refused.value.details()
        assert "'nope'" in details
        assert not any(name in details for name in ("minilm", "fp32", "int8", "pruned", "distilled")), details
