"""Regenerate the committed Python stubs from the .proto sources (`make protos`).

Run from the repository root. `-I .` makes the generated modules import each other as
`slimserve.protos.x_pb2`, which works without hand fixes. `--out DIR` writes elsewhere (the drift
test compares a fresh generation with the committed files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

SOURCES = ["slimserve/protos/inference.proto", "slimserve/protos/slimserve.proto"]


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", "-I.", f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}", *SOURCES]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("."))
    generate(parser.parse_args().out)
    sys.exit(0)
