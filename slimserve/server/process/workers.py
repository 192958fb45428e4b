"""`slimserve serve --workers N`: N serving processes on one port, like replicas behind a load balancer.

Python serves one request at a time per process (the GIL; decode, routing, gRPC and encode
are Python), so one process stays near one core of request handling however many cores
ONNX Runtime could use. Here a supervisor starts N workers, each a whole `slimserve serve`
with its own sessions, batchers and router, all bound to the same gRPC port with
SO_REUSEPORT: the kernel spreads *connections* over them (a connection stays with one
worker). The supervisor creates no gRPC object itself: it only reserves the port with a
plain socket, so that no other program takes it between the workers' starts, and starts
the workers as fresh processes (never forked from a process with gRPC threads).

- Threads: ONNX Runtime gets max(1, cores // N) threads per session in each worker, so that
  workers × threads ≤ cores (an explicit --session-threads is kept, with a warning if it
  oversubscribes).
- Metrics: one `/metrics` on the configured port, merging the workers' (`process.metrics_merge`).
- Health: every worker answers grpc.health.v1 on the shared port (and the health-only port)
  for itself; they load the same repository and report the same.
- Start: worker 0 first (it measures any missing profile and, with --build-missing, runs the
  build, and once it is done measures and stores the profile for the workers' thread count
  that the others then read: `server.core.profiles`), then the others; the port file is
  written once all serve.
- SIGTERM or SIGINT, at any moment (also while a worker starts or restarts): passed to every
  worker, each drains as a single server does (one still starting just stops); the
  supervisor exits 0 when all did.
- A worker that dies is started again (at most MAX_RESTARTS within RESTART_WINDOW_S, then the
  supervisor stops them all and exits 1: a crash loop must be seen, not hidden); a restart
  that fails is tried again after a growing pause while the others serve. It is said in the
  log, in `/metrics` (`slimserve_worker_restarting{worker}`,
  `slimserve_worker_restarts_total{worker,outcome}`) and in health: every worker's
  grpc.health.v1 service `slimserve.workers` is NOT_SERVING while any worker is not serving
  (the overall service "" stays the answering worker's own state).
- One server: model changes reach every worker and are answered once all have applied
  them, ModelStatistics sums every worker's counts, and Feedback reaches the worker that
  holds the answer, over the workers' loopback peer ports (`process.peers`); a restarted
  worker leaves out what a call unloaded. Explain and ListVariants describe the worker that
  holds the caller's connection (its own router).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Coroutine
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from slimserve.server.process.port_file import write_port_file
from slimserve.server.process.settings import Settings
from slimserve.server.process.worker_state import Supervision, write_peers, write_worker_states
from slimserve.server.transport.tls import ServerTls, TlsConfigError

if TYPE_CHECKING:
    from slimserve.server.process.metrics_merge import WorkerMetrics
from slimserve.repository.hardware import usable_cores

log = logging.getLogger(__name__)
WORKER_SETTINGS_ENV = "SLIMSERVE_WORKER_SETTINGS"  # the worker's settings, as JSON (secrets stay in the environment)
MAX_RESTARTS = 5  # worker deaths tolerated within RESTART_WINDOW_S
RESTART_WINDOW_S = 300.0
START_TIMEOUT_S = 600.0  # a worker measuring profiles or waiting for a first model can take minutes
STOP_MARGIN_S = 10.0  # beyond the drain and the grace, before a worker that has not exited is killed
RESTART_PAUSE_S = 1.0  # before trying again to start a worker whose restart failed; doubles per death
MAX_RESTART_PAUSE_S = 30.0
SECRETS = {"inference_token", "management_token", "metrics_token", "worker_scrape_token"}
SCRAPE_TOKEN_ENV = "SLIMSERVE_WORKER_SCRAPE_TOKEN"  # Settings.worker_scrape_token, in the worker's environment
SUPERVISOR_PID_ENV = "SLIMSERVE_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1  # prctl(2): the signal the kernel sends a process when its parent dies


class WorkersConfigError(ValueError):
    """--workers cannot run as asked (the message says why)."""


class WorkerStartError(RuntimeError):
    """A worker stopped before serving; `code` is its exit status (2: it refused its settings,
    and said why on the shared stderr)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def worker_count(settings: Settings) -> int:
    """How many workers to run: as asked, or one per usable core; one with the edge profile."""
    if settings.hardware_profile == "edge":
        if settings.workers > 1:
            raise WorkersConfigError("the edge profile runs on one core with one thread: use --workers 1")
        return 1
    return settings.workers or usable_cores()


