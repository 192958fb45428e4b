"""This machine's profile for the server's session threads: found, borrowed from a profile this
machine measured with another thread count (only while a background build publishes), or
measured, without progress bars; and stored once, so that other workers read it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from slimserve.repository.format import MANIFEST_FILE, ModelEntry, load_manifest, load_model
from slimserve.repository.hardware import fingerprint, usable_cores
from slimserve.server.core import profiles
from slimserve.server.core.profiles import Profiler

# A thread count the tiny build (every usable core) did not profile with.
OTHER_THREADS = usable_cores() + 1


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The variants of every profiling run the server makes, in order."""
    runs: list[tuple[str, ...]] = []
    real: Callable[..., Any] = profiles.profile_variants

    def counting(graphs: dict[str, bytes], *args: Any, **kwargs: Any) -> Any:
        runs.append(tuple(graphs))
        return real(graphs, *args, **kwargs)

    monkeypatch.setattr(profiles, "profile_variants", counting)
    return runs


def _digits(digits_repo: Path) -> ModelEntry:
    return load_model(digits_repo / "digits")


def test_a_profile_this_machine_measured_with_other_threads_is_borrowed_not_measured(
    digits_repo: Path, measured: list[tuple[str, ...]]
) -> None:
    profiler = Profiler(fingerprint(OTHER_THREADS), "cloud-cpu", borrow=True)
    entry = _digits(digits_repo)
    built = {name: v.manifest.profiles.copy() for name, v in entry.variants.items()}
    profiler.ensure({"digits": entry})
    assert measured == []
    for name, variant in entry.variants.items():
        (build_profile,) = built[name].values()
        assert variant.manifest.profiles[profiler.key] == build_profile
        assert not profiler.measured_here(variant)  # so a reload borrows again instead of carrying it


def test_without_borrowing_or_from_another_machine_it_is_measured_without_bars(
    digits_repo: Path, measured: list[tuple[str, ...]], capfd: pytest.CaptureFixture[str]
) -> None:
    Profiler(fingerprint(OTHER_THREADS), "cloud-cpu", borrow=False).ensure({"digits": _digits(digits_repo)})
    assert len(measured) == 1
    elsewhere = _digits(digits_repo)
    for variant in elsewhere.variants.values():
        manifest = variant.manifest
        manifest.profiles = {
            key: profile.model_copy(update={"hardware": profile.hardware.model_copy(update={"cpu_model": "other"})})
            for key, profile in manifest.profiles.items()
        }
    profiler = Profiler(fingerprint(OTHER_THREADS), "cloud-cpu", borrow=True)
    profiler.ensure({"digits": elsewhere})
    assert len(measured) == 2
    assert all(profiler.measured_here(v) for v in elsewhere.variants.values())
    assert "%|" not in capfd.readouterr().err  # no tqdm bar in a server's log


def test_the_measured_profile_is_stored_in_every_variant_file_once(
    digits_repo: Path, measured: list[tuple[str, ...]]
) -> None:
    profiler = Profiler(fingerprint(OTHER_THREADS), "cloud-cpu", borrow=True)
    folder = digits_repo / "digits"
    graphs = {path: path.read_bytes() for path in folder.glob("*/*.onnx")}
    assert profiler.store_measured(folder, digits_repo)
    assert len(measured) == 1
    for manifest_path in folder.glob(f"*/{MANIFEST_FILE}"):
        stored = load_manifest(manifest_path).profiles[profiler.key]
        assert stored.hardware == profiler.hardware and len(load_manifest(manifest_path).profiles) == 2
    assert {path: path.read_bytes() for path in graphs} == graphs  # only the manifests change
    assert not profiler.store_measured(folder, digits_repo)  # stored: nothing more to measure
    entry = _digits(digits_repo)
    profiler.ensure({"digits": entry})  # a worker that starts now reads it
    assert len(measured) == 1 and all(profiler.measured_here(v) for v in entry.variants.values())
