"""A real `slimserve serve` subprocess on port 0, for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from slimserve.server.transport.tls import ClientSecurity

START_TIMEOUT_S = 120.0


class RunningServer:
    """Starts the server, waits for SERVING, and stops it (SIGTERM) when done."""

    def __init__(
        self,
        repository: Path,
        workdir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        client: ClientSecurity | None = None,
        wait: bool = True,
    ) -> None:
        self.client = client or ClientSecurity()  # how wait_serving reaches it (TLS files)
        port_file = workdir / f"port-{time.monotonic_ns()}"
        self.log_path = workdir / f"server-{time.monotonic_ns()}.log"
        env = {**os.environ, "SLIMSERVE_SHUTDOWN_GRACE_S": "20", **(env or {})}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "slimserve.cli", "serve", "--repository", str(repository),
             "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--port-file", str(port_file),
             *([] if "--workers" in extra else ["--workers", "1"]), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.exists() or not port_file.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)
        grpc_port, metrics_port, health_port = port_file.read_text().split()
        self.port = int(grpc_port)
        self.health_port = None if health_port == "off" else int(health_port)
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_url = None if metrics_port == "off" else f"http://127.0.0.1:{metrics_port}/metrics"
        if wait:
            self.wait_serving()

    def wait_serving(self) -> None:
        with self.client.channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert response.status == health_pb2.HealthCheckResponse.SERVING

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        code = self.process.wait(timeout=timeout_s)
        self._log.close()
        return code
