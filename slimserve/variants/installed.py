"""Where an installed package's source tree lies, found without importing it.

Recipes check `train_on_libraries` when they load (in the server's background build too),
and the data module reads the same packages' docstrings later: both ask this one question,
so a name accepted by one is accepted by the other. Only top-level names are looked up,
because `importlib.util.find_spec` imports the parents of a dotted name (torch, for `torch.nn`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_directory(name: str) -> Path | None:
    """The folder of the installed top-level package `name`; None for a missing, built-in
    or single-file module, or a dotted name."""
    if not name.isidentifier():
        return None
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
