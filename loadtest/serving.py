"""Start a real `slimserve serve` subprocess on a free port for a benchmark, and stop it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from slimserve.repository.format import MODEL_FILE

START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ServerProcess:
    """A started server: where to call it, where to scrape it, and its process."""

    address: str
    metrics_url: str | None
    process: subprocess.Popen[bytes]


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


@contextmanager
def server_process(repository: Path, *extra: str, log: Path | None = None) -> Iterator[ServerProcess]:
    """Yields the server once it is listening; SIGTERM and wait on exit (if still running)."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        output = open(log, "w") if log else None  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            [sys.executable, "-m", "slimserve.cli", "serve", "--repository", str(repository),
             "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--port-file", str(port_file),
             *([] if "--workers" in extra else ["--workers", "1"]), *extra],
            stdout=output, stderr=subprocess.STDOUT if output else None,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not port_file.exists() or not port_file.read_text():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server failed to start (exit code {server.poll()})")
                time.sleep(0.2)
            grpc_port, metrics_port, _ = port_file.read_text().split()
            metrics_url = None if metrics_port == "off" else f"http://127.0.0.1:{metrics_port}/metrics"
            yield ServerProcess(f"127.0.0.1:{grpc_port}", metrics_url, server)
        finally:
            if server.poll() is None:
                server.terminate()
            server.wait(timeout=60)
            if output:
                output.close()


@contextmanager
def running_server(repository: Path, *extra: str, log: Path | None = None) -> Iterator[str]:
    """Yields the server's address once it is serving; SIGTERM and wait on exit."""
    with server_process(repository, *extra, log=log) as started:
        yield started.address


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_model() -> str:
    """The CPU's model name, to print beside every figure."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"
