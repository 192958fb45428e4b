"""The serving core without gRPC, for tests: registry, factory, recorder, data plane and
model control over a real repository, wired as the app wires them (`server.process.app`);
no gRPC server (only its status names, for the outcomes)."""

from __future__ import annotations

import time
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from slimserve.repository.format import load_repository
from slimserve.repository.hardware import fingerprint
from slimserve.router.config import RouterConfig
from slimserve.router.cpu import CpuAccount
from slimserve.server.core.data_plane import Admission, DataPlane, LocalCall
from slimserve.server.core.model_control import ModelControl
from slimserve.server.core.profiles import Profiler
from slimserve.server.core.registry import HostedModelFactory, ModelRegistry
from slimserve.server.core.request import InferenceRequest, InferenceResult
from slimserve.server.core.shadow import ShadowSampler
from slimserve.server.observe.activity import Activity
from slimserve.server.observe.backlog import GrpcBacklog
from slimserve.server.observe.feedback import RecentAnswers
from slimserve.server.observe.metrics import ServingMetrics
from slimserve.server.observe.recorder import CallRecorder
from slimserve.server.transport.status import outcome_of

MAX_QUEUE_SIZE = 64
MAX_QUEUE_BYTES = 1 << 40
CALLS_AT_ONCE = 4  # turns (core.turns), which reloads must keep; no fewer than digits' variants


class ServingCore:
    """What `App` builds below the transport, on the real clock, accepting calls at once."""

    def __init__(self, repository: Path, executor: Executor, threads: int) -> None:
        profiler = Profiler(fingerprint(threads), "cloud-cpu")
        key = profiler.key
        models = profiler.ensure(load_repository(repository))
        self.metrics = ServingMetrics(CollectorRegistry())
        self.recorder = CallRecorder(self.metrics)
        self.recorder.describe(models)
        self.registry = ModelRegistry()
        self.factory = HostedModelFactory(
            self.registry, self.recorder, executor, CALLS_AT_ONCE, threads, MAX_QUEUE_SIZE, MAX_QUEUE_BYTES, key,
            RouterConfig(), CpuAccount(RouterConfig().cpu_target_utilization), lambda: 0.0, lambda: None,
            time.monotonic,
        )  # fmt: skip
        for entry in models.values():
            self.registry.put(self.factory.build(entry, self.factory.sessions(entry)))
        self.plane = DataPlane(
            self.registry, self.recorder, Admission(), GrpcBacklog(None), Activity(),
            ShadowSampler(0.0, self.recorder, lambda: 0.0), RecentAnswers(0), outcome_of, time.monotonic,
        )  # fmt: skip
        self.plane.start_accepting()
        self.control = ModelControl(self.registry, self.factory, self.recorder, repository, profiler, 1, lambda: None)

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """One call through the data plane, as a front end makes it."""
        return await self.plane.infer(LocalCall(request))


def zero_digits(variant: str = "") -> InferenceRequest:
    """One all-zero digits image, decoded: what a front end would hand the data plane."""
    return InferenceRequest("digits", variant, {"images": np.zeros((1, 1, 28, 28), np.float32)})
