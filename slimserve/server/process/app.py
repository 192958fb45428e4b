"""Builds and runs the server: settings → repository → registry (sessions, batchers, routers)
→ data plane → servicers → gRPC.

This is the one place that constructs those objects, each complete from its constructor
(nothing is wired after construction); there is no module-level state, so tests start as
many servers as they like, each on port 0. One clock (monotonic seconds) is passed to
every object for which time is the subject.

Threads: the event loop owns the registry (models, routers, batchers), the data plane and
the health servicer. ONNX Runtime runs in the executor's worker threads (where a model's
calls take turns if asked to: core.turns); the Prometheus HTTP server runs in its own
thread and reads only `App.live`, the `LiveState` the loop publishes every PUBLISH_PERIOD_S
(one reference, swapped whole).

Health: SERVING while accepting and at least one model can serve; a model with a failed
batcher reports ModelReady false and `slimserve_model_ready` 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from slimserve.protos import inference_pb2, slimserve_pb2, slimserve_pb2_grpc
from slimserve.repository.format import load_repository, restore_interrupted
from slimserve.repository.hardware import fingerprint, pin_to_one_core, threads_for
from slimserve.router.config import RouterConfig
from slimserve.router.cpu import CpuAccount
from slimserve.router.load import Clock
from slimserve.server.core.data_plane import Admission, DataPlane
from slimserve.server.core.model_control import ModelControl, RepositoryPoller
from slimserve.server.core.profiles import Profiler
from slimserve.server.core.registry import HostedModelFactory, ModelRegistry
from slimserve.server.core.shadow import ShadowSampler
from slimserve.server.observe.activity import Activity
from slimserve.server.observe.backlog import SAMPLE_S, CallCount, GrpcBacklog, newest_server_id
from slimserve.server.observe.feedback import RecentAnswers
from slimserve.server.observe.live_state import IDLE_PUBLISH_PERIOD_S, PUBLISH_PERIOD_S, LiveState
from slimserve.server.observe.load_monitor import LoadMonitor
from slimserve.server.observe.metrics import ServingMetrics
from slimserve.server.observe.recorder import CallRecorder
from slimserve.server.process.metrics_http import MetricsAccess, metrics_tls, start_metrics_http
from slimserve.server.process.peers import (
    PeerPort,
    Peers,
    PeerStatistics,
    WorkerFeedback,
    WorkerModelControl,
    ticket_prefix,
)
from slimserve.server.process.settings import Settings, token_table
from slimserve.server.process.worker_state import read_worker_states, unloaded_models
from slimserve.server.transport.auth import server_interceptors
from slimserve.server.transport.inference import InferenceServicer, add_inference_service
from slimserve.server.transport.management import ManagementServicer
from slimserve.server.transport.shared_memory import SharedMemory
from slimserve.server.transport.status import outcome_of
from slimserve.server.transport.tls import ServerTls, TlsConfigError

if TYPE_CHECKING:
    from slimserve.server.process.background_build import BackgroundBuild

log = logging.getLogger(__name__)
# Threads that run session calls, at most: one per batcher, running or waiting for its
# model's turn (core.turns); past this many variants a batch also waits for a thread.
COMPUTE_THREADS_MAX = 256
BUILD_POLL_S = 2.0  # how often the repository is scanned while a background build publishes into it
SERVICE_NAMES = (
    inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    slimserve_pb2.DESCRIPTOR.services_by_name["Management"].full_name,
)
WORKERS_HEALTH_SERVICE = "slimserve.workers"  # under --workers: SERVING while every worker serves


class BindError(RuntimeError):
    """A port the server was told to use cannot be bound."""


class App:
    """A running slimserve: gRPC server, health, models, metrics. `start()`, then `stop()`."""

    def __init__(self, settings: Settings, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        # A worker of --workers, whose supervisor passed what its siblings share with it.
        self._worker = settings.worker_scratch is not None and settings.worker_scrape_token is not None
        if settings.hardware_profile == "edge":
            pin_to_one_core()
        threads = settings.session_threads or threads_for(settings.hardware_profile)
        # While a build publishes (--build-missing), a profile it measured with another thread
        # count stands in for this process's until one is stored (`core.profiles`).
        self.profiler = Profiler(fingerprint(threads), settings.hardware_profile, borrow=settings.build_missing)
        self.hardware_key = self.profiler.key
        if settings.build_missing:
            settings.repository.mkdir(parents=True, exist_ok=True)
        restore_interrupted(settings.repository)  # a publish that died half-way: its model comes back
        repository = load_repository(settings.repository, allow_empty=settings.build_missing)
        if self._worker:  # a restarted worker agrees with the others on what was unloaded meanwhile
            assert settings.worker_scratch is not None
            unloaded = unloaded_models(settings.worker_scratch)
            repository = {name: entry for name, entry in repository.items() if name not in unloaded}
        models = self.profiler.ensure(repository)
        # By default every variant's batch runs beside the others (a short batch of a cheap
        # variant does not wait for a long one; the cores are shared either way); with
        # SLIMSERVE_COMPUTE_WORKERS each model's calls take turns, that many at once
        # (core.turns). The executor has a thread for every batcher, so that a model waiting
        # for its turn never holds up another's; threads start only as calls need them.
        calls_at_once = settings.compute_workers or None
        self._executor = ThreadPoolExecutor(max_workers=COMPUTE_THREADS_MAX, thread_name_prefix="onnxruntime")
        # Metrics are always recorded; --metrics only decides whether /metrics is served.
        self.metrics = ServingMetrics(CollectorRegistry())
        self.metrics.watch(lambda: self.live)
        self.recorder = CallRecorder(self.metrics)
        self.recorder.describe(models)
        self.activity = Activity(clock=clock)
        self.load = LoadMonitor(CpuAccount(settings.cpu_target, settings.cpu_share), self.activity, clock=clock)
        self.registry = ModelRegistry()
        router_config = RouterConfig.without(
            settings.router_off, rpc_allowance_ms=settings.rpc_allowance_ms, cpu_target_utilization=settings.cpu_target,
            shed_late_on=settings.shed_late,
        )  # fmt: skip
        self.factory = HostedModelFactory(
            self.registry, self.recorder, self._executor, calls_at_once, threads, settings.max_queue_size,
            settings.max_queue_bytes, self.hardware_key, router_config, self.load.cpu, lambda: self.load.lag_ms,
            self._readiness_changed, clock,
        )  # fmt: skip
        for entry in models.values():
            self.registry.put(self.factory.build(entry, self.factory.sessions(entry)))
        self.metrics_port: int | None = None
        self._metrics_http: ThreadingHTTPServer | None = None
        self._metrics_thread: threading.Thread | None = None
        self.live: LiveState | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._health_updates: set[asyncio.Task[None]] = set()
        self._workers_status: health_pb2.HealthCheckResponse.ServingStatus.ValueType | None = None
        self.health = health.aio.HealthServicer()
        self.tls = ServerTls.from_files(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        if settings.metrics_tls and self.tls is None:
            raise TlsConfigError("--metrics-tls serves /metrics with --tls-cert and --tls-key: give them too")
        tokens = token_table(settings)
        # The call count first, on this server alone: the backlog subtracts every call it has
        # seen taken up (those the token check refuses too) from this server's channelz counts.
        calls = CallCount()
        interceptors = [calls, *server_interceptors(tokens)]
        self.server = grpc.aio.server(options=grpc_options(settings), interceptors=interceptors)
        self.backlog = GrpcBacklog(newest_server_id(), clock, calls)  # the server just created is the newest
        self._backlog_watch: asyncio.Task[None] | None = None
        self.shadow = ShadowSampler(settings.shadow_fraction, self.recorder, lambda: self.load.cpu_utilization)
        # Worker i's Feedback tickets name it, so that any worker can pass Feedback there.
        tickets = ticket_prefix(settings.worker_index) if settings.worker_index is not None else ""
        answers = RecentAnswers(settings.feedback_capacity, ids_are_private=tokens.enabled, ticket_prefix=tickets)
        self.plane = DataPlane(
            self.registry, self.recorder, Admission(settings.shed_late), self.backlog, self.activity, self.shadow,
            answers, outcome_of, clock,
        )  # fmt: skip
        control_arguments = (self.registry, self.factory, self.recorder, settings.repository, self.profiler,
                             settings.warmup_calls, self._models_changed)  # fmt: skip
        self.peers: PeerPort | None = None
        peer_statistics: PeerStatistics | None = None
        feedback: WorkerFeedback | None = None
        if self._worker:  # the workers act as one server (process.peers)
            assert settings.worker_index is not None and settings.worker_scratch is not None
            assert settings.worker_scrape_token is not None
            token = settings.worker_scrape_token.get_secret_value()
            peers = Peers(settings.worker_index, settings.worker_scratch, token)
            worker_control = WorkerModelControl(*control_arguments, peers=peers, scratch=settings.worker_scratch)
            self.peers = PeerPort(worker_control, self.plane, token)
            self.control: ModelControl = worker_control
            peer_statistics, feedback = PeerStatistics(peers), WorkerFeedback(self.plane, peers)
        else:
            self.control = ModelControl(*control_arguments)
        self._poller: asyncio.Task[None] | None = None
        self._after_build: asyncio.Task[None] | None = None
        self.build: BackgroundBuild | None = None
        # With --workers, worker 0 builds and the others load what it publishes.
        if settings.build_missing and not settings.worker_index:  # torch: `slimserve[build]`; serving needs none
            from slimserve.server.process.background_build import BackgroundBuild

            self.build = BackgroundBuild(settings.repository, settings.build_recipes)
        # Triton's system shared memory regions: per token when tokens are set; unmapped in stop().
        self.shared_memory = SharedMemory(per_caller=tokens.enabled)
        inference = InferenceServicer(self.plane, self.control, self.shared_memory, peer_statistics)
        add_inference_service(inference, self.server)
        management = ManagementServicer(self.plane, self.registry, self.hardware_key, self.build, feedback)
        slimserve_pb2_grpc.add_ManagementServicer_to_server(management, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        credentials = self.tls.grpc_credentials() if self.tls is not None else None
        self.port = _listen(self.server, f"{settings.host}:{settings.grpc_port}", credentials)
        self.health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        if settings.health_port is not None:  # plaintext, grpc.health.v1 only: for kubelet's probes
            self.health_server = grpc.aio.server(options=health_port_options(settings))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = _listen(self.health_server, f"{settings.host}:{settings.health_port}")
        self.tokens_enabled = tokens.enabled
        self._warn_if_exposed(tokens.enabled)

    def _warn_if_exposed(self, authenticated: bool) -> None:
        """Loudly, at start-up: a port anyone on the network can use for everything."""
        self._warn_if_metrics_exposed(authenticated)
        if is_loopback(self.settings.host) or (authenticated and self.tls is not None):
            return
        missing = [
            what for what, there in (("authentication", authenticated), ("TLS", self.tls is not None)) if not there
        ]
        log.warning(
            "SECURITY: listening on %s:%d with no %s. Anyone who can reach this port can %s. Set "
            "--tls-cert/--tls-key (and --tls-client-ca) and SLIMSERVE_INFERENCE_TOKEN / SLIMSERVE_MANAGEMENT_TOKEN "
            "or --auth-tokens-file, or bind to 127.0.0.1 (README: Security).",
            self.settings.host, self.port, " and no ".join(missing),
            "run inference, read every measurement and send feedback" if not authenticated
            else "read tokens and answers off the wire",
        )  # fmt: skip

    def _warn_if_metrics_exposed(self, authenticated: bool) -> None:
        """/metrics in plaintext beyond this host while the gRPC port has TLS: its token (a
        scrape needs one when the gRPC port takes tokens) and the figures cross the wire in
        clear. A worker's endpoint is on loopback, for its supervisor alone."""
        host = self.settings.metrics_host or self.settings.host
        if not self.settings.metrics or is_loopback(host) or self.settings.worker_index is not None:
            return
        if self.tls is not None and not self.settings.metrics_tls:
            log.warning(
                "SECURITY: /metrics is plaintext on %s while the gRPC port has TLS: %s crosses the network in "
                "clear. Set --metrics-tls, or SLIMSERVE_METRICS_HOST=127.0.0.1 (README: Security).",
                host, "the scrape token and every figure" if authenticated else "every figure",
            )  # fmt: skip

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for service in ("", *SERVICE_NAMES):
            await self.health.set(service, status)

    def _serving_status(self) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        can_serve = self.plane.accepting and any(m.ready for m in self.registry.models.values())
        return health_pb2.HealthCheckResponse.SERVING if can_serve else health_pb2.HealthCheckResponse.NOT_SERVING

    def _readiness_changed(self) -> None:
        """A batcher failed for good (on the loop): tell the probes."""
        log.error("model readiness: %s", {name: m.ready for name, m in self.registry.models.items()})
        self._models_changed()

    def _models_changed(self) -> None:
        """A model was loaded, reloaded or unloaded, or a batcher failed: health follows."""
        if not self.plane.accepting:
            return  # starting or draining: start() and stop() set health themselves
        task = asyncio.get_running_loop().create_task(self._set_health(self._serving_status()))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    def _start_metrics_http(self) -> None:
        port = self.metrics_port if self.metrics_port is not None else self.settings.metrics_port
        self._metrics_http, self._metrics_thread = start_metrics_http(
            port,
            self.settings.metrics_host or self.settings.host,
            self.metrics.registry,
            MetricsAccess.of(self.settings),
            metrics_tls(self.settings, self.tls),
        )
        self.metrics_port = self._metrics_http.server_port

    async def _report_workers(self) -> None:
        """Under `--workers`: health service WORKERS_HEALTH_SERVICE follows the supervisor's
        states file (`process.worker_state`): SERVING while every worker serves."""
        if self.settings.worker_scratch is None:
            return
        states = read_worker_states(self.settings.worker_scratch)
        every = bool(states) and all(state == "serving" for state in states.values())
        status = health_pb2.HealthCheckResponse.SERVING if every else health_pb2.HealthCheckResponse.NOT_SERVING
        if status != self._workers_status:
            self._workers_status = status
            await self.health.set(WORKERS_HEALTH_SERVICE, status)

    async def _publish(self) -> None:
        """Every PUBLISH_PERIOD_S: a fresh LiveState for other threads; revive a dead exporter.
        While idle, every IDLE_PUBLISH_PERIOD_S or at the next arrival, whichever comes first."""
        while True:
            try:
                await self._report_workers()
                self.live = self.registry.live_state(self.load.cpu, self.load.lag_ms)
                if self._metrics_thread is not None and not self._metrics_thread.is_alive():
                    log.error("the metrics exporter thread died; restarting it on port %s", self.metrics_port)
                    self._start_metrics_http()
            except Exception:  # publishing must outlive any one bad tick
                log.exception("publishing the live state failed; trying again in %.2f s", PUBLISH_PERIOD_S)
            if not self.activity.idle(self._clock()):
                await asyncio.sleep(PUBLISH_PERIOD_S)
                continue
            try:
                await asyncio.wait_for(self.activity.wait_for_arrival(), IDLE_PUBLISH_PERIOD_S)
            except TimeoutError:
                continue  # still idle: the periodic refresh
            # Woken by a request: publish a period later, as while busy, not mid-request (a
            # snapshot taken now would show that one request in flight until the next).
            await asyncio.sleep(PUBLISH_PERIOD_S)

    async def _watch_backlog(self) -> None:
        """Every SAMPLE_S while calls are in flight: how many wait inside gRPC. Parked between
        the last call and the next arrival (`observe.activity`), so that idle costs nothing."""
        while True:
            if not self.backlog.busy():
                await self.activity.wait_for_arrival()
            await asyncio.sleep(SAMPLE_S)
            try:
                if self.backlog.busy():
                    self.backlog.sample()
            except Exception:  # the estimate must outlive any one bad sample
                log.exception("sampling the gRPC backlog failed")

    async def _store_profiles(self) -> None:
        """Once the background build has finished: this process's profile of every model
        that lacks one, measured once for every worker and stored (`core.profiles`), rather
        than each worker measuring each publication while the build needs the cores."""
        assert self.build is not None
        await self.build.wait()
        if self.plane.accepting:  # not stopping
            await self.control.store_profiles()

    async def start(self) -> None:
        """Listen (health NOT_SERVING), warm every variant up, then report SERVING."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        if self.peers is not None:
            await self.peers.server.start()
        if self.settings.metrics:
            self._start_metrics_http()
        await asyncio.get_running_loop().run_in_executor(None, self.registry.warm_up, self.settings.warmup_calls)
        self.registry.start_batchers()
        self.load.start()
        self._publisher = asyncio.get_running_loop().create_task(self._publish(), name="live-state")
        self._backlog_watch = asyncio.get_running_loop().create_task(self._watch_backlog(), name="grpc-backlog")
        poll_s = self.settings.repository_poll_s or (BUILD_POLL_S if self.settings.build_missing else 0)
        if poll_s > 0:
            poller = RepositoryPoller(self.control, poll_s)
            self._poller = asyncio.get_running_loop().create_task(poller.run(), name="repository-poll")
        if self.build is not None:
            await self.build.start()
            self._after_build = asyncio.get_running_loop().create_task(self._store_profiles(), name="store-profiles")
        self.plane.start_accepting()
        await self._set_health(self._serving_status())
        transport = "plaintext" if self.tls is None else "mutual TLS" if self.tls.client_ca else "TLS"
        models = ", ".join(self.registry) or "no models yet"
        log.info(
            "serving %s on port %d (%s, tokens %s; metrics: %s; health-only port: %s)",
            models, self.port, transport, "on" if self.tokens_enabled else "off",
            f"port {self.metrics_port}" if self.metrics_port else "off", self.health_port or "none",
        )  # fmt: skip

    async def stop(self) -> None:
        """Graceful: NOT_SERVING, refuse new calls, let in-flight ones finish within the grace.

        For `drain_s` new calls are answered UNAVAILABLE while connections stay open: gRPC's
        shutdown drops the calls it holds that no handler has taken yet (the client sees
        CANCELLED), so they are taken and refused first."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.plane.stop_accepting()
        if self.build is not None:
            await self.build.stop()
        await asyncio.sleep(self.settings.drain_s)
        await self.server.stop(self.settings.shutdown_grace_s)
        if self.health_server is not None:
            await self.health_server.stop(None)
        if self.peers is not None:
            await self.peers.server.stop(None)
        if self.plane.cut_off:
            log.error("%d admitted calls were cut off when the %.1f-s grace ran out",
                      self.plane.cut_off, self.settings.shutdown_grace_s)  # fmt: skip
        else:
            log.info("drained: every admitted call was answered")
        self.shared_memory.close()  # after the server stopped: no call is left to read or write a region
        await self.shadow.close()
        await self.registry.close()
        await self.load.stop()
        for task in (self._publisher, self._backlog_watch, self._poller, self._after_build):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        self._executor.shutdown(wait=True)
        log.info("stopped")


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the port on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _reuse_port(settings: Settings) -> tuple[str, int]:
    """One process per port, unless --workers shares it: gRPC sets SO_REUSEPORT by default on
    Linux, so a second server on a taken port would silently split its traffic."""
    return ("grpc.so_reuseport", 0 if settings.worker_index is None else 1)


