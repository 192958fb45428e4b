"""Under `--workers`, the workers act as one server: model changes, Feedback and statistics.

Each worker is a whole server with its own registry, answers and counts, and the kernel gives
a connection to one of them. So:

- **Model changes**: the worker that receives RepositoryModelLoad or RepositoryModelUnload
  applies it, then passes it to every other worker, and answers OK only when every worker has
  applied it; a worker that could not is named in the error, and the change holds on the
  others (as a failed load leaves the old model serving on a single server).
- **Feedback**: an answer is held by the worker that gave it, and its ticket names that worker
  (`w<index>.…`, observe.feedback); the worker that receives Feedback for another's ticket
  passes it there. One named by request id (callers with tokens) is looked up here, then on
  each other worker in turn.
- **ModelStatistics**: the receiving worker adds every other worker's counts to its own
  (transport.model_statistics); a worker that cannot answer (restarting) is left out, and
  said so in the log.

- **Peer port**: each worker serves `/slimserve.Peers/Apply`, `/Feedback` and `/Statistics`
  (JSON bodies; Statistics takes and answers the protobuf messages) on 127.0.0.1 with a port
  of its own, written as the fourth line of its port file. It takes only the token its
  supervisor drew for the run (`Settings.worker_scrape_token`), and acts on that worker alone.
- **Who is a peer**: the supervisor writes every worker's peer port to its scratch folder
  (`process.worker_state`) whenever a worker starts serving or dies; a worker reads it at
  each call, so a restarted worker is reached at its new port.
- **Restarts**: the scratch folder also holds the models unloaded by a call during this run
  (loading one again removes it). A worker that starts — a restart after a crash — leaves
  those out, so it agrees with the others. A restarted worker starts with no answers and no
  counts, as a restarted single server does.
- Concurrent changes of one model sent to different workers are applied in each worker's own
  order; send changes of one model from one client, one at a time.

Thread: the event loop owns all of it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from slimserve.protos import inference_pb2 as pb
from slimserve.server.core.data_plane import DataPlane
from slimserve.server.core.model_control import ModelControl, held_signature
from slimserve.server.errors import (
    InvalidInputError,
    ModelLoadError,
    NotFoundError,
    PeerUnavailableError,
    ServingError,
)
from slimserve.server.observe.feedback import Answer, ticket_holder
from slimserve.server.process.worker_state import read_peers, remember_unloaded, unloaded_models
from slimserve.server.transport.auth import bearer_token
from slimserve.server.transport.model_statistics import model_statistics
from slimserve.server.transport.status import status_for

log = logging.getLogger(__name__)

PEER_SERVICE = "slimserve.Peers"
PEER_CALL_TIMEOUT_S = 600.0  # a load opens, profiles and warms sessions: minutes on a busy machine
PEER_QUERY_TIMEOUT_S = 10.0  # Feedback and statistics: a worker that takes longer is left out
CHANGES = ("load", "unload")
# A peer's refusal, raised here as the domain error that gives the caller the same code.
_ERRORS = {grpc.StatusCode.NOT_FOUND: NotFoundError, grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError}


def ticket_prefix(index: int) -> str:
    """What a worker's Feedback tickets start with (observe.feedback)."""
    return f"w{index}"


