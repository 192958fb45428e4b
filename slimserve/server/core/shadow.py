"""Live fidelity by shadow sampling: rerun some answered requests on the reference variant.

A sampled fraction of requests served by a compressed variant is run again on the model's
reference variant *after* the caller has its answer, in a background task, and only when
the model has spare capacity: no queue in any of its variants and no other shadow of the
model running. Under load the check fails and shadowing stops by itself. Agreement per
request — top-1 match rate for classifiers, mean cosine for encoders, and for a generic model
the fidelity its build measured (repository.fidelity: exact match for integer, bool and
BYTES outputs, 1 − relative L2 error for float ones, the minimum over every output) — is
exported per variant; divided by the number of comparisons it is the variant's live fidelity.

The comparison is run through the data plane (`rerun`, which the data plane passes with
each answer), on the model hosted at that moment, and recorded by the recorder.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import numpy as np

from slimserve.repository.fidelity import fidelity
from slimserve.repository.format import ModelConfig
from slimserve.server.core.registry import HostedModel
from slimserve.server.core.request import InferenceRequest, InferenceResult
from slimserve.server.observe.recorder import CallRecorder

log = logging.getLogger(__name__)
MAX_CPU_UTILIZATION = 0.6
Rerun = Callable[[str, str, InferenceRequest], Awaitable[InferenceResult]]  # (model, variant, request)


def agreement(config: ModelConfig, served: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """Top-1 agreement (classifier) or mean cosine similarity (encoder) of the first output,
    or fidelity over every output (generic), in [0, 1]."""
    if config.task == "generic":
        return fidelity(served, {spec.name: reference[spec.name] for spec in config.outputs})[0]
    output = config.outputs[0].name
    mine, theirs = served[output], reference[output]
    if config.task == "classifier":
        return float(np.mean(mine.argmax(axis=-1) == theirs.argmax(axis=-1)))
    a = mine.reshape(len(mine), -1).astype(np.float64)
    b = theirs.reshape(len(theirs), -1).astype(np.float64)
    cosine = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(np.clip(cosine, 0.0, 1.0).mean())


class ShadowSampler:
    """Starts background comparisons against the reference variant (see module docstring)."""

    def __init__(
        self, fraction: float, recorder: CallRecorder, cpu_load: Callable[[], float], seed: int | None = None
    ) -> None:
        self.fraction = fraction
        self._recorder = recorder
        self._cpu_load = cpu_load
        self._random = random.Random(seed)
        self._running: dict[str, asyncio.Task[None]] = {}

    def after_answer(
        self, hosted: HostedModel, request: InferenceRequest, result: InferenceResult, rerun: Rerun
    ) -> None:
        """Called once the primary answer is ready; never waits."""
        config = hosted.entry.config
        if self.fraction <= 0 or result.variant == config.reference_variant or self._random.random() >= self.fraction:
            return
        reason = self._busy(hosted)
        if reason:
            self._recorder.record_shadow_skipped(config.name, reason)
            return
        task = asyncio.get_running_loop().create_task(self._compare(hosted, request, result, rerun))
        self._running[config.name] = task

    def _busy(self, hosted: HostedModel) -> str:
        if hosted.entry.config.name in self._running:
            return "shadow_running"
        if self._cpu_load() >= MAX_CPU_UTILIZATION:
            return "cpu_busy"
        if any(b.queued_rows or b.running_rows for b in hosted.batchers.values()):
            return "no_spare_capacity"
        return ""

    async def _compare(
        self, hosted: HostedModel, request: InferenceRequest, result: InferenceResult, rerun: Rerun
    ) -> None:
        config = hosted.entry.config
        try:
            shadow = InferenceRequest(config.name, config.reference_variant, request.inputs)
            reference = await rerun(config.name, config.reference_variant, shadow)
            value = agreement(config, result.outputs, reference.outputs)
            self._recorder.record_shadow(config.name, result.variant, value)
        except Exception:  # a failed shadow must never surface anywhere but the log
            log.exception("shadow comparison for %s/%s failed", config.name, result.variant)
        finally:
            del self._running[config.name]

    async def close(self) -> None:
        """Wait for the comparisons in progress (they are short) so that none is cut off."""
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
