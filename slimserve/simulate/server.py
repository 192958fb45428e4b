"""What the simulator knows of the server: its variants and the physical parameters of the machine.

A variant is data (design rule 6): its quality, its batcher's rule (`max_batch_size`,
`max_queue_delay_ms`), the profile the router starts from (`belief`: what the server reads
from the repository for its hardware key) and the time a batch really takes (`physics`:
service time by batch size, per input length where the inputs have one). By default the
physics is the profile itself; a measurement at the workload's input length can replace it
(`with_physics`), since a repository profiles text at one length (32 tokens) and the
router's online correction is what absorbs the difference in a real server.

`ServerParams` holds what no repository records: the cores, the per-request CPU the event
loop spends around each session call (gRPC, decoding, routing, encoding), the time outside
the server, and a speed factor between the machine that measured the physics and the one
simulated. These are the parameters calibration may set (docs/routing.md, "Simulator").
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from slimserve.repository.format import ModelEntry, load_model
from slimserve.router.latency import ServiceCurve


@dataclass(frozen=True)
class Physics:
    """Service time of one session call by batch size, at one or more input lengths (tokens;
    0: inputs without a length). Between two measured lengths the time is interpolated
    linearly; outside them the nearest is taken."""

    curves: Mapping[int, ServiceCurve]
    lengths: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.curves:
            raise ValueError("physics needs at least one service curve")
        object.__setattr__(self, "lengths", tuple(sorted(self.curves)))

    def ms(self, rows: int, tokens: int) -> float:
        lengths = self.lengths
        if len(lengths) == 1 or tokens <= lengths[0]:
            return self.curves[lengths[0]].ms(rows)
        if tokens >= lengths[-1]:
            return self.curves[lengths[-1]].ms(rows)
        for lo, hi in itertools.pairwise(lengths):
            if tokens <= hi:
                a, b = self.curves[lo].ms(rows), self.curves[hi].ms(rows)
                return a + (b - a) * (tokens - lo) / (hi - lo)
        raise AssertionError("unreachable")

    def min_ms_per_row(self, tokens: int, max_batch_size: int) -> float:
        """The least machine-ms a row can cost at this length, over every batch size."""
        return min(self.ms(n, tokens) / n for n in range(1, max_batch_size + 1))


@dataclass(frozen=True)
class VariantSpec:
    """One served variant as the simulator runs it."""

    name: str
    quality: float
    max_batch_size: int
    max_queue_delay_ms: float
    belief: ServiceCurve  # the profile the router starts from
    physics: Physics  # what a batch really takes (before ServerParams.speed)
    device: str = "cpu"


@dataclass(frozen=True)
class ServerParams:
    """The machine and the server around the sessions (module docstring).

    Model: processor sharing over `cores` cores. The runnable threads are each worker's
    event loop (while it has work) and each variant's batch in flight (one ONNX Runtime
    session call with `session_threads` threads); while they ask for no more than `cores`,
    each runs at full speed, else every one at cores / threads asked (the Linux scheduler's
    fair share, with no cost for switching). A worker runs its session calls on
    `compute_workers` threads (the server's SLIMSERVE_COMPUTE_WORKERS; None: one per variant, its
    default): a batch formed while they are all busy waits for one and counts as in flight to
    the router meanwhile, as the server's batcher does; the waiting batch whose earliest call
    is due first (sent + SLO) takes the next free thread, as the server's turns do (core.turns)."""

    cores: float = 1.0
    session_threads: int = 1
    workers: int = 1
    compute_workers: int | None = None
    # CPU on the event loop per call: before the session call (gRPC read, decode, route,
    # submit) and after it (encode, send); a call refused before decoding costs `refuse_ms`.
    pre_ms: float = 0.8
    post_ms: float = 0.4
    refuse_ms: float = 0.2
    outside_ms: float = 0.3  # client and network, on other cores: added to every latency
    speed: float = 1.0  # physics time × this = time here (1: the machine that measured it)
    shed_late: bool = True  # the data plane refuses calls predicted or waited past their SLO

    def __post_init__(self) -> None:
        if self.compute_workers is not None and self.compute_workers < 1:
            raise ValueError(f"compute_workers must be at least 1 (None: one per variant), got {self.compute_workers}")

    @property
    def overhead_ms(self) -> float:
        return self.pre_ms + self.post_ms


def variants_from_entry(entry: ModelEntry, label: str, served: Sequence[str] | None = None) -> list[VariantSpec]:
    """The served variants of a loaded model, their belief and physics from the profile
    labelled `label` (`edge`, `cloud-cpu`), quality in the metric `model.yaml` routes on."""
    config = entry.config
    names = list(served) if served is not None else list(entry.variants)
    specs = []
    for name in names:
        manifest = entry.variants[name].manifest
        profiles = [p for p in manifest.profiles.values() if p.label == label]
        if not profiles:
            raise LookupError(f"{config.name}/{name} has no '{label}' profile (it has {sorted(manifest.profiles)})")
        profile = max(profiles, key=lambda p: p.measured_at)
        curve = ServiceCurve.of({b: s.p50_ms for b, s in profile.latency.items()})
        tokens = _tokens_of(profile.input_note)
        specs.append(
            VariantSpec(
                name=name,
                quality=manifest.measurements.quality[config.quality_metric.name],
                max_batch_size=config.max_batch_size,
                max_queue_delay_ms=config.max_queue_delay_ms,
                belief=curve,
                physics=Physics({tokens: curve}),
                device=manifest.device,
            )
        )
    return specs


def variants_from_repository(model_dir: Path, label: str, served: Sequence[str] | None = None) -> list[VariantSpec]:
    return variants_from_entry(load_model(model_dir), label, served)


def with_physics(
    specs: Sequence[VariantSpec],
    measured: Mapping[str, Mapping[int, Mapping[int, float]]],
    belief: Mapping[str, Mapping[int, float]] | None = None,
) -> list[VariantSpec]:
    """`specs` with their physics replaced by measurements (variant → tokens → batch → ms)
    and, optionally, their belief by another profile (variant → batch → ms)."""
    out = []
    for spec in specs:
        curves = {tokens: ServiceCurve.of(dict(points)) for tokens, points in measured[spec.name].items()}
        new_belief = ServiceCurve.of(dict(belief[spec.name])) if belief is not None else spec.belief
        out.append(replace(spec, physics=Physics(curves), belief=new_belief))
    return out


def _tokens_of(note: str) -> int:
    """The input length a profile was measured at ("32 tokens per item" → 32; none: 0)."""
    head = note.split(" ", 1)[0]
    return int(head) if head.isdigit() else 0
