"""The background build's output relay and progress, on a real child process and a real pipe."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from slimserve.protos import slimserve_pb2 as pb
from slimserve.protos import slimserve_pb2_grpc
from slimserve.server.core.data_plane import Admission, DataPlane
from slimserve.server.core.registry import ModelRegistry
from slimserve.server.core.shadow import ShadowSampler
from slimserve.server.observe.activity import Activity
from slimserve.server.observe.backlog import GrpcBacklog
from slimserve.server.observe.feedback import RecentAnswers
from slimserve.server.observe.metrics import ServingMetrics
from slimserve.server.observe.recorder import CallRecorder
from slimserve.server.process.background_build import BUILD_NICENESS, BackgroundBuild
from slimserve.server.transport.management import ManagementServicer
from slimserve.server.transport.status import outcome_of
from slimserve.variants.progress import ProgressLine
from tests.fake_clock import FakeClock

# A megabyte of progress-bar redraws ('\r', never '\n'), then a publication and a failure.
CHILD = r"""
import sys
for i in range(20000):
    sys.stdout.write(f"\rbuilding: {i:>6} of 20000 steps " + "#" * 30)
sys.stdout.write("\nINFO variants.build: digits: published fp32, int8 after 3 s\n")
sys.stdout.flush()
sys.exit(3)
"""


def test_long_progress_lines_never_block_the_child_and_progress_is_relayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> BackgroundBuild:
        build = BackgroundBuild(tmp_path, command=[sys.executable, "-c", CHILD])
        await build.start()
        await asyncio.wait_for(build.wait(), timeout=60)  # the relay hung forever before the fix
        return build

    with caplog.at_level(logging.INFO, logger="slimserve.server.process.background_build"):
        build = asyncio.run(scenario())
    assert build.exit_code == 3 and not build.running
    messages = [r.getMessage() for r in caplog.records]
    assert "build: digits: published fp32, int8 after 3 s" in messages
    assert any("background build failed (exit code 3)" in m for m in messages)
    assert not any("building:" in m for m in messages)  # progress bars are not relayed


# What the child sees of its process: its niceness and its environment's names (a line the relay keeps).
ENVIRONMENT_CHILD = r"""
import os
print("INFO variants.build: built nice", os.nice(0), "env", " ".join(sorted(os.environ)), flush=True)
"""


def test_the_build_child_runs_niced_without_any_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "SLIMSERVE_INFERENCE_TOKEN": "inference-token-0123456789",
        "SLIMSERVE_MANAGEMENT_TOKEN": "management-token-0123456789",
        "SLIMSERVE_METRICS_TOKEN": "metrics-token-0123456789",
        "SLIMSERVE_WORKER_SCRAPE_TOKEN": "scrape-token-0123456789",
        "SLIMSERVE_TOKEN": "client-0123456789",
    }
    for name, token in secrets.items():  # fmt: skip
        monkeypatch.setenv(name, token)
    monkeypatch.setenv("SLIMSERVE_REPOSITORY_POLL_S", "2")  # a setting, not a secret: passed on

    async def scenario() -> BackgroundBuild:
        build = BackgroundBuild(tmp_path, command=[sys.executable, "-c", ENVIRONMENT_CHILD])
        await build.start()
        await asyncio.wait_for(build.wait(), timeout=60)
        return build

    with caplog.at_level(logging.INFO, logger="slimserve.server.process.background_build"):
        assert asyncio.run(scenario()).exit_code == 0
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("build: built nice")]
    nice, names = line.removeprefix("build: built nice ").split(" env ")
    assert int(nice) >= BUILD_NICENESS  # from `nice`: no preexec_fn ran in a threaded server
    assert "SLIMSERVE_REPOSITORY_POLL_S" in names.split()
    assert not set(secrets) & set(names.split())


def test_what_is_still_building(tmp_path: Path) -> None:
    async def scenario() -> None:
        build = BackgroundBuild(tmp_path, command=[sys.executable, "-c", "import time; time.sleep(60)"])
        hosted = {"digits": ["fp32", "int8"]}
        assert build.building({}) == []  # not started: nothing is being built
        await build.start()
        try:
            assert ("minilm", "distilled") in build.building(hosted)
            assert ("digits", "int8") not in build.building(hosted)
        finally:
            await build.stop()
        assert build.building(hosted) == []  # stopped: nothing is being built any more

    asyncio.run(scenario())


# A build's progress as `slimserve build` logs it, behind a tqdm bar (drawn only where
# TQDM_DISABLE is unset; its label has a word the relay passes) and the int8 chatter.
PROGRESS_CHILD = r"""
import os, sys, time
from tqdm import tqdm
for _ in tqdm(range(3), desc="error-free bar", file=sys.stdout):
    time.sleep(0.01)
print("INFO slimserve.variants.progress: progress model=digits variant=fp32,int8 stage=published elapsed_s=0")
print("INFO slimserve.variants.build: digits: published fp32, int8 after 3 s; "
      f"worker settings {os.environ.get('SLIMSERVE_WORKER_SETTINGS', 'unset')}")
