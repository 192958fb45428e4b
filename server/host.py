"""The loaded models: a session and a batcher per variant, and per-variant statistics."""

from __future__ import annotations

import time
from concurrent.futures import Executor
from dataclasses import dataclass

from server.batcher import DynamicBatcher
from server.errors import NotFoundError
from server.request import InferenceRequest, InferenceResult
from server.runtime import VariantSession
from variants.repository import ModelEntry


@dataclass
class VariantStats:
    """Cumulative counts and durations, as ModelStatistics reports them."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    inference_count: int = 0
    last_inference_ms: int = 0


@dataclass
class HostedModel:
    """One model of the repository, ready to serve."""

    entry: ModelEntry
    batchers: dict[str, DynamicBatcher]
    stats: dict[str, VariantStats]


class ModelHost:
    """Resolves (model, variant) and runs requests through the variant's batcher."""

    def __init__(self, models: dict[str, ModelEntry], executor: Executor, threads: int, max_queue_size: int) -> None:
        self.models: dict[str, HostedModel] = {}
        for name, entry in models.items():
            config = entry.config
            batchers = {
                variant: DynamicBatcher(
                    VariantSession(config, loaded, threads),
                    executor,
                    config.max_batch_size,
                    config.max_queue_delay_ms,
                    max_queue_size,
                )
                for variant, loaded in entry.variants.items()
            }
            self.models[name] = HostedModel(entry, batchers, {v: VariantStats() for v in batchers})

    def model(self, name: str) -> HostedModel:
        if name not in self.models:
            raise NotFoundError(f"unknown model '{name}'; serving {sorted(self.models)}")
        return self.models[name]

    def resolve(self, model: str, variant: str) -> tuple[HostedModel, str]:
        """The hosted model and the variant to use; empty variant → the model's default."""
        hosted = self.model(model)
        chosen = variant or hosted.entry.config.default_variant
        if chosen not in hosted.batchers:
            raise NotFoundError(f"model '{model}' has no variant '{chosen}'; it has {list(hosted.batchers)}")
        return hosted, chosen

    async def infer(self, request: InferenceRequest, deadline_s: float | None) -> InferenceResult:
        hosted, variant = self.resolve(request.model, request.variant)
        stats = hosted.stats[variant]
        started = time.monotonic_ns()
        try:
            result = await hosted.batchers[variant].submit(request, deadline_s)
        except Exception:
            stats.fail_count += 1
            stats.fail_ns += time.monotonic_ns() - started
            raise
        stats.success_count += 1
        stats.success_ns += time.monotonic_ns() - started
        stats.queue_ns += int(result.queue_ms * 1e6)
        stats.compute_ns += int(result.compute_ms * 1e6)
        stats.inference_count += request.batch_size
        stats.last_inference_ms = int(time.time() * 1000)
        return result

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
