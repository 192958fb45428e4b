"""An interpreter that cannot import the build-only packages, as after a plain `pip install slimserve`."""

from __future__ import annotations

from pathlib import Path

from slimserve.cli import BUILD_PACKAGES


def poison_build_packages(folder: Path) -> None:
    """Write a sitecustomize.py into `folder` (a site or PYTHONPATH folder) that makes every
    build-only package unimportable: `import torch` then raises ImportError."""
    names = ", ".join(repr(name) for name in sorted(BUILD_PACKAGES))
    (folder / "sitecustomize.py").write_text(f"import sys\nfor name in ({names},):\n    sys.modules[name] = None\n")
