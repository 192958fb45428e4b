"""A real `slimserve serve` subprocess for tests and benchmarks, and the repositories it serves.

`RunningServer` is the one launcher: the server on port 0 (every port it opened read back
from its port file), its output in a log file, SIGTERM to stop it. Tests construct it
directly; a benchmark uses `server_process`, which keeps the server's own settings. The
repository helpers make throw-away copies that a server (or a reload) may change.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from grpc_health.v1 import health_pb2, health_pb2_grpc

from slimserve.repository.format import MODEL_FILE
from slimserve.server.transport.tls import ClientSecurity

START_TIMEOUT_S = 300.0  # a full-size repository on a slow machine; a crash ends the wait at once
HEALTH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
SHUTDOWN_GRACE_S = 20.0  # what tests give in-flight calls on SIGTERM: generous on a loaded machine
LOG_TAIL_CHARS = 5000  # of the server's log, in the error when it does not start

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None], timeout_s: float, what: str | Callable[[], str], interval_s: float = 0.1
) -> T:
    """Poll `condition` until it returns something true, and return that; TimeoutError naming
    what was awaited (`what`, or what it returns then) if `timeout_s` passes first. For state
    that another process changes, where there is nothing to await."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:g} s for {what() if callable(what) else what}")
        time.sleep(interval_s)
    return result


def free_port() -> int:
    """A TCP port free on loopback now (for a program that cannot be given port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command(repository: Path, *extra: str, grpc_port: int = 0, python: str = sys.executable) -> list[str]:
    """`slimserve serve` on 127.0.0.1 with `extra` flags: gRPC on `grpc_port` (0: any free
    port), metrics on any free port, one worker unless `extra` says `--workers`."""
    return [python, "-m", "slimserve.cli", "serve", "--repository", str(repository), "--host", "127.0.0.1",
            "--grpc-port", str(grpc_port), "--metrics-port", "0",
            *([] if "--workers" in extra else ["--workers", "1"]), *extra]  # fmt: skip


class RunningServer:
    """A started server: its address, metrics URL, process and log.

    The constructor returns once the port file is written (the server writes it after its
    models are warm) and, with `wait`, the health service answers SERVING; it raises
    RuntimeError with the log's tail if the server exits or does not start in time.

    `env` is set on top of this process's environment (a value of None removes that
    variable); `shutdown_grace_s` is passed as SLIMSERVE_SHUTDOWN_GRACE_S unless None (then
    the server's own setting applies). `client` is how `wait_serving` reaches it (TLS files);
    `python` and `cwd` run another installation of slimserve (an installed wheel)."""

    def __init__(
        self,
        repository: Path,
        workdir: Path,
        *extra: str,
        env: Mapping[str, str | None] | None = None,
        client: ClientSecurity | None = None,
        wait: bool = True,
        log_path: Path | None = None,
        shutdown_grace_s: float | None = SHUTDOWN_GRACE_S,
        python: str = sys.executable,
        cwd: Path | None = None,
    ) -> None:
        self.client = client or ClientSecurity()
        stamp = time.monotonic_ns()
        port_file = workdir / f"port-{stamp}"
        self.log_path = log_path or workdir / f"server-{stamp}.log"
        grace = {} if shutdown_grace_s is None else {"SLIMSERVE_SHUTDOWN_GRACE_S": str(shutdown_grace_s)}
        merged = {**os.environ, **grace, **(env or {})}
        environment = {name: value for name, value in merged.items() if value is not None}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            serve_command(repository, "--port-file", str(port_file), *extra, python=python),
            stdout=self._log, stderr=subprocess.STDOUT, env=environment, cwd=cwd,
        )  # fmt: skip
        try:
            wait_until(lambda: self._started(port_file), START_TIMEOUT_S, "the port file")
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"server did not start ({exc}); its log:\n{self.log_tail()}") from None
        try:
            grpc_port, metrics_port, health_port = port_file.read_text().split()[:3]
            self.port = int(grpc_port)
            self.health_port = None if health_port == "off" else int(health_port)
            self.address = f"127.0.0.1:{self.port}"
            self.metrics_url = None if metrics_port == "off" else f"http://127.0.0.1:{metrics_port}/metrics"
            if wait:
                self.wait_serving()
        except BaseException:
            self.stop()  # a server that is not handed to the caller must not outlive this
            raise

    def _started(self, port_file: Path) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"exit code {self.process.returncode}")
        return port_file.exists() and bool(port_file.read_text())

    def wait_serving(self) -> None:
        """Assert that the health service answers SERVING."""
        with self.client.channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT_S)
            assert response.status == health_pb2.HealthCheckResponse.SERVING

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The last `chars` characters of the server's log."""
        return self.log_path.read_text()[-chars:]

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (if still running), wait, and the exit code. A server still running after
        `timeout_s` is killed, and subprocess.TimeoutExpired raised: none is left behind."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self._log.close()


@contextmanager
def server_process(
    repository: Path, *extra: str, log: Path | None = None, env: Mapping[str, str] | None = None
) -> Iterator[RunningServer]:
    """A benchmark's server: the server's own settings (no test grace period; `env` on top of
    this process's environment), reached as the benchmark's clients reach it
    (SLIMSERVE_CLIENT_TLS_* and tokens from the environment), its log in `log` (default: a
    temporary file, shown if it does not start). Stopped on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        server = RunningServer(repository, Path(tmp), *extra, env=env, client=ClientSecurity.from_environment(),
                               log_path=log, shutdown_grace_s=None)  # fmt: skip
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def one_model_repository(repository: Path, model: str) -> Iterator[Path]:
    """A repository holding only `model`, so that the others' sessions take no memory.

    Hard links (beside `repository`, on its file system), not symlinks: the server refuses
    a model folder that resolves outside its repository. Profiles the server adds are
    written by rename, so they stay in the copy; the source is never modified."""
    with tempfile.TemporaryDirectory(dir=repository.resolve().parent, prefix=".bench-") as tmp:
        shutil.copytree(repository / model, Path(tmp) / model, copy_function=os.link)
        yield Path(tmp)


def _link_graph_copy_rest(source: str, target: str) -> None:
    if source.endswith(".onnx"):
        os.link(source, target)
    else:
        shutil.copy2(source, target)


def copy_model(repository: Path, model: str, target: Path) -> Path:
    """`model` copied into the repository `target` to be changed by reloads: graphs hard-linked
    (never written, only replaced by a new file), everything else copied. Returns its folder."""
    shutil.copytree(repository / model, target / model, copy_function=_link_graph_copy_rest)
    return target / model


def replace_file(path: Path, data: bytes) -> None:
    """Replace a file by a new inode: a hard-linked original is left alone."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def rewrite_description(model_dir: Path, text: str) -> None:
    """Change a model's `model.yaml` (its description): a reload then reloads every variant."""
    path = model_dir / MODEL_FILE
    lines = [line for line in path.read_text().splitlines() if not line.startswith("description:")]
    replace_file(path, ("\n".join([f"description: {text}", *lines]) + "\n").encode())


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
