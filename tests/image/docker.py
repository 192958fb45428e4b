"""A small driver for the Docker CLI: run a container, read its health, stop it, read its exit.

The image tests drive the real engine through its own CLI (no Docker SDK): what they run is
exactly what an operator types. Containers use the host's network (these machines reach
each other over loopback only), so every port a test gives a container is a free one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from loadtest.serving import free_port

DOCKER_TIMEOUT_S = 120  # any one CLI call; `docker stop` is given its grace on top


def docker_missing() -> str | None:
    """Why no container can run here, or None when the engine answers."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    answer = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if answer.returncode != 0:
        return f"no Docker engine answers: {answer.stderr.strip()[:300]} (as root: dockerd &)"
    return None


def docker(*args: str, check: bool = True, timeout_s: float = DOCKER_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    finished = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s)
    if check and finished.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited {finished.returncode}: {finished.stderr.strip()}")
    return finished


class Container:
    """One `docker run -d --network host` of an image, removed by `remove()`."""

    def __init__(
        self,
        image: str,
        *,
        env: dict[str, str] | None = None,
        run_args: Sequence[str] = (),
        command: Sequence[str] = (),
    ) -> None:
        self.name = f"slimserve-test-{uuid.uuid4().hex[:10]}"
        self.grpc_port, self.metrics_port = free_port(), free_port()
        environment = {"SLIMSERVE_GRPC_PORT": str(self.grpc_port), "SLIMSERVE_METRICS_PORT": str(self.metrics_port)}
        environment.update(env or {})
        flags = [arg for key, value in environment.items() for arg in ("-e", f"{key}={value}")]
        docker("run", "-d", "--name", self.name, "--network", "host", *flags, *run_args, image, *command)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def state(self) -> dict:
        return dict(json.loads(docker("inspect", "--format", "{{json .State}}", self.name).stdout))

    def health(self) -> str:
        """starting, healthy or unhealthy (Docker's HEALTHCHECK), or the container's status
        when it has stopped."""
        state = self.state()
        return str(state["Health"]["Status"]) if state.get("Running") else str(state["Status"])

    def health_log(self) -> list[dict]:
        return list(self.state().get("Health", {}).get("Log", []))

    def logs(self) -> str:
        finished = docker("logs", self.name, check=False)
        return finished.stdout + finished.stderr

    def exec(self, *command: str) -> str:
        return docker("exec", self.name, *command).stdout

    def copy_out(self, path: str, target: Path) -> Path:
        docker("cp", f"{self.name}:{path}", str(target))
        return target

    def stop(self, grace_s: int) -> int:
        """`docker stop -t grace_s`: SIGTERM, then SIGKILL after the grace; the exit code."""
        docker("stop", "-t", str(grace_s), self.name, timeout_s=DOCKER_TIMEOUT_S + grace_s)
        return int(self.state()["ExitCode"])

    def wait_exit(self, timeout_s: float) -> int:
        return int(docker("wait", self.name, timeout_s=timeout_s).stdout.strip())

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)
