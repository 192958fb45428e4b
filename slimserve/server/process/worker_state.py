"""What a `--workers` supervisor and its workers share, as files in the supervisor's scratch
folder: every serving worker's peer port, and the models a call unloaded during the run
(`process.peers`). Its own module: the supervisor writes here and must not import the
server. Every file is written by rename, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PEERS_FILE = "peers.json"  # worker index → peer port
UNLOADED_FILE = "unloaded.json"  # the models unloaded by a call this run


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
