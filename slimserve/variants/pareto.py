"""The Pareto front of a model's variants on one hardware profile, and the set to serve.

A variant is dominated when another is at least as accurate, as fast (p95 at batch 1) and
as small (ONNX bytes), and strictly better in one of them: no SLO, quality floor or memory
limit would ever pick it, so serving it costs memory and router attention for nothing. Size
counts because on an edge device memory is the first limit: a variant that is slower but
much smaller stays on the front.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimserve.repository.format import VariantManifest

FRONT_BATCH_SIZE = 1


@dataclass(frozen=True)
class Tradeoff:
    """What the front compares: one variant on one hardware profile."""

    name: str
    quality: float
    p95_ms: float
    size_bytes: int


def dominates(a: Tradeoff, b: Tradeoff) -> bool:
    """a is at least as good as b in quality, latency and size, and better in one."""
    as_good = a.quality >= b.quality and a.p95_ms <= b.p95_ms and a.size_bytes <= b.size_bytes
    return as_good and (a.quality > b.quality or a.p95_ms < b.p95_ms or a.size_bytes < b.size_bytes)


def front(items: list[Tradeoff]) -> set[str]:
    """Names of the items no other item dominates."""
    return {item.name for item in items if not any(dominates(other, item) for other in items)}


def tradeoffs(manifests: dict[str, VariantManifest], metric: str, hardware_key: str) -> list[Tradeoff]:
    """The variants profiled on `hardware_key` at FRONT_BATCH_SIZE (the others cannot be placed)."""
    found = []
    for name, manifest in manifests.items():
        profile = manifest.profiles.get(hardware_key)
        stats = profile.latency.get(FRONT_BATCH_SIZE) if profile else None
        if stats is not None:
            quality = manifest.measurements.quality.get(metric, 0.0)
            found.append(Tradeoff(name, quality, stats.p95_ms, manifest.measurements.size_bytes))
    return found


def served_set(
    manifests: dict[str, VariantManifest],
    metric: str,
    hardware_key: str,
    reference: str,
    always: list[str],
    most: int | None,
) -> list[str]:
    """The reference, then `always`, then the front's other members by quality, at most `most`
    in all (the reference and `always` are never cut)."""
    items = tradeoffs(manifests, metric, hardware_key)
    on_front = sorted(
        (i for i in items if i.name in front(items) and i.name != reference and i.name not in always),
        key=lambda i: -i.quality,
    )
    chosen = [reference, *(name for name in always if name in manifests and name != reference)]
    room = len(on_front) if most is None else max(0, most - len(chosen))
    return chosen + [i.name for i in on_front[:room]]
