"""The Pareto front (quality, latency, size) and the served set it decides."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from slimserve.repository.format import RepositoryError, load_model
from slimserve.variants.pareto import Tradeoff, dominates, front


def test_a_variant_is_dominated_only_when_another_is_as_good_in_all_three() -> None:
    fast = Tradeoff("fast", quality=0.90, p95_ms=1.0, size_bytes=100)
    slow_big = Tradeoff("slow_big", quality=0.90, p95_ms=2.0, size_bytes=200)
    small = Tradeoff("small", quality=0.85, p95_ms=3.0, size_bytes=50)
    best = Tradeoff("best", quality=0.99, p95_ms=4.0, size_bytes=400)
    assert dominates(fast, slow_big) and not dominates(slow_big, fast)
    assert not dominates(fast, small)  # small is smaller: on an edge device that counts
    assert not dominates(fast, fast)
    assert front([fast, slow_big, small, best]) == {"fast", "small", "best"}


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / model_dir.name
    shutil.copytree(model_dir, target)
    return target


def _set_served(model_dir: Path, served: list[str]) -> None:
    path = model_dir / "model.yaml"
    config = yaml.safe_load(path.read_text())
    config["served_variants"] = served
    path.write_text(yaml.safe_dump(config))


def test_served_variants_limit_what_is_served_not_what_is_listed(repository: Path, tmp_path: Path) -> None:
    model_dir = _copy(repository / "digits", tmp_path)
    _set_served(model_dir, ["fp32", "distilled"])
    entry = load_model(model_dir)
    assert list(entry.variants) == ["fp32", "distilled"]
    assert set(entry.candidates) > set(entry.variants)


@pytest.mark.parametrize(
    ("served", "complaint"),
    [(["fp32", "nonesuch"], "no variant 'nonesuch'"), (["int8"], "'fp32' is not in served_variants")],
)
def test_a_served_set_that_cannot_be_served_is_refused(
    repository: Path, tmp_path: Path, served: list[str], complaint: str
) -> None:
    model_dir = _copy(repository / "digits", tmp_path)
    _set_served(model_dir, served)
    with pytest.raises(RepositoryError, match=complaint):
        load_model(model_dir)
