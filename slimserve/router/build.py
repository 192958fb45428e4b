"""Builds the routers of a repository from its manifests, this machine's profiles and queues."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from slimserve.repository.format import ModelEntry, Profile
from slimserve.router.config import RouterConfig
from slimserve.router.cpu import CpuAccount
from slimserve.router.latency import IsolatingQueueView, LatencyModel, QueueView, ServiceCurve
from slimserve.router.load import Clock
from slimserve.router.model_router import ModelRouter, VariantRoute


class UnroutableVariantError(LookupError):
    """A variant lacks what the router needs: a profile for the hardware the server runs
    on, or a measurement of the quality metric its model routes on."""


def profile_for(entry: ModelEntry, variant: str, hardware_key: str) -> Profile:
    profiles = entry.variants[variant].manifest.profiles
    if hardware_key not in profiles:
        raise UnroutableVariantError(
            f"{entry.config.name}/{variant} has no profile for hardware {hardware_key} "
            f"(it has {sorted(profiles) or 'none'})"
        )
    return profiles[hardware_key]


def build_model_router(
    entry: ModelEntry,
    hardware_key: str,
    queues: Mapping[str, QueueView],
    router_config: RouterConfig | None = None,
    calls_at_once: int | None = None,
    cpu: CpuAccount | None = None,
    loop_lag_ms: Callable[[], float] | None = None,
    clock: Clock = time.monotonic,
) -> ModelRouter:
    """A router over every variant of `entry`, from its profile for `hardware_key`, routing
    on the quality metric `model.yaml` names.

    `calls_at_once`: how many of the model's session calls run at once (its `Turns`; None: as
    many as it has variants, each beside the others). `cpu` and `loop_lag_ms`:
    the serving process's CPU account and event-loop lag, shared by every model's router.
    """
    config, router_config = entry.config, router_config or RouterConfig()
    metric = config.quality_metric.name
    routes = []
    for name, variant in entry.variants.items():
        profile = profile_for(entry, name, hardware_key)
        curve = ServiceCurve.of({batch: stats.p50_ms for batch, stats in profile.latency.items()})
        measured = variant.manifest.measurements.quality
        if metric not in measured:
            raise UnroutableVariantError(
                f"{config.name}/{name} has no measurement of '{metric}', the quality metric model.yaml routes on "
                f"(it has {sorted(measured) or 'none'})"
            )
        routes.append(
            VariantRoute(
                name=name,
                device=variant.manifest.device,
                quality=measured[metric],
                latency=LatencyModel(
                    curve,
                    _batch_rows(config.max_batch_size, queues[name]),
                    router_config.correction_weight,
                    router_config.correction_bounds,
                ),
                queue=queues[name],
            )
        )
    side_by_side = calls_at_once is None or calls_at_once >= len(routes)
    return ModelRouter(
        config.name, routes, config.default_slo_ms, config.throughput_slo_rps, router_config, side_by_side,
        clock, cpu, loop_lag_ms,
    )  # fmt: skip


def _batch_rows(max_batch_size: int, queue: QueueView) -> int:
    """The rows of the largest session call the variant's queue runs: its model's batch, or
    one request's (a batch-1 request's: 1) where the queue runs each request alone."""
    return 1 if isinstance(queue, IsolatingQueueView) and not queue.merges_requests else max_batch_size
