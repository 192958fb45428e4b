"""`serve --build-missing` on an empty repository: the server starts at once, says what it is
building and how far each variant is, answers as soon as fp32 and int8 are published, and
gains the rest as they come."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from loadtest.messages import digits_request
from loadtest.serving import RunningServer, wait_until
from slimserve.cli import _parser
from slimserve.protos import slimserve_pb2, slimserve_pb2_grpc
from slimserve.repository.format import load_model
from slimserve.repository.hardware import fingerprint, usable_cores
from slimserve.server.process.background_build import BackgroundBuild
from tests.conftest import quick_digits_recipe

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
    recipe.write_text(yaml.safe_dump(quick_digits_recipe().model_dump(mode="json")))
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
    assert "kept fp32, int8" in log  # the final publication's new version numbers reload no running variant
    # How far the build is: in the log (every stage), and in ListVariants for what is not served yet.
    for stage in ("train", "int8", "prune", "distill", "made", "evaluate", "profile", "measure", "published"):
        assert f"stage={stage} " in log, stage
    assert "build: progress model=digits variant=fp32 stage=train epoch=0/" in log
    assert "%|" not in log  # no progress bar (tqdm) reaches the server's log
    assert reported, "ListVariants never showed a variant's progress"
    assert {v.name for v in reported} <= ALL and all(v.progress.stage for v in reported)
    assert any(v.progress.unit == "epoch" and v.progress.total > 0 for v in reported), [v.progress for v in reported]


@pytest.mark.slow
def test_with_workers_no_worker_profiles_a_publication_and_one_stores_the_profile_once(tmp_path: Path) -> None:
    """`make run`'s default, `--workers` one per core: each worker's sessions get fewer threads
    than the build profiled with. No worker measures any publication while the build runs
    (both did, at every publication, taking the cores from the niced build); once it is done,
    worker 0 measures once and stores it, and worker 1 loads that."""
    recipe = tmp_path / "digits.yaml"
    recipe.write_text(yaml.safe_dump(quick_digits_recipe().model_dump(mode="json")))
    threads = 1 if usable_cores() > 1 else 2  # not the build's thread count (every core)
    env = {"SLIMSERVE_BUILD_RECIPES": json.dumps([str(recipe)]), "SLIMSERVE_SESSION_THREADS": str(threads)}
    repo = tmp_path / "repo"
    server = RunningServer(repo, tmp_path, "--workers", "2", "--build-missing", env=env, wait=False)
    key = fingerprint(threads).key

    def stored() -> bool:  # every served variant's file has the profile (the build is done: digits is there)
        return all(key in v.manifest.profiles for v in load_model(repo / "digits").variants.values())

    def reloaded_after_storing() -> bool:
        log = server.log_path.read_text()
        stored_at = log.find("measured this machine's profile")
        return (
            stored_at >= 0 and "[worker 1] INFO slimserve.server.core.model_control: reloaded digits" in log[stored_at:]
        )

    try:
        wait_until(lambda: "background build finished" in server.log_path.read_text(), BUILD_TIMEOUT_S, "the build")
        wait_until(stored, 120, lambda: f"the stored profiles; the log:\n{server.log_tail()}")
        wait_until(reloaded_after_storing, 60, "worker 1 loading the stored profiles")
    finally:
        assert server.stop() == 0
    log = server.log_path.read_text()
    assert "measured one at start-up" not in log  # no worker profiled a publication
    assert "[worker 1] INFO slimserve.server.core.profiles: digits: routing on this machine's profile for" in log
    (line,) = [line for line in log.splitlines() if "measured this machine's profile" in line]
    assert line.startswith("[worker 0] ") and f"for {threads} session thread(s)" in line
    assert "%|" not in log


def test_the_build_child_shares_the_cores_and_leaves_omp_waiting_to_the_environment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The niced child trains on one thread while serving is busy (`--share-cores`, which the
    CLI accepts) instead of waiting passively; an OMP_WAIT_POLICY in the server's environment
    is passed on as it is, and none is imposed."""
    argv = BackgroundBuild(tmp_path).command
    assert argv[1:3] == ["-m", "slimserve.cli"] and _parser().parse_args(argv[3:]).share_cores
    report = "import os; print('built: OMP_WAIT_POLICY=' + os.environ.get('OMP_WAIT_POLICY', 'unset'))"

    async def child_policy() -> str:
        build = BackgroundBuild(tmp_path, command=[sys.executable, "-c", report])
        await build.start()
        assert await build.wait() == 0
        (line,) = [r.getMessage() for r in caplog.records if "OMP_WAIT_POLICY" in r.getMessage()]
        caplog.clear()
        return line.rsplit("=", 1)[1]

    caplog.set_level("INFO", "slimserve.server.process.background_build")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert asyncio.run(child_policy()) == "unset"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert asyncio.run(child_policy()) == "PASSIVE"
