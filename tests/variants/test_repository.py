"""Repository format: validation errors name the file and field; writes are atomic."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from slimserve.repository.format import (
    MANIFEST_FILE,
    MODEL_FILE,
    RepositoryError,
    load_model,
    load_repository,
    publish_model,
    restore_interrupted,
)


@pytest.fixture
def copy_of_digits(repository: Path, tmp_path: Path) -> Path:
    target = tmp_path / "repo"
    shutil.copytree(repository, target)
    return target


def test_built_repository_loads_with_every_variant(repository: Path) -> None:
    models = load_repository(repository)
    assert set(models) == {"digits", "minilm"}
    for entry in models.values():
        assert set(entry.variants) == {"fp32", "int8", "pruned", "distilled"}


def test_malformed_model_yaml_names_file_and_field(copy_of_digits: Path) -> None:
    path = copy_of_digits / "digits" / MODEL_FILE
    path.write_text(path.read_text().replace("default_slo_ms: 20.0", "default_slo_ms: -5"))
    with pytest.raises(RepositoryError) as error:
        load_model(copy_of_digits / "digits")
    assert str(path) in str(error.value)
    assert "default_slo_ms" in str(error.value)


def test_model_yaml_that_is_not_yaml_is_reported(copy_of_digits: Path) -> None:
    path = copy_of_digits / "digits" / MODEL_FILE
    path.write_text("inputs: [unclosed\n")
    with pytest.raises(RepositoryError, match="not valid YAML"):
        load_model(copy_of_digits / "digits")


def test_unknown_field_in_model_yaml_is_rejected(copy_of_digits: Path) -> None:
    path = copy_of_digits / "digits" / MODEL_FILE
    path.write_text(path.read_text() + "max_batch_sise: 8\n")
    with pytest.raises(RepositoryError, match="max_batch_sise"):
        load_model(copy_of_digits / "digits")


def test_malformed_variant_json_names_file_and_field(copy_of_digits: Path) -> None:
    path = copy_of_digits / "digits" / "int8" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["measurements"]["size_bytes"] = "big"
    path.write_text(json.dumps(manifest))
    with pytest.raises(RepositoryError) as error:
        load_model(copy_of_digits / "digits")
    assert str(path) in str(error.value)
    assert "measurements.size_bytes" in str(error.value)


def test_variant_without_graph_is_reported(copy_of_digits: Path) -> None:
    (copy_of_digits / "digits" / "pruned" / "model.onnx").unlink()
    with pytest.raises(RepositoryError, match=r"model\.onnx: missing"):
        load_model(copy_of_digits / "digits")


def test_half_written_variant_is_never_loaded(copy_of_digits: Path) -> None:
    # What a crash mid-write leaves behind: a staging folder with a partial manifest.
    staged = copy_of_digits / "digits" / ".tmp-lowrank-123"
    staged.mkdir()
    (staged / MANIFEST_FILE).write_text("{ truncated")
    (copy_of_digits / ".building-other").mkdir()
    models = load_repository(copy_of_digits)
    assert "lowrank" not in models["digits"].variants
    assert set(models) == {"digits", "minilm"}


def test_missing_default_variant_is_reported(copy_of_digits: Path) -> None:
    shutil.rmtree(copy_of_digits / "digits" / "fp32")
    with pytest.raises(RepositoryError, match="reference_variant"):
        load_model(copy_of_digits / "digits")


def test_a_volume_root_lost_and_found_is_not_a_model(copy_of_digits: Path) -> None:
    (copy_of_digits / "lost+found").mkdir(mode=0o700)  # as mkfs.ext4 leaves it at a volume's root
    assert "digits" in load_repository(copy_of_digits)


def test_a_folder_without_model_yaml_is_still_reported(copy_of_digits: Path) -> None:
    (copy_of_digits / "digitz").mkdir()
    with pytest.raises(RepositoryError, match="digitz"):
        load_repository(copy_of_digits)


def test_empty_repository_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="no models"):
        load_repository(tmp_path)


def test_a_publish_swaps_the_model_folder_whole_and_an_interrupted_one_is_restored(tmp_path: Path) -> None:
    """The hardening issue's L3: a publish that died between its two renames lost the model."""
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / MODEL_FILE).write_text("old")
    staged = repo / ".staged-m"
    staged.mkdir()
    (staged / MODEL_FILE).write_text("new")
    publish_model(staged, repo, "m")
    assert (repo / "m" / MODEL_FILE).read_text() == "new"
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # nothing left beside it
    os.replace(repo / "m", repo / ".old-m-4242")  # the state a crash between the renames leaves
    (repo / ".old-x-1").mkdir()  # not a model folder aside: left alone
    assert restore_interrupted(repo) == ["m"]
    assert (repo / "m" / MODEL_FILE).read_text() == "new" and (repo / ".old-x-1").is_dir()
    assert restore_interrupted(repo) == []
