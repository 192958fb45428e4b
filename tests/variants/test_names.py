"""One rule for model and variant names, and no path out of the repository (Triton's list)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from slimserve.repository.format import RepositoryError, check_name, load_model, load_repository

# Triton's path-traversal cases, and what else reaches a folder name.
REFUSED = ["../etc", "a/../b", "/etc/passwd", "model/", " ..", "..", ".", ".hidden", "a\\b", "..\\x", "a\x00b",
           "tab\there", "new\nline", "   ", "", "mödel", "x" * 129]  # fmt: skip
ALLOWED = ["model..1", "my.model", "digits", "minilm-v2", "m_1", "x" * 128]


@pytest.mark.parametrize("name", REFUSED)
def test_names_that_could_reach_a_path_are_refused(name: str) -> None:
    for what in ("model", "variant"):
        with pytest.raises(ValueError, match=f"{what} name"):
            check_name(name, what)


@pytest.mark.parametrize("name", ALLOWED)
def test_dots_inside_a_name_are_fine(name: str) -> None:
    assert check_name(name, "model") == name and check_name(name, "variant") == name


def test_a_model_folder_linked_from_outside_the_repository_is_refused(digits_repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    shutil.move(digits_repo / "digits", outside)
    os.symlink(outside, digits_repo / "digits")
    with pytest.raises(RepositoryError, match="outside the repository"):
        load_repository(digits_repo)


def test_a_graph_linked_from_outside_the_repository_is_refused(digits_repo: Path, tmp_path: Path) -> None:
    graph = digits_repo / "digits" / "int8" / "model.onnx"
    outside = tmp_path / "secret.onnx"
    shutil.move(graph, outside)
    os.symlink(outside, graph)
    with pytest.raises(RepositoryError, match=r"int8/model\.onnx: resolves to .*outside the repository"):
        load_repository(digits_repo)


def test_links_that_stay_inside_the_repository_are_followed(digits_repo: Path) -> None:
    shutil.move(digits_repo / "digits" / "int8", digits_repo / "digits" / ".int8-store")
    os.symlink(digits_repo / "digits" / ".int8-store", digits_repo / "digits" / "int8")
    assert "int8" in load_model(digits_repo / "digits").variants


def test_a_folder_with_a_name_outside_the_rule_is_reported(digits_repo: Path) -> None:
    shutil.copytree(digits_repo / "digits" / "int8", digits_repo / "digits" / "in t8")
    with pytest.raises(RepositoryError, match=r"in t8: variant name 'in t8' is not allowed"):
        load_model(digits_repo / "digits")
