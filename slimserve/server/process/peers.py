"""Model control under `--workers`: a load or unload that one worker receives reaches them all.

Each worker is a whole server with its own registry, and the kernel gives a connection to one
of them, so a RepositoryModelLoad or RepositoryModelUnload reaches one worker only. Here the
worker that receives it applies it, then passes it to every other worker over a loopback
port of theirs (the peer port), and answers OK only when every worker has applied it; a
worker that could not is named in the error, and the change holds on the others (as a failed
load leaves the old model serving on a single server).

- **Peer port**: each worker serves one method, `/slimserve.Peers/Apply` (a JSON body:
  `{"change": "load" | "unload", "model": name}`), on 127.0.0.1 with a port of its own,
  written as the fourth line of its port file. It takes only the token its supervisor drew
  for the run (`Settings.worker_scrape_token`), and applies the change to that worker alone.
- **Who is a peer**: the supervisor writes every worker's peer port to its scratch folder
  (`process.worker_state`) whenever a worker starts serving or dies; a worker reads it at
  each change, so a restarted worker is reached at its new port.
- **Restarts**: the scratch folder also holds the models unloaded by a call during this run
  (loading one again removes it). A worker that starts — a restart after a crash — leaves
  those out, so it agrees with the others.
- Concurrent changes of one model sent to different workers are applied in each worker's own
  order; send changes of one model from one client, one at a time.

Thread: the event loop owns all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import grpc

from slimserve.server.core.model_control import ModelControl
from slimserve.server.errors import ModelLoadError, NotFoundError
from slimserve.server.process.worker_state import read_peers, remember_unloaded
from slimserve.server.transport.auth import bearer_token
from slimserve.server.transport.status import status_for

log = logging.getLogger(__name__)

PEER_METHOD = "/slimserve.Peers/Apply"
PEER_CALL_TIMEOUT_S = 600.0  # a load opens, profiles and warms sessions: minutes on a busy machine
CHANGES = ("load", "unload")


class WorkerModelControl(ModelControl):
    """ModelControl whose load and unload reach every worker (module docstring)."""

    def __init__(self, *args: Any, index: int, scratch: Path, token: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._index = index
        self._scratch = scratch
        self._metadata = (("authorization", f"Bearer {token}"),)

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
        peers = {index: port for index, port in read_peers(self._scratch).items() if index != self._index}
        body = json.dumps({"change": change, "model": name}).encode()
        results = await asyncio.gather(*(self._apply(port, body) for port in peers.values()))
        failed = {index: why for index, why in zip(peers, results, strict=True) if why}
        if failed:
            done = sorted({self._index, *peers} - set(failed))
            reasons = "; ".join(f"worker {index}: {why}" for index, why in sorted(failed.items()))
            raise ModelLoadError(f"{change} of model '{name}' done on workers {done}, not on all: {reasons}")

    async def _apply(self, port: int, body: bytes) -> str:
        """'' when the peer applied the change, else why not."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                await channel.unary_unary(PEER_METHOD)(body, timeout=PEER_CALL_TIMEOUT_S, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                return f"{exc.code().name}: {exc.details()}"
        return ""


class PeerPort:
    """A worker's peer port: `/slimserve.Peers/Apply` for its siblings, on loopback."""

    def __init__(self, control: WorkerModelControl, token: str) -> None:
        self._control = control
        self._token = token.encode()
        self.server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self._apply)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("slimserve.Peers", {"Apply": handler}),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _apply(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        presented = bearer_token(context.invocation_metadata()) or ""
        if not hmac.compare_digest(presented.encode(), self._token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the peer port answers this run's workers only")
        try:
            request = json.loads(body)
            change, name = request["change"], request["model"]
            if change not in CHANGES or not isinstance(name, str):
                raise ValueError(change)
        except (ValueError, KeyError, TypeError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a change: {exc}")
        try:
            if change == "load":
                await self._control.load_here(name)
            else:
                with contextlib.suppress(NotFoundError):  # not hosted here: as good as unloaded
                    await self._control.unload_here(name)
        except Exception as exc:  # the sibling names it in its error; this worker serves on
            code, message = status_for(exc)
            await context.abort(code, message)
        return b""
