"""The data plane: one inference call, from its model's name to its recorded outcome.

A front end (the gRPC servicer; tests) calls `DataPlane.infer` with a `Call`: the model
and version asked for, the deadline, and the converters between its own wire format and
the internal types. The data plane then, in this order and each once:

1. resolves `(model, version)` to the `HostedModel` that serves the whole call (a reload
   meanwhile swaps the registry's entry, not this call's) — refusing first, UNAVAILABLE,
   while the server is not accepting (starting or draining);
2. reads the request's parameters (bounded by the front end) and its hints
   (`router.hints.parse_hints`: `slo_ms`, `min_quality`, `policy`, Triton's `priority` and
   `timeout`, the deadline — the earlier of the gRPC deadline and the `timeout`) — one
   rule, before any tensor is decoded;
3. admits or refuses it: a call that states an SLO and has already waited inside gRPC
   longer than the backlog estimate allows (`observe.backlog`) is refused UNAVAILABLE
   before its tensors are decoded;
4. decodes it against the model's config (the front end's converter);
5. decides the variant — the one named, or the router's choice — and refuses a call that
   states an SLO when the chosen variant has work ahead of it and is less than
   RouterConfig.admit_p_in_time likely to answer within that SLO (refusing costs a
   fraction of serving; see README: Failure modes);
6. submits it to the variant's batcher at its priority level, which runs the session (and
   answers it DEADLINE_EXCEEDED, or UNAVAILABLE "Request timeout expired" for a `timeout`,
   if its time ends while queued);
7. teaches the router, remembers a classifier's answer for Feedback, offers the answer to
   the shadow sampler, and encodes the answer (the front end's converter);
8. records the outcome once, in one `finally` (`observe.recorder`: Prometheus series and
   ModelStatistics).

The shadow sampler's comparisons run through `rerun` (no routing, no admission, not a call).

Nothing here knows gRPC or protobuf: front ends pass converters, and `outcome_of` names an
exception's status (transport.status). Thread: the event loop owns all of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from slimserve.repository.format import ModelConfig
from slimserve.router.hints import RequestHints, parse_hints
from slimserve.router.load import Clock
from slimserve.router.policy import Decision
from slimserve.server.core.batcher import RequestTimeoutError
from slimserve.server.core.registry import HostedModel, ModelRegistry
from slimserve.server.core.request import InferenceRequest, InferenceResult
from slimserve.server.core.shadow import ShadowSampler
from slimserve.server.errors import (
    DeadlineExceededError,
    InvalidInputError,
    OverloadedError,
    ShuttingDownError,
)
from slimserve.server.observe.activity import Activity
from slimserve.server.observe.backlog import GrpcBacklog
from slimserve.server.observe.feedback import Answer, RecentAnswers
from slimserve.server.observe.recorder import CallRecord, CallRecorder
from slimserve.server.observe.statistics import VariantStats

log = logging.getLogger(__name__)
Response = TypeVar("Response")
Response_co = TypeVar("Response_co", covariant=True)
Parameters = Mapping[str, bool | int | float | str]
CANCELLED = "CANCELLED"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"


class Call(Protocol[Response_co]):
    """What a front end hands the data plane for one inference call."""

    @property
    def model(self) -> str:
        """The model as the caller named it; InvalidInputError if the message could not be
        read at all."""
        ...

    @property
    def version(self) -> str:
        """A variant's name or Triton version number; empty: the router chooses."""
        ...

    @property
    def deadline_s(self) -> float | None:
        """When the caller stops waiting, on the data plane's clock; None: never."""
        ...

    def parameters(self) -> Parameters:
        """The request's id and parameters, checked for count and size (InvalidInputError)."""
        ...

    def decode(self, config: ModelConfig, parameters: Parameters) -> InferenceRequest:
        """The request's tensors, validated against the model's config; `parameters` are
        what `parameters()` returned."""
        ...

    def encode(self, request: InferenceRequest, result: InferenceResult, config: ModelConfig) -> Response_co:
        """The answer, in the front end's format."""
        ...

    def caller(self) -> str:
        """Who asks (transport.auth.caller_of), for Feedback; read only for requests with an id."""
        ...


@dataclass
class LocalCall:
    """A call from inside the server, already decoded (tests, tools): answers the result."""

    request: InferenceRequest
    deadline_s: float | None = None

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def version(self) -> str:
        return self.request.variant

    def parameters(self) -> Parameters:
        return self.request.parameters

    def decode(self, config: ModelConfig, parameters: Parameters) -> InferenceRequest:
        return self.request

    def encode(self, request: InferenceRequest, result: InferenceResult, config: ModelConfig) -> InferenceResult:
        return result

    def caller(self) -> str:
        return ""


