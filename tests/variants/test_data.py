"""The sentence corpus: the packages' docstrings widen the training text and leave the
held-out set the default corpus's."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

from slimserve.variants.data import (
    _docstrings,
    documentation_corpus,
    documentation_sentences,
    library_sources,
    split_sentences,
)
from slimserve.variants.recipes import EncoderRecipe


def test_a_source_with_an_invalid_escape_sequence_is_read_without_a_warning(tmp_path: Path) -> None:
    source = tmp_path / "theirs.py"
    source.write_text('"""Matches \\( and \\) literally."""\nPATTERN = "\\(\\d+\\)"\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be raised here, and the file skipped
        assert _docstrings([source]) == ["Matches \\( and \\) literally."]


@pytest.mark.slow  # parses every module of the standard library (~20 s)
def test_the_packages_add_training_text_and_no_held_out_sentence() -> None:
    default = documentation_sentences()
    default_part, extra = documentation_corpus(packages=True)
    assert default_part == default and not set(extra) & set(default)  # the packages add only new sentences
    wide = default + extra
    assert len(wide) > 1.5 * len(default)
    default_train, held_out = split_sentences(default)
    wide_train, _ = split_sentences(wide)
    assert wide_train[: len(default_train)] == default_train
    assert len(wide_train) > 1.5 * len(default_train)
    assert not set(wide_train) & set(held_out)


@pytest.mark.slow  # parses the default corpus (~8 s)
def test_a_librarys_docstrings_are_read_from_its_source_files_and_a_missing_one_is_named() -> None:
    sources = library_sources("tqdm")  # small, and installed wherever the build runs
    assert sources and all(path.suffix == ".py" for path in sources)
    default = documentation_sentences()
    wider = documentation_sentences(libraries=["tqdm"])
    assert wider[: len(default)] == default and len(wider) > len(default)
    with pytest.raises(ValueError, match="'no_such_library_here' is not an installed top-level package"):
        library_sources("no_such_library_here")


def test_the_recipe_check_and_the_docstring_reader_accept_the_same_libraries() -> None:
    # missing, built in, a single-file module, a dotted name (find_spec would import its parent)
    for name in ("tqdm", "no_such_library_here", "sys", "os", "email.mime", "torch.nn"):
        try:
            EncoderRecipe(train_on_libraries=[name])
            accepted = True
        except ValidationError:
            accepted = False
        try:
            library_sources(name)
            read = True
        except ValueError:
            read = False
        assert accepted == read == (name == "tqdm"), name
