"""Make sure every variant has a latency profile for the hardware the server runs on.

A repository built elsewhere (another CPU, another thread count) has no profile for this
machine, and the router's latency model starts from one. Rather than refuse to start, the
server measures a short profile at start-up, keeps it in memory, and says how to store a
proper one (`slimserve profile`).
"""

from __future__ import annotations

import logging
import time

from slimserve.repository.format import ModelEntry
from slimserve.repository.hardware import HardwareTarget
from slimserve.repository.profile import ProfileSettings, profile_variants

log = logging.getLogger(__name__)
STARTUP_PROFILE = ProfileSettings(seconds_per_batch_size=0.3)


def ensure_profiles(
    models: dict[str, ModelEntry], hardware_key: str, target: HardwareTarget, threads: int
) -> dict[str, ModelEntry]:
    """Profile (in memory) every model that lacks a profile for `hardware_key`."""
    for entry in models.values():
        if all(hardware_key in v.manifest.profiles for v in entry.variants.values()):
            continue
        started = time.monotonic()
        graphs = {name: v.onnx_path.read_bytes() for name, v in entry.variants.items()}
        profiles = profile_variants(graphs, entry.config, STARTUP_PROFILE, target, threads)
        for name, variant in entry.variants.items():
            variant.manifest.profiles[hardware_key] = profiles[name]
        log.warning(
            "%s: no stored profile for this hardware (%s); measured one at start-up in %.1f s. "
            "Store a full one with `slimserve profile %s --hardware-profile %s`.",
            entry.config.name, hardware_key, time.monotonic() - started, entry.path.parent, target,
        )  # fmt: skip
    return models