@dataclass(frozen=True)
class Admission:
    """When the data plane refuses a call before it is decoded (module docstring, 3). The refusal
    after routing (5) is the router's decision (`RouterConfig.shed_late_on`, the same setting)."""

    shed_late: bool = True  # refuse calls that state an SLO and have already waited past it


class DataPlane:
    """Resolves, admits, routes, submits and records each inference call once (module docstring)."""

    def __init__(
        self,
        registry: ModelRegistry,
        recorder: CallRecorder,
        admission: Admission,
        backlog: GrpcBacklog,
        activity: Activity,
        shadow: ShadowSampler,
        answers: RecentAnswers,
        outcome_of: Callable[[BaseException], str],
        clock: Clock,
    ) -> None:
        self.registry = registry
        self._recorder = recorder
        self._admission = admission
        self._backlog = backlog
        self._activity = activity
        self._shadow = shadow
        self._answers = answers
        self._outcome_of = outcome_of
        self._clock = clock
        self.accepting = False  # open once warmed up; closed when draining (start_accepting/stop_accepting)
        self.cut_off = 0  # admitted calls cancelled while the server was draining (the grace ran out)

    def now(self) -> float:
        """The data plane's clock (monotonic seconds): front ends state deadlines on it."""
        return self._clock()

    def start_accepting(self) -> None:
        self.accepting = True

    def stop_accepting(self) -> None:
        self.accepting = False

    def model(self, name: str, version: str = "") -> HostedModel:
        """The model `name`, after checking that it has the variant `version` names (if any)."""
        hosted = self.registry.get(name)
        if version:
            hosted.variant(version)
        return hosted

    async def infer(self, call: Call[Response]) -> Response:
        """Serve one call (module docstring); every outcome is recorded once."""
        record = CallRecord(self._clock())
        hosted: HostedModel | None = None
        self._backlog.handling += 1
        self._activity.note_arrival(record.received_s)
        try:
            name = call.model
            hosted = self.registry.find(name)
            record.model = hosted.name if hosted is not None else ""
            if not self.accepting:
                raise ShuttingDownError("server is not accepting requests (starting or shutting down)")
            if hosted is None:
                raise self.registry.missing(name)
            pinned = hosted.variant(call.version) if call.version else ""
            record.variant = pinned
            parameters = call.parameters()
            hints = self._hints(hosted, parameters, call.deadline_s, record.received_s)
            record.slo_ms = hints.slo_ms
            self._shed_if_waited_too_long(hints)
            decoding_s = self._clock()
            request = call.decode(hosted.entry.config, parameters)
            record.decode_s = self._clock() - decoding_s
            if request.id:  # its answer is kept for Feedback, which only the same caller may give
                record.caller = call.caller()
            result = await self._serve(hosted, pinned, request, hints, call.deadline_s, record)
            encoding_s = self._clock()
            response = call.encode(request, result, hosted.entry.config)
            record.encode_s = self._clock() - encoding_s
            return response
        except asyncio.CancelledError:  # not an Exception: the front end cancels the call itself
            late = call.deadline_s is not None and self._clock() >= call.deadline_s
            record.code = DEADLINE_EXCEEDED if late else CANCELLED
            if not self.accepting and record.routed_s is not None:  # admitted, then cut off by the shutdown
                self.cut_off += 1
            raise
        except Exception as exc:
            record.code = self._outcome_of(exc)
            raise
        finally:
            self._backlog.handling -= 1
            self._backlog.handled += 1
            record.ended_s = self._clock()
            try:
                self._recorder.record(record, self._stats(hosted, record))
            except Exception:  # recording must never turn an answer (or its error) into another
                log.exception("recording the outcome of a call to %s failed", record.model or "an unknown model")

    @staticmethod
    def _stats(hosted: HostedModel | None, record: CallRecord) -> VariantStats | None:
        return hosted.stats.get(record.variant) if hosted is not None else None

    @staticmethod
    def _hints(
        hosted: HostedModel, parameters: Parameters, deadline_s: float | None, received_s: float
    ) -> RequestHints:
        remaining_ms = None if deadline_s is None else (deadline_s - received_s) * 1e3
        config = hosted.entry.config
        return parse_hints(
            parameters, remaining_ms, config.default_slo_ms, config.priority_levels, config.default_priority_level
        )

    def _shed_if_waited_too_long(self, hints: RequestHints) -> None:
        """Refuse, before any work, a call that has waited for its handler longer than the SLO
        its caller stated allows (`observe.backlog`: all of it, or a share while the queue stands)."""
        waited_ms = self._backlog.wait_ms
        if not self._admission.shed_late or waited_ms <= 0 or hints.slo_source == "model_default":
            return
        if waited_ms > self._backlog.wait_limit_ms(hints.slo_ms):
            raise OverloadedError(
                f"overloaded: calls wait about {waited_ms:.0f} ms for the server, too long for the "
                f"{hints.slo_ms:g} ms SLO; retry later or elsewhere"
            )

    def _shed_if_predicted_late(self, decision: Decision, hints: RequestHints) -> None:
        """Refuse the call the router's decision sheds (`router.policy.sheds`: it states an SLO,
        there is work ahead of it and its variant is less than RouterConfig.admit_p_in_time
        likely to answer within that SLO; a caller that stated no SLO waits its turn), with the
        probability Explain names, so that Explain says exactly what happens."""
        if decision.shed:  # RouterConfig.shed_late_on carries SLIMSERVE_SHED_LATE into the decision
            raise OverloadedError(decision.refusal(hints.slo_ms))

    async def _serve(
        self,
        hosted: HostedModel,
        pinned: str,
        request: InferenceRequest,
        hints: RequestHints,
        deadline_s: float | None,
        record: CallRecord,
    ) -> InferenceResult:
        """Decide, submit, learn: the part of a call that occupies a variant."""
        router = hosted.router
        rows = request.batch_size
        decision = router.pinned(pinned, rows, hints.priority, hints) if pinned else router.route(hints, rows)
        record.variant, record.reason, record.rows = decision.variant, decision.reason, rows
        record.routed_s = self._clock()
        stats = hosted.stats[decision.variant]
        batcher = hosted.batchers[decision.variant]
        stats.in_flight += 1
        try:
            self._shed_if_predicted_late(decision, hints)
            # The `timeout` counts from the call's arrival, as the remaining deadline does.
            timeout_at_s = None if hints.timeout_ms is None else record.received_s + hints.timeout_ms / 1e3
            due_s = record.received_s + hints.slo_ms / 1e3  # orders its batch in the model's turns
            result = await batcher.submit(request, deadline_s, hints.priority, timeout_at_s, due_s)
        except BaseException as exc:  # CancelledError too: the router learns how long it waited
            if isinstance(exc, asyncio.CancelledError | DeadlineExceededError | RequestTimeoutError):
                router.observe_timeout(decision, (self._clock() - record.received_s) * 1e3)
            else:
                router.observe_request(None)
            raise
        finally:
            stats.in_flight -= 1
        record.answered_s = self._clock()
        record.queue_ms, record.compute_ms = result.queue_ms, result.compute_ms
        router.observe_request(
            decision, (record.answered_s - record.received_s) * 1e3, result.queue_ms, result.compute_ms
        )
        result = replace(result, device=decision.device, predicted_ms=decision.predicted_ms, reason=decision.reason)
        config = hosted.entry.config
        if request.id and config.task == "classifier":
            top1 = result.outputs[config.outputs[0].name].argmax(axis=-1)
            answer = Answer(hosted.name, result.variant, tuple(int(c) for c in top1), record.caller)
            result = replace(result, feedback_ticket=self._answers.remember(request.id, answer))
        self._shadow.after_answer(hosted, request, result, self.rerun)
        return result

    async def rerun(self, model: str, variant: str, request: InferenceRequest) -> InferenceResult:
        """Run `request` again on `variant` of the model hosted now, outside any caller's call
        (the shadow sampler's comparisons): no routing, no admission, not recorded as a call."""
        hosted = self.registry.get(model)
        return await hosted.batchers[hosted.variant(variant)].submit(request, None)

    def feedback(
        self, model: str, labels: list[int], caller: str, *, request_id: str = "", ticket: str = ""
    ) -> tuple[Answer, int]:
        """Score a remembered classifier answer, named by its ticket or request id, with its
        true labels (observe.feedback)."""
        hosted = self.registry.get(model)
        if hosted.entry.config.task != "classifier":
            task = hosted.entry.config.task
            raise InvalidInputError(f"model '{model}' is {'an' if task == 'encoder' else 'a'} {task} model; "
                                    "feedback takes class labels of a classifier's answers")  # fmt: skip
        answer, correct = self._answers.score(hosted.name, labels, caller, request_id=request_id, ticket=ticket)
        self._recorder.record_feedback(answer, correct)
        return answer, correct
