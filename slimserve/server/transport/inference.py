"""gRPC servicers: convert, call the host, convert back. Errors map to codes in one place."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from slimserve.protos import inference_pb2 as pb
from slimserve.protos import inference_pb2_grpc
from slimserve.server.core.errors import InvalidInputError, OverloadedError, ShuttingDownError, status_for
from slimserve.server.core.model_control import ModelControl
from slimserve.server.core.registry import HostedModel, ModelHost
from slimserve.server.core.request import CallRecord
from slimserve.server.observe.activity import Activity
from slimserve.server.observe.backlog import GrpcBacklog
from slimserve.server.observe.metrics import UNKNOWN, ServingMetrics
from slimserve.server.transport.auth import caller_of
from slimserve.server.transport.codec import MalformedRequest, decode_request, encode_response, parse_infer_request
from slimserve.server.transport.parameters import stated_slo_ms
from slimserve.server.transport.triton_config import PLATFORM, triton_model_config

log = logging.getLogger(__name__)
SERVER_NAME = "slimserve"
SERVER_VERSION = "0.1.0"

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def maps_errors(handler: Handler) -> Handler:
    """Turn domain errors into status codes; anything unexpected into a generic INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except Exception as exc:
            code, message = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("unexpected error in %s", handler.__name__)
            await context.abort(code, message)

    return wrapper  # type: ignore[return-value]


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Open Inference Protocol v2 over the hosted models."""

    def __init__(
        self,
        host: ModelHost,
        metrics: ServingMetrics | None = None,
        backlog: GrpcBacklog | None = None,
        shed_late: bool = True,
        control: ModelControl | None = None,
        activity: Activity | None = None,
    ) -> None:
        self._host = host
        self._activity = activity or Activity()
        self._control = control
        self._metrics = metrics
        self._backlog = backlog or GrpcBacklog(None)
        self._shed_late = shed_late
        self.accepting = False  # set once warmed up; cleared when draining
        self.cut_off = 0  # admitted calls cancelled while the server was draining (the grace ran out)

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.accepting)

    def _hosted(self, name: str, version: str) -> HostedModel:
        """The model `name`, after checking that it serves `version` (NOT_FOUND if not); empty: any."""
        return self._host.resolve(name, version)[0] if version else self._host.model(name)

    @maps_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        hosted = self._hosted(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.accepting and hosted.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["statistics"])

    @maps_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        hosted = self._hosted(request.name, request.version)
        config = hosted.entry.config
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=config.name,
            versions=list(hosted.batchers),
            platform=PLATFORM,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in config.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in config.outputs],
        )

    @maps_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        hosted = self._hosted(request.name, request.version)
        return pb.ModelConfigResponse(config=triton_model_config(hosted.entry, list(hosted.batchers)))

    @maps_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        call = CallRecord(UNKNOWN if isinstance(request, MalformedRequest) else request.model_name, time.monotonic())
        remaining = context.time_remaining()
        deadline_s = None if remaining is None else call.received_s + remaining
        self._backlog.handling += 1
        self._activity.note_arrival(call.received_s)
        try:
            if isinstance(request, MalformedRequest):
                raise InvalidInputError(f"the message is not a ModelInferRequest: {request.reason}")
            if not self.accepting:
                raise ShuttingDownError("server is not accepting requests (starting or shutting down)")
            self._shed_if_waited_too_long(request, remaining)
            # Resolve first: an unknown model or variant is NOT_FOUND whatever the tensors say.
            hosted, _ = self._host.resolve(request.model_name, request.model_version)
            decoding_ns = time.monotonic_ns()
            decoded = decode_request(request, hosted.entry.config)
            decoded_ns = time.monotonic_ns()
            if decoded.id:  # its answer is kept for Feedback, which only the same caller may give
                call.caller = caller_of(context.invocation_metadata())
            result = await self._host.infer(decoded, deadline_s, call)
            encoding_ns = time.monotonic_ns()
            response = encode_response(decoded, result, hosted.entry.config)
            stats = hosted.stats.get(result.variant)
            if stats is not None:  # gone only if the model was reloaded without it meanwhile
                stats.compute_input_ns += decoded_ns - decoding_ns
                stats.compute_output_ns += time.monotonic_ns() - encoding_ns
            return response
        except asyncio.CancelledError:  # not an Exception: gRPC cancels the handler itself
            late = deadline_s is not None and time.monotonic() >= deadline_s
            call.code = grpc.StatusCode.DEADLINE_EXCEEDED.name if late else grpc.StatusCode.CANCELLED.name
            if not self.accepting and call.variant:  # admitted, then cut off by the shutdown
                self.cut_off += 1
            raise
        except Exception as exc:
            call.code = status_for(exc)[0].name
            raise
        finally:
            self._backlog.handling -= 1
            self._backlog.handled += 1
            if self._metrics is not None:
                self._count(self._metrics, call, "" if isinstance(request, MalformedRequest) else request.model_version)

    def _shed_if_waited_too_long(self, request: pb.ModelInferRequest, remaining_s: float | None) -> None:
        """Refuse, before any work, a call that has waited for its handler longer than the SLO
        its caller stated allows (`server.backlog`: all of it, or a share while the queue stands)."""
        waited_ms = self._backlog.wait_ms
        if not self._shed_late or waited_ms <= 0:
            return
        slo_ms = stated_slo_ms(request, remaining_s)
        if slo_ms is not None and waited_ms > self._backlog.wait_limit_ms(slo_ms):
            raise OverloadedError(
                f"overloaded: calls wait about {waited_ms:.0f} ms for the server, too long for the "
                f"{slo_ms:g} ms SLO; retry later or elsewhere"
            )

    def _count(self, metrics: ServingMetrics, call: CallRecord, asked_variant: str) -> None:
        """One call, counted once. Label values come from the repository, never the caller."""
        hosted = self._host.models.get(call.model)
        model = call.model if hosted else UNKNOWN
        variant = call.variant or UNKNOWN
        if variant == UNKNOWN and hosted and asked_variant in hosted.batchers:
            variant = asked_variant
        if call.code == "OK":
            series = metrics.series(model, variant)
            series.requests_ok.inc()
            series.request_seconds.observe(time.monotonic() - call.received_s)
        else:
            metrics.requests.labels(model, variant, call.code).inc()

    @maps_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        names = [request.name] if request.name else list(self._host.models)
        response = pb.ModelStatisticsResponse()
        for name in names:
            hosted = self._host.model(name)
            variants = [self._host.resolve(name, request.version)[1]] if request.version else list(hosted.batchers)
            for variant in variants:
                stats = hosted.stats[variant]
                executions = hosted.batchers[variant].executions
                duration = pb.StatisticDuration
                response.model_stats.add(
                    name=name,
                    version=request.version or variant,  # as asked: Triton's clients look their version up
                    last_inference=stats.last_inference_ms,
                    inference_count=stats.inference_count,
                    execution_count=sum(executions.values()),
                    inference_stats=pb.InferStatistics(
                        success=duration(count=stats.success_count, ns=stats.success_ns),
                        fail=duration(count=stats.fail_count, ns=stats.fail_ns),
                        queue=duration(count=stats.success_count, ns=stats.queue_ns),
                        compute_input=duration(count=stats.success_count, ns=stats.compute_input_ns),
                        compute_infer=duration(count=stats.success_count, ns=stats.compute_ns),
                        compute_output=duration(count=stats.success_count, ns=stats.compute_output_ns),
                    ),
                    batch_stats=[
                        pb.InferBatchStatistics(batch_size=size, compute_infer=duration(count=count))
                        for size, count in sorted(executions.items())
                    ],
                )
        return response

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex

        def state(batcher_failed: bool) -> str:
            return "READY" if self.accepting and not batcher_failed else "UNAVAILABLE"

        models = [
            index(name=name, version=variant, state=state(batcher.failed))
            for name, hosted in self._host.models.items()
            for variant, batcher in hosted.batchers.items()
        ]
        if self._control is not None:  # models whose last load failed, with why (Triton lists them too)
            models += [
                index(name=name, state="UNAVAILABLE", reason=reason)
                for name, reason in self._control.reasons.items()
                if name not in self._host.models
            ]
        return pb.RepositoryIndexResponse(models=models)

    @maps_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await self._model_control(request).load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @maps_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self._model_control(request).unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _model_control(self, request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest) -> ModelControl:
        if self._control is None:
            raise InvalidInputError("model control is not available on this server")
        if request.repository_name:
            raise InvalidInputError(
                f"repository_name must be empty: this server serves one repository ({self._control.repository})"
            )
        # tritonclient's unload_model always sends unload_dependents; slimserve models have none.
        unsupported = sorted(set(request.parameters) - {"unload_dependents"})
        if unsupported:
            raise InvalidInputError(
                f"load/unload parameters are not supported ({unsupported}): put the files into the repository "
                "folder and load the model by name"
            )
        return self._control


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register the inference service as the generated code does, except that ModelInfer's
    request is parsed by `parse_infer_request`, so that bytes which are not a request get
    INVALID_ARGUMENT rather than gRPC's INTERNAL for a deserializer that raised."""

    class _Capture:
        def __init__(self) -> None:
            self.handlers: dict[str, grpc.RpcMethodHandler] = {}

        def add_generic_rpc_handlers(self, _: object) -> None:
            pass

        def add_registered_method_handlers(self, _: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
            self.handlers = dict(handlers)

    capture = _Capture()
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, capture)  # type: ignore[arg-type]
    handlers = capture.handlers
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        servicer.ModelInfer,
        request_deserializer=parse_infer_request,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
