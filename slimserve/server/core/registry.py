"""The loaded models: a session, a batcher and a router per model, and per-variant statistics.

Thread: the event loop owns every object here (routers, batchers, statistics). Other
threads — the Prometheus scrape thread — read only the `LiveState` that `live_state()`
builds on the loop and the app publishes (`server.live_state`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from slimserve.repository.format import ModelEntry, check_name
from slimserve.router.build import build_model_router
from slimserve.router.config import RouterConfig
from slimserve.router.cpu import CpuAccount
from slimserve.router.hints import RequestHints, parse_hints
from slimserve.router.model_router import ModelRouter
from slimserve.router.policy import Decision, candidates
from slimserve.server.core.batcher import DynamicBatcher
from slimserve.server.core.errors import DeadlineExceededError, InvalidInputError, NotFoundError, OverloadedError
from slimserve.server.core.request import CallRecord, InferenceRequest, InferenceResult
from slimserve.server.core.session import VariantSession
from slimserve.server.core.versions import variant_named
from slimserve.server.observe.feedback import Answer, RecentAnswers
from slimserve.server.observe.live_state import LiveState, ModelLive, VariantLive
from slimserve.server.observe.metrics import ServingMetrics

if TYPE_CHECKING:
    from slimserve.server.core.shadow import ShadowSampler


@dataclass
class VariantStats:
    """Cumulative counts and durations, as ModelStatistics reports them."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    compute_input_ns: int = 0  # decoding the request's tensors (the servicer times it)
    compute_output_ns: int = 0  # encoding the answer
    inference_count: int = 0
    last_inference_ms: int = 0
    in_flight: int = 0  # routed here and not answered yet


@dataclass
class HostedModel:
    """One model of the repository, ready to serve."""

    entry: ModelEntry
    batchers: dict[str, DynamicBatcher]
    router: ModelRouter
    stats: dict[str, VariantStats]

    @property
    def ready(self) -> bool:
        """Every variant can serve (a failed batcher makes the model not ready)."""
        return not any(b.failed for b in self.batchers.values())


