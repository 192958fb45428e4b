"""Builds the routers of a repository from its manifests, this machine's profiles and queues."""

from __future__ import annotations

from collections.abc import Mapping

from router.latency import LatencyModel, QueueView, ServiceCurve
from router.model_router import ModelRouter, VariantRoute
from variants.repository import ModelEntry, Profile


class MissingProfileError(LookupError):
    """A variant has no profile for the hardware the server runs on."""


def profile_for(entry: ModelEntry, variant: str, hardware_key: str) -> Profile:
    profiles = entry.variants[variant].manifest.profiles
    if hardware_key not in profiles:
        raise MissingProfileError(
            f"{entry.config.name}/{variant} has no profile for hardware {hardware_key} "
            f"(it has {sorted(profiles) or 'none'})"
        )
    return profiles[hardware_key]


def build_model_router(
    entry: ModelEntry,
    hardware_key: str,
    queues: Mapping[str, QueueView],
    rpc_allowance_ms: float = 0.0,
    workers: int | None = None,
) -> ModelRouter:
    """A router over every variant of `entry`, from its profile for `hardware_key`.

    `workers`: threads that run sessions (None: one per variant).
    """
    config = entry.config
    routes = []
    for name, variant in entry.variants.items():
        profile = profile_for(entry, name, hardware_key)
        curve = ServiceCurve.of({batch: stats.p50_ms for batch, stats in profile.latency.items()})
        routes.append(
            VariantRoute(
                name=name,
                device=variant.manifest.device,
                quality=variant.manifest.measurements.quality.get(config.quality_metric.name, 0.0),
                latency=LatencyModel(curve, config.max_batch_size),
                queue=queues[name],
            )
        )
    side_by_side = workers is None or workers >= len(routes)
    return ModelRouter(
        config.name, routes, config.default_slo_ms, config.throughput_slo_rps, rpc_allowance_ms, side_by_side
    )
