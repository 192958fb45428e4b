"""What threads other than the event loop may read: an immutable copy of the serving state.

The event loop owns the routers, batchers and statistics. The Prometheus scrape thread
must not call into them (a rate meter pruned from two threads loses updates or raises), so
the app builds a `LiveState` on the loop every PUBLISH_PERIOD_S and swaps one reference;
a reader takes that reference once and reads values that never change (frozen dataclasses,
read-only mappings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from slimserve.router.model_router import ThroughputStatus

PUBLISH_PERIOD_S = 0.25
IDLE_PUBLISH_PERIOD_S = 5.0  # while no request arrives (`observe.activity`): nothing it shows moves faster


@dataclass(frozen=True)
class VariantLive:
    """One variant's queue and prediction at the moment of publishing."""

    queue_depth: int
    in_flight: int
    predicted_s: float  # the router's prediction for a one-row request


@dataclass(frozen=True)
class ModelLive:
    """One model's router state at the moment of publishing."""

    variants: Mapping[str, VariantLive]
    price: float
    stretch: float
    throughput: ThroughputStatus
    ready: bool


@dataclass(frozen=True)
class LiveState:
    """The whole server at the moment of publishing."""

    models: Mapping[str, ModelLive]
    cpu_utilization: float
    cpu_target: float
    cpu_overhead_s: float
    loop_lag_s: float