class ModelHost:
    """Resolves (model, variant), routes requests without a variant, runs them through batchers.

    Every model's variants must have a profile for `hardware_key` (see server.profiles).
    With `metrics`, it records routing, in-flight, queue, compute, batch and SLO series;
    `shadow` and `answers` (set by the app) get every answer for live fidelity and feedback.

    Load shedding (`shed_late`): a request that states its own SLO (`slo_ms`, or a gRPC
    deadline) and whose chosen variant already has work ahead of it and is predicted to
    answer after that SLO is refused at once with UNAVAILABLE, before it takes a queue slot:
    under overload the core then serves requests that can still make it instead of ones
    that will time out. An idle variant never sheds, and a caller that set neither (and so
    gets the model's default SLO) waits its turn.
    """

    metrics: ServingMetrics | None = None
    shadow: ShadowSampler | None = None

    def __init__(
        self,
        models: dict[str, ModelEntry],
        executor: Executor,
        workers: int,
        threads: int,
        max_queue_size: int,
        hardware_key: str,
        router_config: RouterConfig | None = None,
        max_queue_bytes: int = 1 << 62,
        shed_late: bool = True,
        on_readiness_change: Callable[[], None] | None = None,
    ) -> None:
        self.models: dict[str, HostedModel] = {}
        self.shed_late = shed_late
        self._on_readiness_change = on_readiness_change  # called when a batcher fails for good
        self.answers = RecentAnswers(0)
        self.threads = threads
        self._executor = executor
        self._workers = workers
        self._max_queue_size = max_queue_size
        self._max_queue_bytes = max_queue_bytes
        self._hardware_key = hardware_key
        self._router_config = router_config
        self._cpu: CpuAccount | None = None
        self._loop_lag_ms: Callable[[], float] | None = None
        for name, entry in models.items():
            sessions = {
                variant: VariantSession(entry.config, loaded, threads) for variant, loaded in entry.variants.items()
            }
            self.models[name] = self.build_model(name, entry, sessions)

    def attach_load(self, cpu: CpuAccount, loop_lag_ms: Callable[[], float]) -> None:
        """The process's CPU account and event-loop lag, for every router now and later."""
        self._cpu, self._loop_lag_ms = cpu, loop_lag_ms
        for hosted in self.models.values():
            hosted.router.cpu, hosted.router.loop_lag_ms = cpu, loop_lag_ms

    def build_model(
        self,
        name: str,
        entry: ModelEntry,
        sessions: Mapping[str, VariantSession],
        kept: Mapping[str, DynamicBatcher] | None = None,
        old: HostedModel | None = None,
    ) -> HostedModel:
        """A model ready to host, not yet hosted: a batcher per variant (those in `kept`
        are `old`'s, unchanged, with their statistics; the others are new over `sessions`,
        not started) and a router that adopts what `old`'s learned (ModelRouter.adopt)."""
        config = entry.config
        kept = kept or {}
        batchers: dict[str, DynamicBatcher] = {}
        for variant in entry.variants:
            if variant in kept:
                batchers[variant] = kept[variant]
                continue
            batcher = DynamicBatcher(
                sessions[variant], self._executor, config.max_batch_size, config.max_queue_delay_ms,
                self._max_queue_size, self._max_queue_bytes,
            )  # fmt: skip
            # The batcher's identity, not the batcher: a reference would make a cycle, and a
            # retired batcher's session would then wait for the cyclic collector to be freed.
            key = id(batcher)
            batcher.on_batch = lambda rows, ms, m=name, v=variant, b=key: self._batch_done(m, v, b, rows, ms)
            batcher.on_failure = self._readiness_changed
            batchers[variant] = batcher
        router = build_model_router(entry, self._hardware_key, batchers, self._router_config, self._workers)
        if old is not None:
            router.adopt(old.router, kept)
        elif self._cpu is not None and self._loop_lag_ms is not None:
            router.cpu, router.loop_lag_ms = self._cpu, self._loop_lag_ms
        stats = {v: old.stats[v] if old is not None and v in kept else VariantStats() for v in batchers}
        return HostedModel(entry, batchers, router, stats)

    def model(self, name: str) -> HostedModel:
        if name not in self.models:
            try:
                check_name(name, "model")  # hosted names pass by construction: only misses pay for it
            except ValueError as exc:
                raise InvalidInputError(str(exc)) from exc
            raise NotFoundError(f"unknown model '{name}'; serving {sorted(self.models)}")
        return self.models[name]

    def resolve(self, model: str, variant: str) -> tuple[HostedModel, str]:
        """The hosted model and the variant to use; empty variant → the model's default. A
        variant may be named by its Triton version number (`server.versions`)."""
        hosted = self.model(model)
        chosen = variant_named(hosted.entry, variant) if variant else hosted.entry.config.default_variant
        if chosen not in hosted.batchers:
            raise NotFoundError(f"model '{model}' has no variant '{chosen}'; it has {list(hosted.batchers)}")
        return hosted, chosen

    def decide(
        self, hosted: HostedModel, request: InferenceRequest, deadline_s: float | None
    ) -> tuple[Decision, RequestHints]:
        """The named variant, or the router's choice from the request's hints."""
        remaining_ms = None if deadline_s is None else (deadline_s - time.monotonic()) * 1e3
        hints = parse_hints(request.parameters, remaining_ms, hosted.entry.config.default_slo_ms)
        if request.variant:
            _, variant = self.resolve(request.model, request.variant)
            return hosted.router.pinned(variant, request.batch_size), hints
        return hosted.router.route(hints, request.batch_size), hints

    async def infer(self, request: InferenceRequest, deadline_s: float | None, call: CallRecord) -> InferenceResult:
        """Route and run one request; `call` says when it arrived and learns the variant."""
        hosted = self.model(request.model)
        decision, hints = self.decide(hosted, request, deadline_s)
        call.variant = decision.variant
        stats = hosted.stats[decision.variant]
        series = self.metrics.series(request.model, decision.variant) if self.metrics else None
        if series:
            series.routed(decision.reason)
        started = time.monotonic_ns()
        stats.in_flight += 1
        try:
            batcher = hosted.batchers[decision.variant]
            busy = batcher.queued_rows or batcher.running_rows
            stated = hints.slo_source != "model_default"
            if self.shed_late and stated and busy and decision.predicted_ms > hints.slo_ms:
                raise OverloadedError(
                    f"overloaded: variant '{decision.variant}' is predicted to answer in "
                    f"{decision.predicted_ms:.1f} ms, past the {hints.slo_ms:g} ms SLO; retry later or elsewhere"
                )
            result = await batcher.submit(request, deadline_s)
        except BaseException as exc:  # CancelledError too: every call ends in one outcome
            stats.fail_count += 1
            stats.fail_ns += time.monotonic_ns() - started
            if isinstance(exc, asyncio.CancelledError | DeadlineExceededError):
                hosted.router.observe_timeout(decision, (time.monotonic() - call.received_s) * 1e3)
            else:
                hosted.router.observe_request(None)
            if series:
                series.slo_missed.inc()  # no answer within the SLO, whatever the reason
            raise
        finally:
            stats.in_flight -= 1
        elapsed_ms = (time.monotonic() - call.received_s) * 1e3
        hosted.router.observe_request(decision, elapsed_ms, result.queue_ms, result.compute_ms)
        if series:
            series.queue_seconds.observe(result.queue_ms / 1e3)
            (series.slo_met if elapsed_ms <= hints.slo_ms else series.slo_missed).inc()
        if self.shadow:
            self.shadow.after_answer(hosted, request, result)
        if request.id and hosted.entry.config.task == "classifier":
            top1 = result.outputs[hosted.entry.config.outputs[0].name].argmax(axis=-1)
            answer = Answer(request.model, result.variant, tuple(int(c) for c in top1), call.caller)
            self.answers.remember(request.id, answer)
        result.device, result.predicted_ms, result.reason = decision.device, decision.predicted_ms, decision.reason
        stats.success_count += 1
        stats.success_ns += time.monotonic_ns() - started
        stats.queue_ns += int(result.queue_ms * 1e6)
        stats.compute_ns += int(result.compute_ms * 1e6)
        stats.inference_count += request.batch_size
        stats.last_inference_ms = int(time.time() * 1000)
        return result

    def _readiness_changed(self) -> None:
        if self._on_readiness_change is not None:
            self._on_readiness_change()

    def live_state(self, cpu: CpuAccount, load_lag_ms: float) -> LiveState:
        """On the event loop: everything other threads may read, copied into immutable values."""
        models = {}
        for name, hosted in self.models.items():
            router = hosted.router
            snapshot = router.snapshot()
            predicted = {c.variant: c.predicted_ms / 1e3 for c in candidates(snapshot, 1, None)}
            variants = {
                variant: VariantLive(batcher.queue_depth, hosted.stats[variant].in_flight, predicted[variant])
                for variant, batcher in hosted.batchers.items()
            }
            models[name] = ModelLive(
                MappingProxyType(variants), snapshot.price, snapshot.stretch, router.throughput(), hosted.ready
            )
        return LiveState(
            models=MappingProxyType(models),
            cpu_utilization=cpu.utilization,
            cpu_target=cpu.target,
            cpu_overhead_s=cpu.overhead_ms / 1e3,
            loop_lag_s=load_lag_ms / 1e3,
        )

    def _batch_done(self, model: str, variant: str, batcher_id: int, rows: int, compute_ms: float) -> None:
        """After every session call: correct the router, and record compute and batch size once.
        A batcher retired by a reload or unload still finishing its queue teaches no router
        (it is alive while it calls this, so no other object has its id)."""
        hosted = self.models.get(model)
        if hosted is not None and id(hosted.batchers.get(variant)) == batcher_id:
            hosted.router.observe_batch(variant, rows, compute_ms)
        if self.metrics:
            series = self.metrics.series(model, variant)
            series.compute_seconds.observe(compute_ms / 1e3)
            series.batch_size.observe(rows)

    def warm_up(self, calls: int) -> None:
        """Blocking: run every session a few times so the first request is not the slow one."""
        for hosted in self.models.values():
            for batcher in hosted.batchers.values():
                batcher.session.warm_up(calls)

    def start_batchers(self) -> None:
        for hosted in self.models.values():
            for batcher in hosted.batchers.values():
                batcher.start()

    async def close(self) -> None:
        for hosted in self.models.values():
            for batcher in hosted.batchers.values():
                await batcher.close()
