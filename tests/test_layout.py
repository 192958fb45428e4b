"""The tree says what runs where: each part imports only the parts below it.

Read from the source with `ast` (nothing is imported): a new import that runs up the
house — the serving core reaching into gRPC, the repository format into torch — fails here
with the file and the import named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "slimserve"

# part (a folder under slimserve/) → module prefixes its files must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # observe may read gRPC's own counters (backlog.py reads channelz), not the transport's code
    "server/observe": ("slimserve.server.core", "slimserve.server.transport", "slimserve.server.process"),
    "server/core": ("slimserve.server.transport", "slimserve.server.process", "grpc", "slimserve.protos"),
    "server/transport": ("slimserve.server.process",),
    "router": ("slimserve.server", "slimserve.protos", "grpc"),
    "repository": ("slimserve.server", "slimserve.variants", "slimserve.router", "torch"),
    # the simulator drives the real router on its own clock: no server, no gRPC, no torch
    "simulate": ("slimserve.server", "slimserve.variants", "slimserve.protos", "grpc", "torch"),
}
ANYWHERE_IN_PACKAGE = ("loadtest", "tests", "tools")  # outside the wheel


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _hits(names: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_a_part_imports_nothing_above_it(part: str) -> None:
    files = sorted((PACKAGE / part).rglob("*.py"))
    assert files, f"slimserve/{part} has no modules"
    wrong = {
        str(f.relative_to(ROOT)): hits
        for f in files
        if not f.name.endswith(("_pb2.py", "_pb2_grpc.py"))
        if (hits := _hits(_imports(f), FORBIDDEN[part]))
    }
    assert not wrong, f"imports that run up the house from slimserve/{part}: {wrong}"


def test_the_package_imports_nothing_outside_the_wheel() -> None:
    wrong = {
        str(f.relative_to(ROOT)): hits
        for f in sorted(PACKAGE.rglob("*.py"))
        if (hits := _hits(_imports(f), ANYWHERE_IN_PACKAGE))
    }
    assert not wrong, f"slimserve imports modules the wheel does not ship: {wrong}"