def _reserve(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket holding `port` for the workers."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0]
    holder = socket.socket(family, kind, proto)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind(address)
    except OSError as exc:
        holder.close()
        raise WorkersConfigError(f"cannot bind {host}:{port}: {exc.strerror}") from exc
    return holder


class Supervisor:
    """Starts, watches and stops the workers; serves their merged metrics (module docstring)."""

    def __init__(self, settings: Settings, count: int, port_file: Path | None) -> None:
        self.settings = settings
        self.count = count
        self.port_file = port_file
        self._holders: list[socket.socket] = []
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._metrics_ports: dict[int, int] = {}
        self._peer_ports: dict[int, int] = {}  # process.peers: each serving worker's peer port
        self._served: set[int] = set()  # workers whose current process has served
        self._states: dict[int, str] = {}  # worker → worker_state.WORKER_STATES
        self._restarts: Counter[tuple[int, str]] = Counter()  # (worker, "served" | "failed") → restarts
        self._deaths: deque[float] = deque()
        self._scrape_token = secrets.token_urlsafe(32)  # the workers' /metrics answer this supervisor alone
        self._scratch = Path(tempfile.mkdtemp(prefix="slimserve-workers-"))
        self.collector: WorkerMetrics | None = None
        self.metrics_port: int | None = None
        self._tls: ServerTls | None = None

    def _worker_settings(self, index: int, grpc_port: int, health_port: int | None) -> str:
        cores = usable_cores()
        threads = self.settings.session_threads or max(1, cores // self.count)
        if self.count * threads > cores:
            log.warning("%d workers x %d session threads oversubscribe %d cores", self.count, threads, cores)
        fields = self.settings.model_dump(mode="json", exclude=SECRETS | {"workers", "worker_index", "worker_count"})
        fields.update(
            grpc_port=grpc_port, health_port=health_port, metrics_port=0, metrics_host="127.0.0.1",
            metrics_tls=False, session_threads=threads, workers=1, worker_index=index, worker_count=self.count,
            worker_scratch=str(self._scratch),
        )  # fmt: skip
        return json.dumps(fields)

    async def _start(self, index: int, grpc_port: int, health_port: int | None) -> None:
        port_file = self._scratch / f"worker-{index}"
        port_file.unlink(missing_ok=True)
        env = {
            **os.environ,
            WORKER_SETTINGS_ENV: self._worker_settings(index, grpc_port, health_port),
            SCRAPE_TOKEN_ENV: self._scrape_token,
            SUPERVISOR_PID_ENV: str(os.getpid()),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "slimserve.cli", "serve", "--port-file", str(port_file), env=env
        )
        self._processes[index] = process
        self._served.discard(index)
        if index not in self._states:
            self._set_state(index, "starting")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.exists():
            if process.returncode is not None:
                raise WorkerStartError(
                    f"worker {index} exited with {process.returncode} before serving", process.returncode
                )
            if time.monotonic() > deadline:
                raise WorkerStartError(f"worker {index} did not serve within {START_TIMEOUT_S:.0f} s", 1)
            await asyncio.sleep(0.1)
        _, metrics, _, peer = port_file.read_text().split()
        if metrics != "off":
            self._metrics_ports[index] = int(metrics)
            self._publish_endpoints()
        self._peer_ports[index] = int(peer)
        write_peers(self._scratch, self._peer_ports)
        self._served.add(index)
        if self._states.get(index) == "restarting":
            self._restarts[(index, "served")] += 1
        self._set_state(index, "serving")
        log.info("worker %d serving (pid %d)", index, process.pid)

    def _set_state(self, index: int, state: str) -> None:
        """Tell the workers (their health) and the metrics what worker `index` is doing."""
        self._states[index] = state
        write_worker_states(self._scratch, self._states)
        self._publish_endpoints()

    def _publish_endpoints(self) -> None:
        if self.collector is not None:
            urls = {i: f"http://127.0.0.1:{port}/metrics" for i, port in sorted(self._metrics_ports.items())}
            self.collector.endpoints = MappingProxyType(urls)
            self.collector.supervision = Supervision(
                MappingProxyType(dict(self._states)), MappingProxyType(dict(self._restarts))
            )

    def _start_metrics(self) -> None:
        from prometheus_client import CollectorRegistry

        from slimserve.server.process.metrics_http import MetricsAccess, metrics_tls, start_metrics_http
        from slimserve.server.process.metrics_merge import WorkerMetrics

        self.collector = WorkerMetrics(self._scrape_token)
        self._publish_endpoints()
        registry = CollectorRegistry()
        registry.register(self.collector)
        settings = self.settings
        http, _ = start_metrics_http(
            settings.metrics_port,
            settings.metrics_host or settings.host,
            registry,
            MetricsAccess.of(settings),
            metrics_tls(settings, self._tls),
        )
        self.metrics_port = http.server_port

    async def run(self) -> int:
        settings = self.settings
        # What only the supervisor uses must be checked here: the workers serve /metrics plainly.
        self._tls = ServerTls.from_files(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        if settings.metrics_tls and self._tls is None:
            raise TlsConfigError("--metrics-tls serves /metrics with --tls-cert and --tls-key: give them too")
        grpc_holder = _reserve(settings.host, settings.grpc_port)
        self._holders.append(grpc_holder)
        grpc_port = grpc_holder.getsockname()[1]
        health_port = None
        if settings.health_port is not None:
            health_holder = _reserve(settings.host, settings.health_port)
            self._holders.append(health_holder)
            health_port = health_holder.getsockname()[1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        stopping = asyncio.create_task(stop.wait())
        try:
            if settings.metrics:
                self._start_metrics()
            if not await self._unless_stopped(self._start_all(grpc_port, health_port), stopping):
                log.info("stopped while the workers were starting")
                return 0
            self._write_port_file(grpc_port, health_port)
            log.info("%d workers serving on port %d", self.count, grpc_port)
            return await self._watch(stopping, grpc_port, health_port)
        except WorkerStartError as exc:
            log.error("%s; stopping the workers", exc)
            return exc.code or 1
        finally:
            stopping.cancel()
            await self._stop_all()
            for holder in self._holders:
                holder.close()
            shutil.rmtree(self._scratch, ignore_errors=True)

    async def _start_all(self, grpc_port: int, health_port: int | None) -> None:
        await self._start(0, grpc_port, health_port)  # first: it measures missing profiles, and builds
        await asyncio.gather(*(self._start(i, grpc_port, health_port) for i in range(1, self.count)))

    @staticmethod
    async def _unless_stopped(work: Coroutine[Any, Any, None], stopping: asyncio.Task[Any]) -> bool:
        """Run `work` unless SIGTERM comes first: True when it finished, False when it was
        cancelled for the stop (a worker still starting is then stopped with the others:
        SIGTERM is honoured at any moment, not once the starts are over). Its errors propagate."""
        task = asyncio.ensure_future(work)
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, WorkerStartError):
            await task
        return False

    def _write_port_file(self, grpc_port: int, health_port: int | None) -> None:
        if self.port_file is not None:
            write_port_file(self.port_file, grpc_port, self.metrics_port, health_port)

    async def _watch(self, stopping: asyncio.Task[Any], grpc_port: int, health_port: int | None) -> int:
        """Until SIGTERM: start again any worker that died (bounded). A restart that fails
        counts as another death and is tried again after a pause, while the other workers
        go on serving; only MAX_RESTARTS deaths within RESTART_WINDOW_S stop them all."""
        while True:
            exits = {asyncio.create_task(p.wait()): i for i, p in self._processes.items()}
            done, _ = await asyncio.wait({stopping, *exits}, return_when=asyncio.FIRST_COMPLETED)
            for task in exits:
                if task not in done:
                    task.cancel()
            if stopping in done:
                return 0
            for task in done:
                index = exits[task]
                now = time.monotonic()
                self._deaths.append(now)
                while self._deaths and now - self._deaths[0] > RESTART_WINDOW_S:
                    self._deaths.popleft()
                log.error("worker %d exited with %s", index, task.result())
                if len(self._deaths) > MAX_RESTARTS:
                    log.error("%d worker deaths within %.0f s: stopping", len(self._deaths), RESTART_WINDOW_S)
                    return 1
                self._metrics_ports.pop(index, None)
                self._set_state(index, "restarting")
                self._peer_ports.pop(index, None)
                write_peers(self._scratch, self._peer_ports)
                try:
                    if not await self._unless_stopped(self._start(index, grpc_port, health_port), stopping):
                        return 0
                except WorkerStartError as exc:  # its process has exited: the next round restarts it
                    self._restarts[(index, "failed")] += 1
                    self._publish_endpoints()
                    pause_s = min(RESTART_PAUSE_S * 2 ** (len(self._deaths) - 1), MAX_RESTART_PAUSE_S)
                    log.error("%s; the other workers go on serving; trying again in %.0f s", exc, pause_s)
                    if not await self._unless_stopped(asyncio.sleep(pause_s), stopping):
                        return 0
                    process = self._processes[index]
                    if process.returncode is None:  # it did not serve in time: stop it before the next try
                        process.kill()
                        await process.wait()

    async def _stop_all(self) -> None:
        """SIGTERM to every worker; each drains; SIGKILL only past its grace and a margin."""
        running = [p for p in self._processes.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        limit = self.settings.drain_s + self.settings.shutdown_grace_s + STOP_MARGIN_S
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), limit)
            except TimeoutError:
                log.error("worker pid %d did not stop within %.0f s; killing it", process.pid, limit)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if any(code != 0 for code in self.exit_codes()):
            log.warning("workers exited with %s", self.exit_codes())

    def exit_codes(self) -> list[int | None]:
        return [p.returncode for p in self._processes.values()]

    def stopped_cleanly(self) -> bool:
        """Every worker exited 0, or was still starting when SIGTERM ended it (it had served
        nothing, and may not have had its handler yet)."""
        return all(
            p.returncode == 0 or (p.returncode == -signal.SIGTERM and i not in self._served)
            for i, p in self._processes.items()
        )


def die_with_supervisor() -> None:
    """In a worker: have the kernel send SIGTERM when the supervisor dies, however it dies
    (SIGKILL, OOM), so that no orphan keeps serving on the port with nobody watching it; a
    worker whose supervisor is already gone (it died before this call) stops at once."""
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if supervisor is None:
        return  # started by hand, not by a supervisor
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this worker may outlive its supervisor",
                    ctypes.get_errno())  # fmt: skip
    if os.getppid() != int(supervisor):
        raise WorkersConfigError(f"the supervisor (pid {supervisor}) is gone: this worker stops")


def tidy_after_supervisor(scratch: Path | None) -> None:
    """In a worker that has stopped: remove the workers' scratch folder if the supervisor is
    gone (SIGKILL or OOM gave it no chance to remove it itself, and a supervisor killed now and
    then over weeks would leave a folder in the temporary directory each time). The other
    worker may have removed it first, or read it while it stops: a missing file reads as empty."""
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if supervisor is None or scratch is None or os.getppid() == int(supervisor):
        return
    shutil.rmtree(scratch, ignore_errors=True)


def serve_workers(settings: Settings, count: int, port_file: Path | None) -> int:
    """Run `count` workers until SIGTERM; 0 when they all stopped cleanly."""
    supervisor = Supervisor(settings, count, port_file)
    code = asyncio.run(supervisor.run())
    return code or (0 if supervisor.stopped_cleanly() else 1)
