"""A latency profile for the hardware the server runs on: found, borrowed, or measured.

The router needs, for every variant it serves, a profile under this process's hardware key:
the chip, its usable cores, the ONNX Runtime version and the session thread count
(`repository.hardware`). Where the repository holds one, it is used. Otherwise:

- **Borrowed** (only with `borrow`, which `serve --build-missing` sets): a profile this same
  machine measured with another session thread count (`hardware.same_machine`). The
  background build profiles with every core, while `--workers N` gives each worker cores ÷ N
  threads; measuring again at each publication made both workers profile at nice 0 against
  the build's nice 10, taking the cores the build needs. Borrowing is sound as a start: the
  same kernels run (same chip, ISA and runtime), so each variant's latency differs by how
  well it uses the other thread count (at most the thread ratio: 2× on two cores), the kind
  of error each variant's online correction absorbs (bounded 0.25–4×, `router.latency`).
  It is never taken for a measurement: a reload borrows again from the files (a build's
  final profile replaces its brief first one) and `store_measured` replaces it for good.
- **Measured**: a short profile (STARTUP_PROFILE), kept in memory; the log says how to
  store a full one. A repository built on another machine takes this path.

`store_measured` is the background build's owner's, once the build has finished: it
measures, once for all workers (they share the key), every model of the repository that
has no profile for this key and writes it into each variant.json by rename, so that every
worker's repository poller and every later start read it instead of measuring.

Thread: blocking (profiling runs sessions); the server calls it off the event loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from slimserve.repository.format import (
    HardwareFingerprint,
    ModelEntry,
    VariantEntry,
    load_model,
    sha256_of,
    update_manifest,
)
from slimserve.repository.hardware import HardwareTarget, same_machine
from slimserve.repository.profile import ProfileSettings, profile_variants

log = logging.getLogger(__name__)
STARTUP_PROFILE = ProfileSettings(seconds_per_batch_size=0.3)


@dataclass(frozen=True)
class Profiler:
    """Finds, borrows or measures this process's profile of each model (module docstring).

    `hardware` is this process's fingerprint (its `threads` are the session threads),
    `target` the profile's label, `borrow` whether a same-machine profile at another thread
    count stands in for a measurement."""

    hardware: HardwareFingerprint
    target: HardwareTarget
    borrow: bool = False

    @property
    def key(self) -> str:
        return self.hardware.key

    def measured_here(self, variant: VariantEntry) -> bool:
        """Whether `variant`'s profile under this key was measured for it (not borrowed)."""
        profile = variant.manifest.profiles.get(self.key)
        return profile is not None and profile.hardware.key == self.key

    def ensure(self, models: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
        """Give every variant of `models` a profile under this key, in memory: borrowed where
        allowed and possible, else measured (all variants of the model side by side)."""
        for entry in models.values():
            missing = [v for v in entry.variants.values() if self.key not in v.manifest.profiles]
            if not missing:
                continue
            source = self._sibling(missing) if self.borrow else None
            if source is not None:
                for variant in missing:
                    variant.manifest.profiles[self.key] = variant.manifest.profiles[source]
                log.info(
                    "%s: routing on this machine's profile for %d session thread(s) until one for %d is stored",
                    entry.config.name, missing[0].manifest.profiles[source].hardware.threads, self.hardware.threads,
                )  # fmt: skip
                continue
            started = time.monotonic()
            self._measure(entry)
            log.warning(
                "%s: no stored profile for this hardware (%s); measured one at start-up in %.1f s. "
                "Store a full one with `slimserve profile %s --hardware-profile %s`.",
                entry.config.name, self.key, time.monotonic() - started, entry.path.parent, self.target,
            )  # fmt: skip
        return models

    def store_measured(self, folder: Path, repository: Path) -> bool:
        """Measure the model in `folder` for this key if any variant's variant.json lacks a
        profile for it, and add the profiles to those files (each replaced by rename). False
        if there was nothing to do, or a graph no longer matches its manifest (the load
        refuses that model anyway)."""
        entry = load_model(folder, repository)
        if all(self.key in v.manifest.profiles for v in entry.variants.values()):
            return False
        graphs = {name: v.onnx_path.read_bytes() for name, v in entry.variants.items()}
        if any(sha256_of(graphs[name]) != v.manifest.onnx_sha256 for name, v in entry.variants.items()):
            return False
        started = time.monotonic()
        self._measure(entry, graphs)
        for variant in entry.variants.values():
            update_manifest(variant.onnx_path.parent, variant.manifest)
        log.info(
            "%s: measured this machine's profile for %d session thread(s) in %.1f s and stored it in the repository",
            entry.config.name, self.hardware.threads, time.monotonic() - started,
        )  # fmt: skip
        return True

    def _sibling(self, variants: list[VariantEntry]) -> str | None:
        """The key of a profile every one of `variants` has, measured on this machine with
        another thread count (the nearest one); None if there is none."""
        shared = set.intersection(*(set(v.manifest.profiles) for v in variants))
        profiles = variants[0].manifest.profiles
        usable = [key for key in shared if same_machine(profiles[key].hardware, self.hardware)]
        threads = self.hardware.threads
        return min(usable, key=lambda key: (abs(profiles[key].hardware.threads - threads), key), default=None)

    def _measure(self, entry: ModelEntry, graphs: dict[str, bytes] | None = None) -> None:
        """A short profile of every variant of `entry`, side by side, under this key."""
        graphs = graphs or {name: v.onnx_path.read_bytes() for name, v in entry.variants.items()}
        profiles = profile_variants(graphs, entry.config, STARTUP_PROFILE, self.target, self.hardware.threads, False)
        for name, variant in entry.variants.items():
            variant.manifest.profiles[self.key] = profiles[name]
