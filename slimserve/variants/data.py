"""Datasets for the built-in models, all read from the machine: nothing is downloaded.

- digits: scikit-learn's bundled 8×8 handwritten digits, upsampled to 28×28 so that the
  CNN does real work per image; a fixed, stratified held-out split.
- sentences: English sentences cut from the documentation that ships with CPython
  (`pydoc_data.topics`, the text behind `help()`, and the docstrings of the standard
  library's own source files, read with `ast`, never imported); the split into train and held-out is by
  a hash of the sentence, so it never changes when the corpus grows or is reordered. The
  default corpus reads the top-level modules (8,663 sentences on Python 3.11); with
  `packages=True` it also reads the standard library's packages (`email/`, `asyncio/`,
  `test/`, ...: 19,133), and with `libraries` the docstrings of installed packages (torch:
  ~31,000 more), whose train split can train an encoder on several times the text while its
  held-out set stays the default corpus's (a sentence hashes to one side in every corpus).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slimserve.variants.installed import package_directory

DIGITS_SIDE_PX = 28


@dataclass
class Split:
    """Inputs and labels of one split; labels are None where the task has none."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, count: int) -> Split:
        """The first `count` rows (for calibration sets and tiny test builds)."""
        labels = None if self.labels is None else self.labels[:count]
        return Split({k: v[:count] for k, v in self.inputs.items()}, labels)


def load_digits_split(eval_fraction: float = 0.25, seed: int = 0) -> tuple[Split, Split]:
    """(train, held-out) for the digits classifier, images as float32 [N, 1, 28, 28] in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    upsampled = torch.nn.functional.interpolate(
        images, size=(DIGITS_SIDE_PX, DIGITS_SIDE_PX), mode="bilinear", align_corners=False
    ).numpy()
    labels = bunch.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        upsampled, labels, test_size=eval_fraction, random_state=seed, stratify=labels
    )
    return Split({"images": x_train}, y_train), Split({"images": x_eval}, y_eval)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _docstrings(sources: Iterable[Path]) -> list[str]:
    """Every module, class and function docstring of `sources`, read with `ast` (never imported)."""
    import ast

    texts = []
    # Another package's invalid escape sequences ('\(' in a plain string) are its own: reading
    # its docstrings is no reason to warn (DeprecationWarning, SyntaxWarning on 3.12).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        for source in sources:
            try:
                tree = ast.parse(source.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                    docstring = ast.get_docstring(node)
                    if docstring:
                        texts.append(docstring)
    return texts


def library_sources(name: str) -> list[Path]:
    """The .py files of the installed top-level package `name`, found without importing it."""
    directory = package_directory(name)
    if directory is None:
        raise ValueError(f"{name!r} is not an installed top-level package: its docstrings cannot be read")
    return sorted(directory.rglob("*.py"))


def _documentation_texts(packages: bool, libraries: Sequence[str]) -> tuple[list[str], list[str]]:
    """(default, extra): the help() topics and every docstring of the top-level
    standard-library modules; then (`packages`) the docstrings of the modules in its
    packages, outside site-packages, and those of each installed library in `libraries`."""
    import sysconfig
    from pydoc_data import topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    default = [topics.topics[key] for key in sorted(topics.topics)] + _docstrings(sorted(stdlib.glob("*.py")))
    sources: list[Path] = []
    if packages:
        sources += sorted(
            path for path in stdlib.glob("*/**/*.py") if path.relative_to(stdlib).parts[0] != "site-packages"
        )
    for library in libraries:
        sources += library_sources(library)
    return default, _docstrings(sources)


def _prose_sentences(documents: Iterable[str], min_words: int, max_words: int, seen: set[str]) -> list[str]:
    """The prose sentences of `documents` not in `seen`, in order; adds them to `seen`."""
    sentences: list[str] = []
    for document in documents:
        for paragraph in re.split(r"\n\s*\n", document):
            lines = [line.strip() for line in paragraph.splitlines()]
            # Code samples and tables are indented or full of symbols; keep prose only.
            if not lines or any(line.startswith((">>>", "...", "+", "|", "*")) for line in lines):
                continue
            text = " ".join(lines)
            for sentence in _SENTENCE_END.split(text):
                words = sentence.split()
                letters = sum(c.isalpha() or c.isspace() for c in sentence)
                if not (min_words <= len(words) <= max_words) or letters < 0.85 * len(sentence):
                    continue
                if sentence not in seen:
                    seen.add(sentence)
                    sentences.append(sentence)
    return sentences


def documentation_corpus(
    min_words: int = 6, max_words: int = 40, *, packages: bool = False, libraries: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """(default, extra): the default corpus's prose sentences, de-duplicated, in a stable
    order, and those the standard library's `packages` and `libraries` add to it (empty
    unless asked for); each document is parsed once."""
    default_texts, extra_texts = _documentation_texts(packages, libraries)
    seen: set[str] = set()
    default = _prose_sentences(default_texts, min_words, max_words, seen)
    return default, _prose_sentences(extra_texts, min_words, max_words, seen)


def documentation_sentences(
    min_words: int = 6, max_words: int = 40, *, packages: bool = False, libraries: Sequence[str] = ()
) -> list[str]:
    """Prose sentences from Python's bundled documentation, de-duplicated, in a stable order;
    after the default corpus, those of the standard library's `packages` and of `libraries`."""
    default, extra = documentation_corpus(min_words, max_words, packages=packages, libraries=libraries)
    return default + extra


def split_sentences(sentences: list[str], eval_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """Deterministic (train, held-out) split by a hash of each sentence."""
    threshold = int(eval_fraction * 1000)
    train: list[str] = []
    held_out: list[str] = []
    for sentence in sentences:
        bucket = int(hashlib.sha256(sentence.encode()).hexdigest()[:8], 16) % 1000
        (held_out if bucket < threshold else train).append(sentence)
    return train, held_out


class SentenceTokenizer:
    """The MiniLM WordPiece tokenizer (from the package's tokenizer.json), padding per batch."""

    def __init__(self, tokenizer_json: Path, max_tokens: int = 128) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def __call__(self, sentences: list[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
        """int64 `input_ids` and `attention_mask`, [N, L]; L = longest, or `pad_to` if given."""
        if pad_to is not None:
            self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=pad_to)
        try:
            encodings = self._tokenizer.encode_batch(sentences)
        finally:
            if pad_to is not None:
                self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }


def minilm_tokenizer(max_tokens: int = 128) -> SentenceTokenizer:
    """The tokenizer that matches the bundled all-MiniLM-L6-v2 weights."""
    from slimserve.variants.models.encoder import minilm_dir

    return SentenceTokenizer(minilm_dir() / "tokenizer.json", max_tokens)