def _listen(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind `address` (TLS with `credentials`); a port that cannot be bound is a BindError."""
    try:
        if credentials is not None:
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)
    except RuntimeError as exc:  # gRPC says only "Failed to bind"
        raise BindError(f"cannot listen on {address}: is another server using the port? ({exc})") from exc


IDENTITY_ONLY_BITSET = 1  # grpc_compression_algorithm bit 0: GRPC_COMPRESS_NONE
HEALTH_MAX_MESSAGE_BYTES = 64 * 1024  # a health request names a service: far below this


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC core's channel arguments for the server's limits (README: Failure modes)."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # The soft limit refuses metadata between it and the hard limit only at random: set both.
        ("grpc.max_metadata_size", settings.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", settings.max_metadata_bytes),
        ("grpc.server_handshake_timeout_ms", int(settings.handshake_timeout_s * 1000)),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(settings.keepalive_min_ping_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", settings.keepalive_max_ping_strikes),
    ]
    if not settings.compressed_requests:
        # Identity only: grpcio 1.81.1 inflates a whole gzip message before its size check
        # (one 1-MB gzip body of a 1,000-MiB message grew the server by 1,065 MiB, then
        # RESOURCE_EXHAUSTED). A compressed call is refused UNIMPLEMENTED, unread.
        options.append(("grpc.compression_enabled_algorithms_bitset", IDENTITY_ONLY_BITSET))
    options.append(_reuse_port(settings))
    if settings.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)))
    return options


def health_port_options(settings: Settings) -> list[tuple[str, int]]:
    """The health-only port's limits: the gRPC port's (pings, metadata, streams, handshake,
    connection age, no compression), with messages capped at what a health request needs:
    the port is plaintext and open to anyone who reaches it."""
    sizes = {"grpc.max_receive_message_length", "grpc.max_send_message_length"}
    options = [(name, value) for name, value in grpc_options(settings) if name not in sizes]
    return [*options, *((name, HEALTH_MAX_MESSAGE_BYTES) for name in sorted(sizes))]
