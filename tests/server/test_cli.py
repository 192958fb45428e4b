"""The `slimserve` command line, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _slimserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_variants_show_prints_the_table(repository: Path) -> None:
    result = _slimserve("variants", "show", str(repository))
    assert result.returncode == 0, result.stderr
    assert "digits (classifier; quality = accuracy" in result.stdout
    assert "minilm (encoder; quality = cosine" in result.stdout


def test_variants_show_json_has_every_variant_and_seed_formula(repository: Path) -> None:
    result = _slimserve("variants", "show", str(repository), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["variant"] for r in rows["digits"]] == ["fp32", "int8", "pruned", "distilled"]
    for row in rows["minilm"]:
        assert {"alpha_params", "beta_bytes", "speedup_batch1", "quality", "agreement"} <= set(row)


def test_broken_repository_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.yaml").write_text("name: m\ntask: regression\n")
    result = _slimserve("variants", "show", str(tmp_path))
    assert result.returncode == 2
    assert "model.yaml" in result.stderr and "task" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_recipe_file_names_the_field(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("kind: minilm\nprune:\n  finetune_epochs: -1\n")
    result = _slimserve("build", "--repository", str(tmp_path / "out"), "--recipe", str(recipe))
    assert result.returncode == 2
    assert "prune.finetune_epochs" in result.stderr
