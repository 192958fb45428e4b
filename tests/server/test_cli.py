"""The `slimserve` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from loadtest.serving import RunningServer


def _slimserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimserve.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_variants_show_prints_the_table(repository: Path) -> None:
    result = _slimserve("variants", "show", str(repository))
    assert result.returncode == 0, result.stderr
    assert "digits (classifier; quality = accuracy" in result.stdout
    assert "minilm (encoder; quality = retrieval_agreement" in result.stdout


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


def test_serve_with_an_invalid_setting_names_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slimserve.cli", "serve", "--repository", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "SLIMSERVE_MAX_QUEUE_SIZE": "0"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "max_queue_size" in result.stderr


def test_serve_without_a_repository_says_so(tmp_path: Path) -> None:
    result = _slimserve("serve", "--repository", str(tmp_path / "missing"), "--grpc-port", "0")
    assert result.returncode == 2
    assert "not a directory" in result.stderr and "Traceback" not in result.stderr


def test_explain_prints_every_candidate_and_the_choice(digits_repo: Path, tmp_path: Path) -> None:
    # A server of its own: the session's carries what earlier tests sent it (their SLOs, its
    # CPU account), and the price below is that of a server no call has reached.
    server = RunningServer(digits_repo, tmp_path)
    try:
        result = _slimserve("explain", "digits", "--address", server.address, "--slo-ms", "1000")
        assert result.returncode == 0, result.stderr
        assert "digits: SLO 1000.00 ms (parameter), policy slo" in result.stdout
        rows = [line for line in result.stdout.splitlines() if line[1:].startswith(("fp32", "int8", "pruned", "dist"))]
        assert len(rows) == 4 and sum(line.startswith("*") for line in rows) == 1
        assert "CPU price 0 (room to spare)" in result.stdout  # Explain looks and sends no call: nothing to price
        as_json = json.loads(_slimserve("explain", "digits", "--address", server.address, "--json").stdout)
        assert as_json["slo_source"] == "model_default" and len(as_json["candidates"]) == 4
    finally:
        assert server.stop() == 0


def test_explain_of_an_unknown_model_exits_1_with_the_status(server: RunningServer) -> None:
    result = _slimserve("explain", "nope", "--address", server.address)
    assert result.returncode == 1
    assert "NOT_FOUND: unknown model 'nope'" in result.stderr


def test_health_exits_0_when_serving_and_1_when_nothing_listens(server: RunningServer) -> None:
    serving = _slimserve("health", "--address", server.address)
    assert (serving.returncode, serving.stdout.strip()) == (0, "SERVING"), serving.stderr
    nobody = _slimserve("health", "--address", "127.0.0.1:1", "--timeout-s", "1")
    assert nobody.returncode == 1 and "UNAVAILABLE" in nobody.stderr


def test_a_taken_port_is_refused_with_a_message_not_shared(server: RunningServer, repository: Path) -> None:
    """gRPC would share a taken port (SO_REUSEPORT) and split its traffic; a single server refuses."""
    result = _slimserve(
        "serve", "--repository", str(repository), "--host", "127.0.0.1", "--grpc-port", str(server.port),
        "--metrics-port", "0", "--workers", "1",
    )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{server.port}" in result.stderr and "Traceback" not in result.stderr
