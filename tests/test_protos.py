"""The committed stubs are exactly what `make protos` generates from the .proto sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "tools/generate_protos.py", "--out", str(tmp_path)], cwd=ROOT, check=True, timeout=120
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*"))
    assert fresh, "protoc produced nothing"
    for relative in fresh:
        committed = ROOT / relative
        assert committed.exists(), f"{relative} is generated but not committed; run make protos"
        assert committed.read_bytes() == (tmp_path / relative).read_bytes(), f"{relative} is stale; run make protos"