class Peers:
    """The other workers of this run, reached over their peer ports (module docstring)."""

    def __init__(self, index: int, scratch: Path, token: str) -> None:
        self.index = index
        self._scratch = scratch
        self._metadata = (("authorization", f"Bearer {token}"),)

    def ports(self) -> dict[int, int]:
        """Every other serving worker's peer port, by worker index, read now."""
        return {index: port for index, port in sorted(read_peers(self._scratch).items()) if index != self.index}

    async def call(self, port: int, method: str, body: bytes, timeout_s: float) -> bytes:
        """One peer method; grpc.aio.AioRpcError when the peer refuses or cannot be reached."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer: bytes = await channel.unary_unary(f"/{PEER_SERVICE}/{method}")(
                body, timeout=timeout_s, metadata=self._metadata
            )
            return answer


class WorkerModelControl(ModelControl):
    """ModelControl whose load and unload reach every worker (module docstring)."""

    def __init__(self, *args: Any, peers: Peers, scratch: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peers = peers
        self._scratch = scratch
        for name in unloaded_models(scratch):  # a restarted worker's poller agrees with the others
            self.hold(name, held_signature(self.repository / name))  # before serving: read here

    async def load(self, name: str) -> str:
        summary = await self.load_here(name)
        remember_unloaded(self._scratch, name, False)
        await self._on_every_peer("load", name)
        return summary

    async def unload(self, name: str) -> str:
        summary = await self.unload_here(name)
        remember_unloaded(self._scratch, name, True)
        await self._on_every_peer("unload", name)
        return summary

    async def _on_every_peer(self, change: str, name: str) -> None:
        peers = self._peers.ports()
        body = json.dumps({"change": change, "model": name}).encode()
        results = await asyncio.gather(*(self._apply(port, body) for port in peers.values()))
        failed = {index: why for index, why in zip(peers, results, strict=True) if why}
        if failed:
            done = sorted({self._peers.index, *peers} - set(failed))
            reasons = "; ".join(f"worker {index}: {why}" for index, why in sorted(failed.items()))
            raise ModelLoadError(f"{change} of model '{name}' done on workers {done}, not on all: {reasons}")

    async def _apply(self, port: int, body: bytes) -> str:
        """'' when the peer applied the change, else why not."""
        try:
            await self._peers.call(port, "Apply", body, PEER_CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return ""


class WorkerFeedback:
    """Feedback scored by the worker that holds the answer (module docstring)."""

    def __init__(self, plane: DataPlane, peers: Peers) -> None:
        self._plane = plane
        self._peers = peers

    async def __call__(
        self, model: str, labels: list[int], caller: str, request_id: str, ticket: str
    ) -> tuple[Answer, int]:
        holder = ticket_holder(ticket) if ticket else ticket_prefix(self._peers.index)
        if holder != ticket_prefix(self._peers.index):
            port = {ticket_prefix(index): port for index, port in self._peers.ports().items()}.get(holder)
            if port is None:  # not a worker's ticket, or its worker is gone (with its answers)
                return self._score_here(model, labels, caller, request_id, ticket)
            return await self._score_on(port, holder, model, labels, caller, request_id, ticket)
        try:
            return self._score_here(model, labels, caller, request_id, ticket)
        except NotFoundError as not_here:
            if ticket:
                raise
            missing: ServingError = not_here
        for index, port in self._peers.ports().items():  # an id: whichever worker answered it
            try:
                return await self._score_on(port, f"worker {index}", model, labels, caller, request_id, "")
            except NotFoundError:
                continue
            except PeerUnavailableError as unreachable:  # it may hold the answer: say so, not "unknown"
                missing = unreachable
        raise missing

    def _score_here(
        self, model: str, labels: list[int], caller: str, request_id: str, ticket: str
    ) -> tuple[Answer, int]:
        return self._plane.feedback(model, labels, caller, request_id=request_id, ticket=ticket)

    async def _score_on(
        self, port: int, holder: str, model: str, labels: list[int], caller: str, request_id: str, ticket: str
    ) -> tuple[Answer, int]:
        body = json.dumps({"model": model, "labels": labels, "caller": caller, "request_id": request_id,
                           "ticket": ticket}).encode()  # fmt: skip
        try:
            answer = json.loads(await self._peers.call(port, "Feedback", body, PEER_QUERY_TIMEOUT_S))
        except grpc.aio.AioRpcError as exc:
            error = _ERRORS.get(exc.code())
            if error is not None:
                raise error(exc.details() or "") from None
            raise PeerUnavailableError(
                f"the worker holding this answer ({holder}) did not answer: {exc.code().name}; retry"
            ) from None
        predicted = tuple(int(c) for c in answer["predicted"])
        return Answer(model, str(answer["variant"]), predicted, caller), int(answer["correct"])


class PeerStatistics:
    """The other workers' ModelStatistics answers (module docstring)."""

    def __init__(self, peers: Peers) -> None:
        self._peers = peers

    async def __call__(self, name: str, version: str) -> list[pb.ModelStatisticsResponse]:
        body = pb.ModelStatisticsRequest(name=name, version=version).SerializeToString()
        ports = self._peers.ports()
        answers = await asyncio.gather(
            *(self._peers.call(port, "Statistics", body, PEER_QUERY_TIMEOUT_S) for port in ports.values()),
            return_exceptions=True,
        )
        responses = []
        for index, answer in zip(ports, answers, strict=True):
            if isinstance(answer, bytes):
                responses.append(pb.ModelStatisticsResponse.FromString(answer))
            elif isinstance(answer, grpc.aio.AioRpcError) and answer.code() == grpc.StatusCode.NOT_FOUND:
                continue  # it does not host the model (a load that failed there): nothing to add
            else:
                log.warning("ModelStatistics leaves out worker %d, which did not answer: %s", index, answer)
        return responses


class PeerPort:
    """A worker's peer port: Apply, Feedback and Statistics for its siblings, on loopback."""

    def __init__(self, control: WorkerModelControl, plane: DataPlane, token: str) -> None:
        self._control = control
        self._plane = plane
        self._token = token.encode()
        self.server = grpc.aio.server()
        methods: dict[str, Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]] = {
            "Apply": self._apply, "Feedback": self._feedback, "Statistics": self._statistics,
        }  # fmt: skip
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(self._checked(method)) for name, method in methods.items()
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(PEER_SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _checked(
        self, method: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        """`method` for this run's workers only; a domain error becomes its status code."""

        async def checked(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            presented = bearer_token(context.invocation_metadata()) or ""
            if not hmac.compare_digest(presented.encode(), self._token):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the peer port answers this run's workers only")
            try:
                return await method(body, context)
            except Exception as exc:  # the sibling passes the code on; this worker serves on
                code, message = status_for(exc)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("peer call failed")
                await context.abort(code, message)
                raise  # abort raises; for the type checker

        return checked

    async def _apply(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            request = json.loads(body)
            change, name = request["change"], request["model"]
            if change not in CHANGES or not isinstance(name, str):
                raise ValueError(change)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"not a change: {exc}") from None
        if change == "load":
            await self._control.load_here(name)
        else:
            try:
                await self._control.unload_here(name)
            except NotFoundError:  # not hosted here: as good as unloaded, and held so (its poller)
                await self._control.hold_unloaded(name)
        return b""

    async def _feedback(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            request = json.loads(body)
            model, labels, caller = (
                str(request["model"]),
                [int(label) for label in request["labels"]],
                str(request["caller"]),
            )
            request_id, ticket = str(request["request_id"]), str(request["ticket"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"not a Feedback: {exc}") from None
        answer, correct = self._plane.feedback(model, labels, caller, request_id=request_id, ticket=ticket)
        return json.dumps({"variant": answer.variant, "predicted": list(answer.predicted), "correct": correct}).encode()

    async def _statistics(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = pb.ModelStatisticsRequest.FromString(body)
        return model_statistics(self._plane.registry, request.name, request.version).SerializeToString()
