"""The hosted models: what the data plane resolves a call to, and what model control swaps.

`ModelRegistry` maps a model's name to the `HostedModel` that serves it — its batchers (one
per variant, over its ONNX Runtime session), its router and its per-variant statistics. A
call resolves its model once and keeps that `HostedModel` to its end, so a reload that swaps
the entry meanwhile never changes a call half-way. `HostedModelFactory` makes a
`HostedModel` from a repository entry, with every collaborator passed in at construction.

Thread: the event loop owns every object here (routers, batchers, statistics), except a
model's `Turns`, which the executor's threads share under its own lock (core.turns). Other
threads — the Prometheus scrape thread — read only the `LiveState` that `live_state()`
builds on the loop and the app publishes (`observe.live_state`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from types import MappingProxyType

from slimserve.repository.format import ModelEntry, check_name
from slimserve.router.build import build_model_router
from slimserve.router.config import RouterConfig
from slimserve.router.cpu import CpuAccount
from slimserve.router.load import Clock
from slimserve.router.model_router import ModelRouter
from slimserve.router.policy import candidates
from slimserve.server.core.batcher import DynamicBatcher
from slimserve.server.core.session import VariantSession
from slimserve.server.core.turns import Turns
from slimserve.server.core.versions import variant_named
from slimserve.server.errors import InvalidInputError, NotFoundError, shown
from slimserve.server.observe.live_state import LiveState, ModelLive, VariantLive
from slimserve.server.observe.recorder import CallRecorder
from slimserve.server.observe.statistics import VariantStats


@dataclass(frozen=True)
class HostedModel:
    """One model of the repository, ready to serve; replaced whole by a reload."""

    entry: ModelEntry
    batchers: Mapping[str, DynamicBatcher]
    router: ModelRouter
    stats: Mapping[str, VariantStats]
    turns: Turns | None  # its variants' session calls take turns (core.turns); kept across reloads

    @property
    def name(self) -> str:
        return self.entry.config.name

    @property
    def ready(self) -> bool:
        """Every variant can serve (a failed batcher makes the model not ready)."""
        return not any(b.failed for b in self.batchers.values())

    def variant(self, version: str) -> str:
        """The variant a call's version names (a name or a Triton version number,
        `core.versions`); NotFoundError if this model has none such."""
        variant = variant_named(self.entry, version)
        if variant not in self.batchers:
            # The variants are not listed: ModelReady, which is open to every caller, answers
            # with this message (ModelConfig's `variants` parameter lists them, to the inference group).
            raise NotFoundError(f"model '{self.name}' has no variant {shown(variant)}")
        return variant


class ModelRegistry:
    """Name → HostedModel. `put` and `remove` are the only writers (model control, start-up)."""

    def __init__(self) -> None:
        self._models: dict[str, HostedModel] = {}
        self.models: Mapping[str, HostedModel] = MappingProxyType(self._models)  # a read-only view

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def get(self, name: str) -> HostedModel:
        """The model serving `name`: NotFoundError (or InvalidInputError for a name no model
        could have) otherwise."""
        hosted = self._models.get(name)
        if hosted is None:
            raise self.missing(name)
        return hosted

    def find(self, name: str) -> HostedModel | None:
        """The model serving `name`, or None."""
        return self._models.get(name)

    def missing(self, name: str) -> Exception:
        """Why `name` cannot be served (for a name that `find` did not find)."""
        try:
            check_name(name, "model")  # hosted names pass by construction: only misses pay for it
        except ValueError as exc:
            return InvalidInputError(str(exc))
        # Not listed: any caller may ask ModelReady (RepositoryIndex lists them, to management).
        return NotFoundError(f"unknown model {shown(name)}")

    def put(self, hosted: HostedModel) -> None:
        """Host `hosted` under its name: every call that resolves it from now on gets it."""
        self._models[hosted.name] = hosted

    def remove(self, name: str) -> HostedModel | None:
        return self._models.pop(name, None)

    def warm_up(self, calls: int) -> None:
        """Blocking: run every session a few times so the first request is not the slow one."""
        for hosted in self._models.values():
            for batcher in hosted.batchers.values():
                batcher.session.warm_up(calls)

    def start_batchers(self) -> None:
        for hosted in self._models.values():
            for batcher in hosted.batchers.values():
                batcher.start()

    async def close(self) -> None:
        for hosted in self._models.values():
            for batcher in hosted.batchers.values():
                await batcher.close()

    def live_state(self, cpu: CpuAccount, loop_lag_ms: float) -> LiveState:
        """On the event loop: everything other threads may read, copied into immutable values."""
        models = {}
        for name, hosted in self._models.items():
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
            loop_lag_s=loop_lag_ms / 1e3,
        )


class HostedModelFactory:
    """Makes `HostedModel`s: a batcher per variant and a router over them.

    Every model's variants must have a profile for `hardware_key` (see core.profiles).
    Every session call is reported to the model's router (if the batcher is still the one
    hosted) and to `recorder`; a batcher that fails for good calls `on_failure`.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        recorder: CallRecorder,
        executor: Executor,
        calls_at_once: int | None,
        threads: int,
        max_queue_size: int,
        max_queue_bytes: int,
        hardware_key: str,
        router_config: RouterConfig,
        cpu: CpuAccount,
        loop_lag_ms: Callable[[], float],
        on_failure: Callable[[], None],
        clock: Clock,
    ) -> None:
        self._registry = registry
        self._recorder = recorder
        self._executor = executor
        self._calls_at_once = calls_at_once  # a model's session calls at once (core.turns); None: all
        self.threads = threads  # ONNX Runtime threads per session
        self._max_queue_size = max_queue_size
        self._max_queue_bytes = max_queue_bytes
        self._hardware_key = hardware_key
        self._router_config = router_config
        self._cpu = cpu
        self._loop_lag_ms = loop_lag_ms
        self._on_failure = on_failure
        self._clock = clock

    def sessions(self, entry: ModelEntry) -> dict[str, VariantSession]:
        """Blocking: an ONNX Runtime session per variant of `entry`."""
        return {
            variant: VariantSession(entry.config, loaded, self.threads) for variant, loaded in entry.variants.items()
        }

    def build(
        self,
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
        # A reload keeps the model's turns: its kept batchers and its new ones take turns together.
        turns = old.turns if old is not None else self._new_turns()
        batchers: dict[str, DynamicBatcher] = {}
        for variant in entry.variants:
            if variant in kept:
                batchers[variant] = kept[variant]
                continue
            batchers[variant] = DynamicBatcher(
                sessions[variant], self._executor, config.max_batch_size, config.max_queue_delay_ms,
                self._max_queue_size, self._max_queue_bytes,
                on_batch=self._batch_listener(config.name, variant), on_failure=self._on_failure, clock=self._clock,
                priority_levels=config.priority_levels, default_priority_level=config.default_priority_level,
                turns=turns,
            )  # fmt: skip
        router = build_model_router(
            entry, self._hardware_key, batchers, self._router_config, None if turns is None else turns.limit,
            self._cpu, self._loop_lag_ms, self._clock,
        )  # fmt: skip
        if old is not None:
            router.adopt(old.router, kept)
        stats = {v: old.stats[v] if old is not None and v in kept else VariantStats() for v in batchers}
        return HostedModel(entry, MappingProxyType(batchers), router, MappingProxyType(stats), turns)

    def _new_turns(self) -> Turns | None:
        """A new model's turns; None where its variants run side by side (the default)."""
        return None if self._calls_at_once is None else Turns(self._calls_at_once)

    def _batch_listener(self, model: str, variant: str) -> Callable[[DynamicBatcher, int, float, float], None]:
        """After every session call: correct the router, and record compute and batch size once.
        A batcher retired by a reload or unload still finishing its queue teaches no router."""

        def batch_done(batcher: DynamicBatcher, rows: int, compute_ms: float, cpu_ms: float) -> None:
            hosted = self._registry.models.get(model)
            if hosted is not None and hosted.batchers.get(variant) is batcher:
                hosted.router.observe_batch(variant, rows, compute_ms, cpu_ms)
            self._recorder.record_batch(model, variant, rows, compute_ms)

        return batch_done
