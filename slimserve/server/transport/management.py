"""`slimserve.v1.Management`: ListVariants, Explain (a dry run of the router) and Feedback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import grpc

from slimserve.protos import slimserve_pb2 as pb
from slimserve.protos import slimserve_pb2_grpc
from slimserve.router.hints import parse_hints
from slimserve.server.core.data_plane import DataPlane
from slimserve.server.core.registry import ModelRegistry
from slimserve.server.observe.feedback import Answer
from slimserve.server.transport.auth import caller_of
from slimserve.server.transport.status import maps_errors


class VariantProgress(Protocol):
    """Where a build stands with one variant (`variants.progress.ProgressLine`)."""

    @property
    def stage(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def steps(self) -> int: ...
    @property
    def unit(self) -> str: ...
    @property
    def done(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def elapsed_s(self) -> float: ...
    @property
    def remaining_s(self) -> float | None: ...


class BuildProgress(Protocol):
    """What ListVariants shows of a build in progress (`process.background_build`)."""

    def building(self, hosted: dict[str, list[str]]) -> list[tuple[str, str]]:
        """(model, variant) still being built, given the variants hosted now per model."""
        ...

    def progress(self) -> Mapping[tuple[str, str], VariantProgress]:
        """The latest progress of each (model, variant) the build has reported on, as of now."""
        ...


def _building(model: str, variant: str, progress: VariantProgress | None) -> pb.BuildingVariant:
    if progress is None:
        return pb.BuildingVariant(model=model, name=variant)
    return pb.BuildingVariant(
        model=model,
        name=variant,
        progress=pb.BuildProgress(
            stage=progress.stage,
            step=progress.step,
            steps=progress.steps,
            unit=progress.unit,
            done=progress.done,
            total=progress.total,
            elapsed_s=progress.elapsed_s,
            remaining_s=progress.remaining_s,  # None leaves it unset: no estimate yet
        ),
    )


# (model, labels, caller, request id, ticket) → (the answer, rows it got right): observe.feedback
Scorer = Callable[[str, list[int], str, str, str], Awaitable[tuple[Answer, int]]]


def _local_scorer(plane: DataPlane) -> Scorer:
    async def score(model: str, labels: list[int], caller: str, request_id: str, ticket: str) -> tuple[Answer, int]:
        return plane.feedback(model, labels, caller, request_id=request_id, ticket=ticket)

    return score


class ManagementServicer(slimserve_pb2_grpc.ManagementServicer):
    """Variants with their measurements; Explain says which variant a request would get, and why."""

    def __init__(
        self, plane: DataPlane, registry: ModelRegistry, hardware_key: str, build: BuildProgress | None,
        feedback: Scorer | None = None,
    ) -> None:  # fmt: skip
        """`feedback` scores an answer wherever it is held (process.peers under `--workers`);
        by default this server's own answers."""
        self._plane = plane
        self._registry = registry
        self._build = build
        self._hardware_key = hardware_key
        self._feedback = feedback or _local_scorer(plane)

    @maps_errors
    async def ListVariants(
        self, request: pb.ListVariantsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListVariantsResponse:
        building = (
            self._build.building({m: list(h.batchers) for m, h in self._registry.models.items()}) if self._build else []
        )
        progress = self._build.progress() if self._build else {}
        if (
            request.model
            and any(model == request.model for model, _ in building)
            and request.model not in self._registry.models
        ):
            names = []  # being built, nothing published yet
        else:
            names = [request.model] if request.model else list(self._registry.models)
        response = pb.ListVariantsResponse(
            building=[
                _building(m, v, progress.get((m, v))) for m, v in building if not request.model or m == request.model
            ]
        )
        for name in names:
            for variant, entry in self._registry.get(name).entry.variants.items():
                manifest = entry.manifest
                m, seed = manifest.measurements, manifest.seed_formulas
                response.variants.add(
                    model=name,
                    name=variant,
                    kind=manifest.kind,
                    device=manifest.device,
                    params=m.params,
                    macs=m.macs or 0,
                    size_bytes=m.size_bytes,
                    quality=m.quality,
                    agreement=m.agreement,
                    alpha_params=seed.alpha_params,
                    alpha_bytes=seed.alpha_bytes,
                    beta_params=seed.beta_params,
                    beta_bytes=seed.beta_bytes,
                    profiles=[
                        pb.VariantProfile(
                            label=profile.label,
                            hardware_key=key,
                            this_machine=key == self._hardware_key,
                            latency=[
                                pb.LatencyPoint(batch_size=b, p50_ms=s.p50_ms, p95_ms=s.p95_ms)
                                for b, s in sorted(profile.latency.items())
                            ],
                            speedup=profile.speedup,
                        )
                        for key, profile in manifest.profiles.items()
                    ],
                    ready=True,
                )
        return response

    @maps_errors
    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        hosted = self._registry.get(request.model)
        config = hosted.entry.config
        parameters: dict[str, bool | int | float | str] = {"min_quality": request.min_quality}
        if request.slo_ms:
            parameters["slo_ms"] = request.slo_ms
        if request.policy:
            parameters["policy"] = request.policy
        hints = parse_hints(parameters, None, config.default_slo_ms)
        router = hosted.router
        snapshot = router.snapshot()  # the one `route` reads now: Explain says what it does
        decision = router.explain(hints, max(request.batch_size, 1), snapshot)
        status = router.throughput()
        return pb.ExplainResponse(
            model=config.name,
            chosen=decision.variant,
            reason=decision.reason,
            candidates=[
                pb.Candidate(
                    variant=v.candidate.variant,
                    predicted_ms=v.candidate.predicted_ms,
                    quality=v.candidate.quality,
                    chosen=v.chosen,
                    reason=v.why,
                    device=v.candidate.device,
                    capacity_rows_s=v.candidate.capacity_rows_s,
                    p_in_time=v.candidate.p_in_time,
                    cost_per_row_ms=v.candidate.cost_per_row_ms,
                )
                for v in decision.verdicts
            ],
            slo_ms=hints.slo_ms,
            slo_source=hints.slo_source,
            policy=hints.policy,
            predicted_ms=decision.predicted_ms,
            overhead_ms=snapshot.overhead_ms,
            throughput=pb.ThroughputStatus(
                declared_rps=status.declared_rps or 0.0,
                arrival_rps=status.arrival_rps,
                completion_rps=status.completion_rps,
                mix_capacity_rps=status.mix_capacity_rps,
                guard_active=status.guard_active,
                sustained=status.sustained,
            ),
            cpu_utilization=router.cpu.utilization,
            loop_lag_ms=router.loop_lag_ms(),
            cpu_price=decision.grounds.price if decision.grounds is not None else snapshot.price,
            cpu_target=router.cpu.target,
            cpu_overhead_ms=snapshot.cpu_overhead_ms,
        )

    @maps_errors
    async def Feedback(self, request: pb.FeedbackRequest, context: grpc.aio.ServicerContext) -> pb.FeedbackResponse:
        caller = caller_of(context.invocation_metadata())
        answer, correct = await self._feedback(request.model, list(request.labels), caller, request.request_id,
                                               request.ticket)  # fmt: skip
        return pb.FeedbackResponse(variant=answer.variant, predicted=list(answer.predicted), correct=correct)
