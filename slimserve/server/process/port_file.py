"""The `--port-file` a started server writes once it serves (tests and benchmarks wait for it).

Its own module: the `--workers` supervisor writes it too, and must not import the server
(nor gRPC's generated stubs) to do so.
"""

from __future__ import annotations

from pathlib import Path


def write_port_file(
    path: Path, grpc_port: int, metrics_port: int | None, health_port: int | None, peer_port: int | None = None
) -> None:
    """Line 1: the gRPC port; line 2: the metrics port (or "off"); line 3: the health-only port
    (or "off"); a worker of --workers adds line 4, its peer port (`process.peers`) for its
    supervisor. Renamed into place, so a reader never sees half of it."""
    partial = path.with_name(path.name + ".partial")
    peer = f"{peer_port}\n" if peer_port is not None else ""
    partial.write_text(f"{grpc_port}\n{metrics_port or 'off'}\n{health_port or 'off'}\n{peer}")
    partial.replace(path)
