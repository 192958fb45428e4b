"""Triton's gRPC inference service (Open Inference Protocol v2): convert, call the data
plane, convert back. Errors map to codes in one place (`transport.status`).

ModelStatistics spells versions as Triton does, as integers (`transport.model_statistics`,
which also sums the workers' counts under `--workers`).

A model or version name longer than any name can be (`format.MAX_NAME_CHARS`) is refused
here, quoted short, before it is looked up: no message further on quotes a megabyte name.

ModelStreamInfer serves each request of its stream through the same `_infer` as ModelInfer
(`transport.stream` moves the messages). ServerMetadata lists the Triton extensions whose
calls are here: `model_configuration` (ModelConfig), `model_repository` (RepositoryIndex,
RepositoryModelLoad, RepositoryModelUnload; a load's `config` override is refused),
`parameters` (request parameters are read, unknown ones left alone), `statistics` and
`system_shared_memory` (SystemSharedMemoryRegister, Status, Unregister: `transport.shared_memory`;
a request names the caller's regions in its tensors' parameters, and is served through the data
plane like any other: the codec reads inputs from the regions and writes outputs into them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from slimserve.protos import inference_pb2 as pb
from slimserve.protos import inference_pb2_grpc
from slimserve.repository.format import MAX_NAME_CHARS, ModelConfig
from slimserve.server.core.data_plane import DataPlane, Parameters
from slimserve.server.core.model_control import ModelControl
from slimserve.server.core.request import InferenceRequest, InferenceResult
from slimserve.server.errors import InvalidInputError, listed, shown
from slimserve.server.transport.auth import caller_of
from slimserve.server.transport.codec import (
    MalformedRequest,
    decode_request,
    encode_response,
    output_slots,
    parse_infer_request,
    read_parameters,
)
from slimserve.server.transport.model_statistics import merge_statistics, model_statistics
from slimserve.server.transport.shared_memory import CallerRegions, SharedMemory, Slot
from slimserve.server.transport.status import maps_errors
from slimserve.server.transport.stream import serve_stream
from slimserve.server.transport.triton_config import PLATFORM, triton_model_config

# (model, version) → the other workers' ModelStatistics answers (process.peers)
PeerStatistics = Callable[[str, str], Awaitable[list[pb.ModelStatisticsResponse]]]

SERVER_NAME = "slimserve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("model_configuration", "model_repository", "parameters", "statistics", "system_shared_memory")


def named(name: str, what: str = "model") -> str:
    """`name` as the caller sent it, if a model or variant (or version number) could be
    called that; InvalidInputError quoting it short otherwise (module docstring)."""
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInputError(f"{what} name {shown(name)} is too long: at most {MAX_NAME_CHARS} characters")
    return name


@dataclass
class OipCall:
    """One ModelInfer call as the data plane sees it (`core.data_plane.Call`). `memory` is the
    caller's shared memory regions; `decode` keeps where the requested outputs go in them for
    `encode`."""

    message: pb.ModelInferRequest | MalformedRequest
    context: grpc.aio.ServicerContext
    deadline_s: float | None
    memory: CallerRegions
    _slots: dict[str, Slot] = field(default_factory=dict)

    @property
    def model(self) -> str:
        if isinstance(self.message, MalformedRequest):
            raise InvalidInputError(f"the message is not a ModelInferRequest: {self.message.reason}")
        return named(self.message.model_name)

    @property
    def version(self) -> str:
        return "" if isinstance(self.message, MalformedRequest) else named(self.message.model_version, "version")

    def parameters(self) -> Parameters:
        assert not isinstance(self.message, MalformedRequest)  # `model` refused it
        return read_parameters(self.message)

    def decode(self, config: ModelConfig, parameters: Parameters) -> InferenceRequest:
        assert not isinstance(self.message, MalformedRequest)  # `model` refused it
        request = decode_request(self.message, config, parameters, self.memory)
        self._slots = output_slots(self.message, self.memory)  # checked now, before the model runs
        return request

    def encode(self, request: InferenceRequest, result: InferenceResult, config: ModelConfig) -> pb.ModelInferResponse:
        return encode_response(request, result, config, self._slots)

    def caller(self) -> str:
        return caller_of(self.context.invocation_metadata())


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Open Inference Protocol v2 over the data plane; model control and the shared memory
    regions beside it."""

    def __init__(
        self, plane: DataPlane, control: ModelControl, memory: SharedMemory,
        peer_statistics: PeerStatistics | None = None,
    ) -> None:  # fmt: skip
        """`peer_statistics`: the other workers' ModelStatistics answers, under `--workers`."""
        self._plane = plane
        self._control = control
        self._memory = memory
        self._peer_statistics = peer_statistics

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.accepting)

    @maps_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        hosted = self._plane.model(named(request.name), named(request.version, "version"))
        return pb.ModelReadyResponse(ready=self._plane.accepting and hosted.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    @maps_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        hosted = self._plane.model(named(request.name), named(request.version, "version"))
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
        hosted = self._plane.model(named(request.name), named(request.version, "version"))
        return pb.ModelConfigResponse(config=triton_model_config(hosted.entry, list(hosted.batchers)))

    @maps_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return await self._infer(request, context)

    @maps_errors
    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest | MalformedRequest], context: grpc.aio.ServicerContext
    ) -> None:
        await serve_stream(requests, context, lambda request: self._infer(request, context))

    async def _infer(
        self, request: pb.ModelInferRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """One request through the data plane; its deadline is the call's (a stream's, for
        each request in it)."""
        remaining_s = context.time_remaining()
        deadline_s = None if remaining_s is None else self._plane.now() + remaining_s
        memory = self._memory.of(context.invocation_metadata())
        return await self._plane.infer(OipCall(request, context, deadline_s, memory))

    @maps_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        owner = self._memory.owner(context.invocation_metadata())
        self._memory.register(owner, request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @maps_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        regions = self._memory.status(self._memory.owner(context.invocation_metadata()), request.name)
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        return pb.SystemSharedMemoryStatusResponse(
            regions={r.name: status(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size) for r in regions}
        )

    @maps_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._memory.unregister(self._memory.owner(context.invocation_metadata()), request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @maps_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        name, asked = named(request.name), named(request.version, "version")
        response = model_statistics(self._plane.registry, name, asked)
        if self._peer_statistics is not None:  # under --workers: every worker's calls (transport.model_statistics)
            merge_statistics(response, await self._peer_statistics(name, asked))
        return response

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        accepting = self._plane.accepting
        hosted = self._plane.registry.models
        models = [
            index(name=name, version=variant, state="READY" if accepting and not batcher.failed else "UNAVAILABLE")
            for name, model in hosted.items()
            for variant, batcher in model.batchers.items()
        ]
        # Models whose last load failed, with why (Triton lists them too).
        models += [
            index(name=name, state="UNAVAILABLE", reason=reason)
            for name, reason in self._control.reasons.items()
            if name not in hosted
        ]
        return pb.RepositoryIndexResponse(models=models)

    @maps_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        self._check_model_control(request)
        await self._control.load(named(request.model_name))
        return pb.RepositoryModelLoadResponse()

    @maps_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        self._check_model_control(request)
        await self._control.unload(named(request.model_name))
        return pb.RepositoryModelUnloadResponse()

    def _check_model_control(self, request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest) -> None:
        if request.repository_name:
            raise InvalidInputError(
                f"repository_name must be empty: this server serves one repository ({self._control.repository})"
            )
        # tritonclient's unload_model always sends unload_dependents; slimserve models have none.
        unsupported = sorted(set(request.parameters) - {"unload_dependents"})
        if unsupported:
            raise InvalidInputError(
                f"load/unload parameters are not supported ({listed(unsupported)}): put the files into the "
                "repository folder and load the model by name"
            )


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register the inference service as the generated code does, except that ModelInfer's
    and ModelStreamInfer's requests are parsed by `parse_infer_request`, so that bytes which
    are not a request get INVALID_ARGUMENT (in a stream, that request's `error_message`)
    rather than gRPC's INTERNAL for a deserializer that raised, which ends a whole stream."""

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
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer,
        request_deserializer=parse_infer_request,
        response_serializer=pb.ModelStreamInferResponse.SerializeToString,
    )
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
