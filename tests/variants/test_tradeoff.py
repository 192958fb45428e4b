"""The trade-off report: Pareto fronts, recommendations per SLO, and the files the CLI writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from slimserve.repository.format import HardwareFingerprint, load_model
from slimserve.variants.tradeoff import default_slos, points, recommend


def _with_edge_profile(repository: Path, tmp_path: Path) -> Path:
    """A copy of digits whose variants also have an 'edge' profile: 3× slower, fp32 5×."""
    copy = tmp_path / "repo"
    shutil.copytree(repository / "digits", copy / "digits")
    for manifest_path in (copy / "digits").glob("*/variant.json"):
        manifest = json.loads(manifest_path.read_text())
        cloud = next(iter(manifest["profiles"].values()))
        edge = json.loads(json.dumps(cloud))
        edge["label"] = "edge"
        edge["hardware"]["threads"] = 1
        factor = 5.0 if manifest["name"] == "fp32" else 3.0
        for stats in edge["latency"].values():
            stats["p50_ms"] *= factor
            stats["p95_ms"] *= factor
        manifest["profiles"][HardwareFingerprint(**edge["hardware"]).key] = edge
        manifest_path.write_text(json.dumps(manifest))
    return copy


def test_pareto_front_and_recommendations_per_hardware(repository: Path, tmp_path: Path) -> None:
    entry = load_model(_with_edge_profile(repository, tmp_path) / "digits")
    found = points(entry, batch_size=1)
    assert {(p.variant, p.hardware) for p in found} == {
        (v, h) for v in ("fp32", "int8", "pruned", "distilled") for h in ("cloud-cpu", "edge")
    }
    for p in found:
        dominated = any(
            o.hardware == p.hardware and o.quality >= p.quality and o.p95_ms <= p.p95_ms
            and o.size_bytes <= p.size_bytes
            and (o.quality > p.quality or o.p95_ms < p.p95_ms or o.size_bytes < p.size_bytes)
            for o in found
        )  # fmt: skip
        assert p.pareto == (not dominated)
    fastest = min((p for p in found if p.hardware == "edge"), key=lambda p: p.p95_ms)
    assert fastest.pareto
    assert recommend(found, "edge", fastest.p95_ms / 2) is None
    generous = recommend(found, "edge", 1e9)
    assert generous is not None and generous.quality == max(p.quality for p in found)
    slos = default_slos(entry, 1)
    assert slos[0] == entry.config.default_slo_ms and slos == sorted(slos, reverse=True)
    # Every default SLO below the model's default makes some Pareto variant deployable somewhere.
    assert all(recommend(found, "cloud-cpu", s) or recommend(found, "edge", s) for s in slos)


def test_tradeoff_cli_writes_markdown_and_png(repository: Path, tmp_path: Path) -> None:
    repo = _with_edge_profile(repository, tmp_path)
    out = tmp_path / "docs"
    result = subprocess.run(
        [sys.executable, "-m", "slimserve.cli", "tradeoff", str(repo), "--out", str(out), "--slo-ms", "5"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = (out / "tradeoff.md").read_text()
    assert "| cloud-cpu | fp32 |" in report and "| edge | distilled |" in report
    assert "| SLO | cloud-cpu | edge |" in report and "| 5 ms |" in report
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
