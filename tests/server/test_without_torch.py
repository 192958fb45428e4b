"""Serving needs none of the build pipeline: a real server with torch and the other build-only
packages made unimportable starts, answers, and stops cleanly; `slimserve build` then says
which extra to install instead of failing with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from loadtest.serving import RunningServer
from slimserve.variants.data import load_digits_split
from tests.build_free import poison_build_packages


@pytest.fixture
def without_build_packages(tmp_path: Path) -> dict[str, str]:
    """An environment whose interpreter cannot import any build-only package (as after a plain
    `pip install slimserve`): a sitecustomize that poisons them in sys.modules, so that any
    `import torch` raises ImportError."""
    folder = tmp_path / "site"
    folder.mkdir()
    poison_build_packages(folder)
    return {"PYTHONPATH": str(folder)}


def test_the_poisoning_works(without_build_packages: dict[str, str]) -> None:
    env = {**os.environ, **without_build_packages}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True)
    assert probe.returncode != 0 and b"torch" in probe.stderr


def test_a_server_without_torch_serves(
    repository: Path, tmp_path: Path, without_build_packages: dict[str, str]
) -> None:
    running = RunningServer(repository, tmp_path, env=without_build_packages)
    try:
        images = load_digits_split()[1].inputs["images"][:2]
        with triton.InferenceServerClient(running.address) as client:
            tensor = triton.InferInput("images", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images)
            result = client.infer("digits", [tensor], model_version="int8")
        assert result.as_numpy("logits").shape == (2, 10)
        assert np.isfinite(result.as_numpy("logits")).all()
    finally:
        assert running.stop() == 0
    log = running.log_path.read_text()
    assert "Traceback" not in log, log


def test_building_without_torch_names_the_extra(tmp_path: Path, without_build_packages: dict[str, str]) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "slimserve.cli", "build", "--repository", str(tmp_path / "repo")],
        env={**os.environ, **without_build_packages}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert finished.returncode == 2, finished.stderr
    assert "pip install 'slimserve[build]'" in finished.stderr
