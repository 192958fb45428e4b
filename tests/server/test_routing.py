"""The routing contract over real gRPC: hints in parameters, decisions in the response, Explain."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from loadtest.serving import RunningServer
from slimserve.protos import slimserve_pb2, slimserve_pb2_grpc
from slimserve.repository.format import ModelEntry
from slimserve.variants.data import load_digits_split

RESPONSE_PARAMETERS = {"variant", "device", "predicted_ms", "queue_ms", "compute_ms", "reason", "batch_size"}


def _infer(address: str, parameters: dict, variant: str = "", timeout_s: float | None = None) -> triton.InferResult:
    images = load_digits_split()[1].inputs["images"][:1]
    tensor = triton.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    with triton.InferenceServerClient(address) as client:
        return client.infer("digits", [tensor], model_version=variant, parameters=parameters, client_timeout=timeout_s)


def _explain(address: str, **fields: object) -> slimserve_pb2.ExplainResponse:
    with grpc.insecure_channel(address) as channel:
        management = slimserve_pb2_grpc.ManagementStub(channel)
        return management.Explain(slimserve_pb2.ExplainRequest(model="digits", **fields))  # type: ignore[arg-type]


def _most_accurate(digits: ModelEntry) -> set[str]:
    quality = {name: v.manifest.measurements.quality["accuracy"] for name, v in digits.variants.items()}
    return {name for name, q in quality.items() if q == max(quality.values())}


def test_without_a_variant_the_router_picks_the_most_accurate_in_time(
    server: RunningServer, digits: ModelEntry
) -> None:
    response = _infer(server.address, {"slo_ms": 1000}).get_response()
    parameters = response.parameters
    assert set(parameters) == RESPONSE_PARAMETERS
    assert response.model_version == parameters["variant"].string_param
    assert parameters["variant"].string_param in _most_accurate(digits)
    assert parameters["reason"].string_param == "most_accurate_within_slo"
    assert parameters["device"].string_param == "cpu"
    assert 0 < parameters["predicted_ms"].double_param < 1000


def test_policies_and_pinned_variants(server: RunningServer) -> None:
    fastest = _infer(server.address, {"policy": "fastest"}).get_response().parameters
    assert fastest["reason"].string_param == "fastest"
    pinned = _infer(server.address, {"policy": "fastest"}, variant="fp32").get_response().parameters
    assert (pinned["variant"].string_param, pinned["reason"].string_param) == ("fp32", "pinned")
    late = _infer(server.address, {"slo_ms": 0.000001}).get_response().parameters
    assert late["reason"].string_param == "best_effort"


@pytest.fixture(scope="module")
def unprofiled_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """digits without any stored profile and with every accuracy set to 0.9."""
    copy = tmp_path_factory.mktemp("unprofiled")
    shutil.copytree(repository / "digits", copy / "digits")
    for manifest_path in (copy / "digits").glob("*/variant.json"):
        manifest = json.loads(manifest_path.read_text())
        manifest["profiles"] = {}
        manifest["measurements"]["quality"]["accuracy"] = 0.9
        manifest_path.write_text(json.dumps(manifest))
    running = RunningServer(copy, tmp_path_factory.mktemp("unprofiled-server"))
    yield running
    assert running.stop() == 0


def test_a_repository_without_a_profile_for_this_machine_is_profiled_at_start_up(
    unprofiled_server: RunningServer,
) -> None:
    assert "no stored profile for this hardware" in unprofiled_server.log_path.read_text()
    explained = _explain(unprofiled_server.address)
    assert all(c.predicted_ms > 0 for c in explained.candidates)


def test_unreachable_quality_is_failed_precondition(unprofiled_server: RunningServer) -> None:
    with pytest.raises(InferenceServerException) as error:
        _infer(unprofiled_server.address, {"min_quality": 0.95})
    assert error.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "no variant reaches min_quality 0.9500; the best is 'fp32' at 0.9000" in error.value.message()
    # The server answers the next request normally.
    assert _infer(unprofiled_server.address, {"min_quality": 0.9}).get_response().parameters["variant"].string_param


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"slo_ms": "soon"}, "'slo_ms' must be a number"),
        ({"policy": "cheapest"}, "'policy' must be one of"),
        ({"min_quality": 1.5}, "'min_quality' must be a fraction in [0, 1]"),
    ],
)
def test_bad_hints_are_invalid_argument(server: RunningServer, parameters: dict, message: str) -> None:
    with pytest.raises(InferenceServerException) as error:
        _infer(server.address, parameters)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in error.value.message()


def test_explain_gives_a_verdict_per_variant(server: RunningServer, digits: ModelEntry) -> None:
    explained = _explain(server.address, slo_ms=250.0, min_quality=0.0, policy="slo", batch_size=4)
    assert (explained.slo_ms, explained.slo_source, explained.policy) == (250.0, "parameter", "slo")
    assert [c.variant for c in explained.candidates] == list(digits.variants)
    assert sum(c.chosen for c in explained.candidates) == 1
    chosen = next(c for c in explained.candidates if c.chosen)
    assert chosen.variant == explained.chosen and chosen.reason == explained.reason
    assert all(c.predicted_ms > 0 and c.capacity_rows_s > 0 and c.reason for c in explained.candidates)
    assert all(0.0 <= c.p_in_time <= 1.0 for c in explained.candidates)
    assert 0.0 <= explained.cpu_utilization <= 1.0
    assert 0.0 < explained.cpu_target <= 1.0 and explained.cpu_price >= 0.0 and explained.cpu_overhead_ms >= 0.0
    cost = {c.variant: c.cost_per_row_ms for c in explained.candidates}
    assert cost["fp32"] > cost["distilled"] > 0  # the profiles: fp32 takes more CPU per row
    assert explained.throughput.declared_rps == 0 and explained.throughput.sustained
    default = _explain(server.address)
    assert (default.slo_ms, default.slo_source) == (digits.config.default_slo_ms, "model_default")
    assert np.isclose(default.predicted_ms, next(c.predicted_ms for c in default.candidates if c.chosen))


def test_explain_of_an_unknown_model_is_not_found(server: RunningServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        management = slimserve_pb2_grpc.ManagementStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            management.Explain(slimserve_pb2.ExplainRequest(model="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