print("INFO slimserve.variants.quantize: int8 per-channel: selection score 0.98")
print("INFO slimserve.variants.progress: progress model=digits variant=pruned stage=prune elapsed_s=2")
print("INFO slimserve.variants.progress: "
      "progress model=digits variant=pruned stage=prune step=1/2 epoch=1/4 elapsed_s=41 remaining_s=95")
print("INFO slimserve.variants.progress: progress model=digits variant=distilled stage=distill elapsed_s=0")
sys.stdout.flush()
time.sleep(60)
"""
HOURS_S = 3 * 3600.0


async def _until_reported(build: BackgroundBuild, key: tuple[str, str]) -> None:
    for _ in range(600):  # the child's lines are read as they come: wait for the last one
        if key in build.progress():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} never reported")


def test_progress_lines_are_relayed_and_kept_per_variant_aged_on_the_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIMSERVE_WORKER_SETTINGS", '{"worker_index": 0}')  # worker 0 of --workers builds
    clock = FakeClock()

    async def scenario() -> None:
        build = BackgroundBuild(tmp_path, command=[sys.executable, "-c", PROGRESS_CHILD], clock=clock)
        await build.start()
        try:
            await _until_reported(build, ("digits", "distilled"))
            now = build.progress()
            assert now[("digits", "pruned")] == ProgressLine(
                "digits", ("pruned",), "prune", 41.0, 95.0, step=1, steps=2, unit="epoch", done=1, total=4
            )  # the latest line of a variant replaces the earlier ones
            assert now[("digits", "fp32")].stage == now[("digits", "int8")].stage == "published"
            clock.advance(30.0)  # no line since: the stage has run 30 s more, its estimate is 30 s less
            pruned = build.progress()[("digits", "pruned")]
            assert (pruned.elapsed_s, pruned.remaining_s) == (71.0, 65.0)
            clock.advance(HOURS_S)
            pruned = build.progress()[("digits", "pruned")]
            assert (pruned.elapsed_s, pruned.remaining_s) == (71.0 + HOURS_S, 0.0)
            assert build.progress()[("digits", "distilled")].remaining_s is None  # no estimate yet
        finally:
            await build.stop()
        assert build.progress() == {}  # stopped: nothing is being built

    with caplog.at_level(logging.INFO, logger="slimserve.server.process.background_build"):
        asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert "build: progress model=digits variant=pruned stage=prune step=1/2 epoch=1/4 elapsed_s=41 remaining_s=95" in (
        messages
    )
    assert "build: digits: published fp32, int8 after 3 s; worker settings unset" in messages  # no [worker 0] prefix
    assert not any("error-free bar" in m for m in messages)  # tqdm draws nothing in the child
    assert not any("selection score" in m for m in messages)


def test_list_variants_shows_the_progress_of_each_variant_being_built(tmp_path: Path) -> None:
    """Over real gRPC, on a server with nothing published yet (every planned variant building)."""
    clock = FakeClock()

    async def scenario() -> tuple[pb.ListVariantsResponse, pb.ListVariantsResponse]:
        build = BackgroundBuild(tmp_path, command=[sys.executable, "-c", PROGRESS_CHILD], clock=clock)
        registry = ModelRegistry()
        recorder = CallRecorder(ServingMetrics(CollectorRegistry()))
        plane = DataPlane(
            registry, recorder, Admission(), GrpcBacklog(None), Activity(), ShadowSampler(0.0, recorder, lambda: 0.0),
            RecentAnswers(0), outcome_of, clock,
        )  # fmt: skip
        server = grpc.aio.server()
        slimserve_pb2_grpc.add_ManagementServicer_to_server(ManagementServicer(plane, registry, "key", build), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await build.start()
        try:
            await _until_reported(build, ("digits", "distilled"))
            clock.advance(30.0)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = slimserve_pb2_grpc.ManagementStub(channel)
                every = await stub.ListVariants(pb.ListVariantsRequest(), timeout=10)
                digits = await stub.ListVariants(pb.ListVariantsRequest(model="digits"), timeout=10)
        finally:
            await build.stop()
            await server.stop(None)
        return every, digits

    every, digits = asyncio.run(scenario())
    building = {(b.model, b.name): b for b in every.building}
    pruned = building[("digits", "pruned")]
    assert pruned.HasField("progress")
    progress = pruned.progress
    assert (progress.stage, progress.step, progress.steps) == ("prune", 1, 2)
    assert (progress.unit, progress.done, progress.total) == ("epoch", 1, 4)
    assert (progress.elapsed_s, progress.remaining_s) == (71.0, 65.0)
    distilled = building[("digits", "distilled")].progress
    assert distilled.stage == "distill" and not distilled.HasField("remaining_s")  # no estimate yet: unset, not 0
    assert building[("digits", "int8")].progress.stage == "published"
    assert not building[("minilm", "fp32")].HasField("progress")  # not reported on yet
    assert {b.model for b in digits.building} == {"digits"}
    assert {b.name: b.progress.stage for b in digits.building}["pruned"] == "prune"
