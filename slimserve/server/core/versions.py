"""Variants as Triton version numbers.

Triton's versions are integers, and its clients rely on it: perf_analyzer parses the version
of every statistics entry as one. So each variant also answers to a number wherever a
version is accepted (ModelInfer, ModelReady, ModelMetadata, ModelConfig, ModelStatistics):
the number the build gave it (`model.yaml`'s `version_numbers`: every build keeps the numbers
of the variants already published and gives a new variant the next one, so a number never
changes meaning when variants are added or the served set changes). A variant the file does
not number (a hand-made folder) gets the next numbers after those, in name order.
ModelConfig's `variants` parameter says which name each number stands for.
"""

from __future__ import annotations

from slimserve.repository.format import ModelEntry


def version_numbers(entry: ModelEntry) -> dict[str, int]:
    """Each built variant's Triton version number (module docstring)."""
    given = {name: n for name, n in (entry.config.version_numbers or {}).items() if name in entry.candidates}
    unnumbered = sorted(name for name in entry.candidates if name not in given)
    after = max(given.values(), default=0)
    return {**given, **{name: after + place for place, name in enumerate(unnumbered, start=1)}}


def variant_named(entry: ModelEntry, version: str) -> str:
    """The variant a request's version names: a variant's name, or its number."""
    if version in entry.candidates or not version.isdecimal():
        return version
    by_number = {str(number): name for name, number in version_numbers(entry).items()}
    return by_number.get(version.lstrip("0") or "0", version)
