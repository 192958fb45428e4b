"""The one writer of what the serving path observes: Prometheus series and ModelStatistics.

The data plane hands every finished call (`CallRecord`) here once, from one `finally`;
the batchers report every session call (`record_batch`); the shadow sampler and Feedback
report theirs. Nothing else on the serving path writes a Prometheus series or a
ModelStatistics count, so what a series means is read in one file. (Two live figures are
not records and stay with their owners: the data plane's `in_flight` count per variant and
each batcher's `executions` by batch size, which ModelStatistics also reads.) Label values
come from the repository, never the caller (an unresolved model or an undecided variant
counts as "unknown").

Thread: the event loop. The Prometheus client's own locks make the series safe to scrape.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from slimserve.repository.format import ModelEntry
from slimserve.server.observe.feedback import Answer
from slimserve.server.observe.metrics import UNKNOWN, ServingMetrics
from slimserve.server.observe.statistics import VariantStats

NS_PER_S = 1_000_000_000


@dataclass
class CallRecord:
    """How one inference call went, filled in by the data plane along the way and recorded
    once, at its end (`observe.recorder`). Label values come from the repository, never the
    caller: `model` is empty until the model is resolved. Times are the data plane's clock (s)."""

    received_s: float
    model: str = ""  # the hosted model's name, once resolved
    variant: str = ""  # the variant chosen or named, once decided
    reason: str = ""  # why that variant (router.policy.REASONS), once decided
    code: str = "OK"  # the outcome: a status code name, CANCELLED and DEADLINE_EXCEEDED included
    caller: str = ""  # who asked, for Feedback (transport.auth.caller_of); only for requests with an id
    slo_ms: float = 0.0  # the SLO the call is judged by (stated, or the model's default)
    rows: int = 0
    decode_s: float = 0.0  # converting the request's tensors
    encode_s: float = 0.0  # converting the answer
    routed_s: float | None = None  # the variant was decided; the call goes to its batcher
    answered_s: float | None = None  # the batcher's result arrived
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    ended_s: float = 0.0


class CallRecorder:
    """Records calls, batches, shadow comparisons and feedback (module docstring)."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics

    def describe(self, models: Mapping[str, ModelEntry]) -> None:
        """Static facts of newly hosted models; their counters start at 0."""
        self.metrics.describe_repository(dict(models))

    def record(self, call: CallRecord, stats: VariantStats | None) -> None:
        """One inference call, once. `stats`: the decided variant's, if a variant was decided."""
        metrics = self.metrics
        series = metrics.series(call.model, call.variant) if call.model and call.variant else None
        if call.code == "OK" and series is not None:  # an answer always has its variant
            series.requests_ok.inc()
            series.request_seconds.observe(call.ended_s - call.received_s)
        else:
            labels = (call.model, call.variant) if series is not None else (call.model or UNKNOWN, UNKNOWN)
            metrics.requests.labels(*labels, call.code).inc()
        if series is None or call.routed_s is None:
            return  # refused before it was routed: no variant to charge
        series.routed(call.reason).inc()
        if call.answered_s is None:  # shed, failed, timed out or cancelled: no answer within the SLO
            series.slo_missed.inc()
            if stats is not None:
                stats.fail_count += 1
                stats.fail_ns += int((call.ended_s - call.routed_s) * NS_PER_S)
            return
        series.queue_seconds.observe(call.queue_ms / 1e3)
        elapsed_ms = (call.answered_s - call.received_s) * 1e3
        (series.slo_met if elapsed_ms <= call.slo_ms else series.slo_missed).inc()
        if stats is not None:
            stats.success_count += 1
            stats.success_ns += int((call.answered_s - call.routed_s) * NS_PER_S)
            stats.queue_ns += int(call.queue_ms * 1e6)
            stats.compute_ns += int(call.compute_ms * 1e6)
            stats.compute_input_ns += int(call.decode_s * NS_PER_S)
            stats.compute_output_ns += int(call.encode_s * NS_PER_S)
            stats.inference_count += call.rows
            stats.last_inference_ms = int(time.time() * 1000)  # a timestamp for people: wall clock

    def record_batch(self, model: str, variant: str, rows: int, compute_ms: float) -> None:
        """One session call of a variant (`rows` merged rows)."""
        series = self.metrics.series(model, variant)
        series.compute_seconds.observe(compute_ms / 1e3)
        series.batch_size.observe(rows)

    def record_shadow(self, model: str, variant: str, agreement: float) -> None:
        """One shadow comparison of `variant` with the reference: agreement in [0, 1]."""
        self.metrics.shadow_comparisons.labels(model, variant).inc()
        self.metrics.shadow_agreement.labels(model, variant).inc(agreement)

    def record_shadow_skipped(self, model: str, reason: str) -> None:
        self.metrics.shadow_skipped.labels(model, reason).inc()

    def record_feedback(self, answer: Answer, correct: int) -> None:
        """True labels for one remembered answer: `correct` of its rows were right."""
        wrong = len(answer.predicted) - correct
        self.metrics.feedback.labels(answer.model, answer.variant, "correct").inc(correct)
        self.metrics.feedback.labels(answer.model, answer.variant, "incorrect").inc(wrong)
