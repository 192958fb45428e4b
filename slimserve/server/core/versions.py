"""Variants as Triton version numbers.

Triton's versions are integers, and its clients rely on it: perf_analyzer parses the version
of every statistics entry as one. So each variant also answers to a number wherever a
version is accepted (ModelInfer, ModelReady, ModelMetadata, ModelConfig, ModelStatistics):
its 1-based place among the model's built variants sorted by name. The numbers do not move
when the served set changes, only when a variant is added to or removed from the model's
folder; ModelConfig's `variants` parameter says which name each number stands for.
"""

from __future__ import annotations

from slimserve.repository.format import ModelEntry


def version_numbers(entry: ModelEntry) -> dict[str, int]:
    """Each built variant's Triton version number (module docstring)."""
    return {name: number for number, name in enumerate(sorted(entry.candidates), start=1)}


def variant_named(entry: ModelEntry, version: str) -> str:
    """The variant a request's version names: a variant's name, or its number."""
    if version in entry.candidates or not version.isdecimal():
        return version
    by_number = {str(number): name for name, number in version_numbers(entry).items()}
    return by_number.get(version.lstrip("0") or "0", version)
