"""What a `--workers` supervisor and its workers share, as files in the supervisor's scratch
folder: every serving worker's peer port, the models a call unloaded during the run
(`process.peers`), and each worker's state (serving, or being restarted), which every worker's
health service `slimserve.workers` reports. Its own module: the supervisor writes here and must not import the
server. Every file is written by rename, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

PEERS_FILE = "peers.json"  # worker index → peer port
UNLOADED_FILE = "unloaded.json"  # the models unloaded by a call this run
WORKERS_FILE = "workers.json"  # worker index → "starting" | "serving" | "restarting"
WORKER_STATES = ("starting", "serving", "restarting")


@dataclass(frozen=True)
class Supervision:
    """What the supervisor knows of its workers, as one snapshot for the metrics thread."""

    states: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))  # worker → WORKER_STATES
    restarts: Mapping[tuple[int, str], int] = field(default_factory=lambda: MappingProxyType({}))  # (worker, outcome)


def _write_json(path: Path, value: object) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value))
    os.replace(partial, path)


def write_peers(folder: Path, ports: dict[int, int]) -> None:
    """The supervisor's side: every serving worker's peer port."""
    _write_json(folder / PEERS_FILE, {str(index): port for index, port in sorted(ports.items())})


def read_peers(folder: Path) -> dict[int, int]:
    """Every serving worker's peer port (none before the first has served)."""
    try:
        ports = json.loads((folder / PEERS_FILE).read_text())
    except FileNotFoundError:
        return {}
    return {int(index): int(port) for index, port in ports.items()}


def unloaded_models(folder: Path) -> set[str]:
    """The models unloaded by a call during this run (a starting worker leaves them out)."""
    try:
        return {str(name) for name in json.loads((folder / UNLOADED_FILE).read_text())}
    except FileNotFoundError:
        return set()


def remember_unloaded(folder: Path, name: str, unloaded: bool) -> None:
    """Note that `name` was unloaded (True) or loaded again (False) by a call."""
    names = unloaded_models(folder)
    (names.add if unloaded else names.discard)(name)
    _write_json(folder / UNLOADED_FILE, sorted(names))


def write_worker_states(folder: Path, states: dict[int, str]) -> None:
    """The supervisor's side: what each worker is doing now."""
    _write_json(folder / WORKERS_FILE, {str(index): state for index, state in sorted(states.items())})


def read_worker_states(folder: Path) -> dict[int, str]:
    """What each worker is doing ({} before the supervisor first wrote it)."""
    try:
        states = json.loads((folder / WORKERS_FILE).read_text())
    except FileNotFoundError:
        return {}
    return {int(index): str(state) for index, state in states.items()}
