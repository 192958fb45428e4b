"""`serve --build-missing` on an empty repository: the server starts at once, says what it is
building and how far each variant is, answers as soon as fp32 and int8 are published, and
gains the rest as they come."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from loadtest.messages import digits_request
from loadtest.serving import RunningServer, wait_until
from slimserve.protos import slimserve_pb2, slimserve_pb2_grpc
from tests.conftest import tiny_digits_recipe

BUILD_TIMEOUT_S = 600
ALL = {"fp32", "int8", "pruned", "distilled"}


def _state(address: str, progress: list[slimserve_pb2.BuildingVariant] | None = None) -> tuple[int, set[str], set[str]]:
    """(health status, variants served, variants still being built) of `digits`; the building
    variants that report progress are added to `progress`."""
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        listing = slimserve_pb2_grpc.ManagementStub(channel).ListVariants(
            slimserve_pb2.ListVariantsRequest(), timeout=10
        )
    served = {v.name for v in listing.variants if v.model == "digits"}
    building = {v.name for v in listing.building if v.model == "digits"}
    if progress is not None:
        progress += [v for v in listing.building if v.model == "digits" and v.HasField("progress")]
    return health, served, building


@pytest.mark.slow
def test_serves_the_first_stage_while_building_the_rest(tmp_path: Path) -> None:
    recipe = tmp_path / "digits.yaml"
    recipe.write_text(yaml.safe_dump(tiny_digits_recipe().model_dump(mode="json")))
    repo = tmp_path / "repo"  # does not exist yet: the server makes it
    server = RunningServer(
        repo, tmp_path, "--build-missing", env={"SLIMSERVE_BUILD_RECIPES": json.dumps([str(recipe)])}, wait=False
    )
    try:
        health, served, building = _state(server.address)
        assert served | building == ALL and building  # nothing lost from the listing at any point
        if not served:
            assert health == health_pb2.HealthCheckResponse.NOT_SERVING
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        first_answer: set[str] | None = None
        reported: list[slimserve_pb2.BuildingVariant] = []
        while True:
            health, served, building = _state(server.address, reported)
            assert served | building == ALL or not building, (served, building)
            if health == health_pb2.HealthCheckResponse.SERVING and first_answer is None:
                first_answer = served
                with grpc.insecure_channel(server.address) as channel:
                    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                    answer = stub.ModelInfer(digits_request(), timeout=30)  # routed: any variant served
                assert answer.parameters["variant"].string_param in served
            if served == ALL and not building:
                break
            assert time.monotonic() < deadline, (served, building)
            time.sleep(0.2)  # every state on the way is checked: this loop observes, it does not only wait
        assert first_answer is not None and {"fp32", "int8"} <= first_answer
        left_s = deadline - time.monotonic()
        wait_until(lambda: "background build finished" in server.log_path.read_text(), left_s, "the build's last line")
    finally:
        assert server.stop() == 0
    log = server.log_path.read_text()
    assert "build: digits: published fp32, int8 after" in log
    assert "loaded digits" in log and "added pruned, distilled" in log
    # How far the build is: in the log (every stage), and in ListVariants for what is not served yet.
    for stage in ("train", "int8", "prune", "distill", "made", "evaluate", "profile", "measure", "published"):
        assert f"stage={stage} " in log, stage
    assert "build: progress model=digits variant=fp32 stage=train epoch=0/" in log
    assert "%|" not in log  # no progress bar (tqdm) reaches the server's log
    assert reported, "ListVariants never showed a variant's progress"
    assert {v.name for v in reported} <= ALL and all(v.progress.stage for v in reported)
    assert any(v.progress.unit == "epoch" and v.progress.total > 0 for v in reported), [v.progress for v in reported]
