"""Builds and runs the server: settings → repository → sessions → routers → servicers → gRPC.

This is the one place that constructs those objects; there is no module-level state, so
tests start as many servers as they like, each on port 0.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from protos import inference_pb2, inference_pb2_grpc, slimserve_pb2, slimserve_pb2_grpc
from router.cpu import CpuAccount
from server.feedback import RecentAnswers
from server.host import ModelHost
from server.load_monitor import LoadMonitor
from server.management import ManagementServicer
from server.metrics import ServingMetrics
from server.profiles import ensure_profiles
from server.servicer import InferenceServicer
from server.settings import Settings
from server.shadow import ShadowSampler
from variants.hardware import fingerprint, pin_to_one_core, threads_for
from variants.repository import load_repository

log = logging.getLogger(__name__)
SERVICE_NAMES = (
    inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    slimserve_pb2.DESCRIPTOR.services_by_name["Management"].full_name,
)


class App:
    """A running slimserve: gRPC server, health, models, metrics. `start()`, then `stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.hardware_profile == "edge":
            pin_to_one_core()
        threads = settings.session_threads or threads_for(settings.hardware_profile)
        self.hardware_key = fingerprint(threads).key
        models = load_repository(settings.repository)
        ensure_profiles(models, self.hardware_key, settings.hardware_profile, threads)
        # One worker per variant by default: a short batch of a cheap variant then runs beside a
        # long one instead of waiting for it (the cores are shared either way).
        workers = settings.compute_workers or max([threads, *(len(m.variants) for m in models.values())])
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onnxruntime")
        self.host = ModelHost(
            models, self._executor, workers, threads, settings.max_queue_size, self.hardware_key,
            settings.rpc_allowance_ms,
        )  # fmt: skip
        self.load = LoadMonitor(CpuAccount(settings.cpu_target))
        for hosted in self.host.models.values():
            hosted.router.loop_lag_ms = lambda: self.load.lag_ms
            hosted.router.cpu = self.load.cpu
        self.host.answers = RecentAnswers(settings.feedback_capacity)
        self.metrics: ServingMetrics | None = None
        self.metrics_port: int | None = None
        self._metrics_http: WSGIServer | None = None
        if settings.metrics:
            self.metrics = ServingMetrics(CollectorRegistry())
            self.metrics.describe_repository(models)
            self.metrics.watch(self.host, self.load)
            self.host.metrics = self.metrics
            if settings.shadow_fraction > 0:
                self.host.shadow = ShadowSampler(
                    settings.shadow_fraction, self.metrics, lambda: self.load.cpu_utilization
                )
        self.inference = InferenceServicer(self.host, self.metrics)
        self.health = health.aio.HealthServicer()
        limits = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
        self.server = grpc.aio.server(options=limits)
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.inference, self.server)
        management = ManagementServicer(self.host, self.hardware_key, self.metrics)
        slimserve_pb2_grpc.add_ManagementServicer_to_server(management, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = self.server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for service in ("", *SERVICE_NAMES):
            await self.health.set(service, status)

    async def start(self) -> None:
        """Listen (health NOT_SERVING), warm every variant up, then report SERVING."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.metrics is not None:
            self._metrics_http, _ = start_http_server(
                self.settings.metrics_port, self.settings.host, registry=self.metrics.registry
            )
            self.metrics_port = self._metrics_http.server_port
        await asyncio.get_running_loop().run_in_executor(None, self.host.warm_up, self.settings.warmup_calls)
        self.host.start_batchers()
        self.load.start()
        self.inference.accepting = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving %s on port %d (metrics: %s)", ", ".join(self.host.models), self.port,
            f"port {self.metrics_port}" if self.metrics_port else "off",
        )  # fmt: skip

    async def stop(self) -> None:
        """Graceful: NOT_SERVING, refuse new calls, let in-flight ones finish within the grace."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.inference.accepting = False
        await self.server.stop(self.settings.shutdown_grace_s)
        if self.host.shadow is not None:
            await self.host.shadow.close()
        await self.host.close()
        await self.load.stop()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self._executor.shutdown(wait=True)
        log.info("stopped")
