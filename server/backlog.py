"""How long a call waited before its handler started — which no handler can see.

grpc.aio takes every call the core receives and makes it a task on the event loop. Under
overload those tasks queue behind each other (first in, first out) before their handler
runs: measured at 3× capacity, about a thousand of them, 0.7 s of waiting, while the
handlers saw an empty batcher queue. gRPC's channelz counts every call when the core hands
it to the application and when it ends, so

    backlog = calls started − calls ended − calls inside our handlers

and the wait of a call taken now is about backlog × the time the server spends per call
(measured between samples while there is a backlog). The servicer refuses a call at once,
before decoding it, when that wait has used up more than WAIT_SHARE of the SLO the caller
stated: refusing costs a fraction of serving, so the backlog drains and the calls that are
taken can still make their SLO.

Sampling reads channelz (~0.3 ms on a 2-core AMD EPYC) every SAMPLE_S, and only while calls
are in flight, so an idle server does not poll. Thread: owned by the event loop.
"""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger(__name__)

SAMPLE_S = 0.02
WAIT_SHARE = 0.3  # a call that has waited this share of its SLO is refused
WEIGHT = 0.3  # weight of one sample in the running time per call


def _channelz_counts(server_id: int) -> tuple[int, int] | None:
    """(calls started, calls ended) of one server, or None if channelz cannot say."""
    from grpc._cython import cygrpc  # channelz's own servicer reads the same function

    try:
        data = json.loads(cygrpc.channelz_get_server(server_id))["server"]["data"]
    except (ValueError, KeyError, RuntimeError):
        return None
    started = int(data.get("callsStarted", 0))
    return started, int(data.get("callsSucceeded", 0)) + int(data.get("callsFailed", 0))


def newest_server_id() -> int | None:
    """The channelz id of the gRPC server created last in this process."""
    from grpc._cython import cygrpc

    try:
        servers = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
        return max(int(s["ref"]["serverId"]) for s in servers) if servers else None
    except (ValueError, KeyError, RuntimeError):
        return None


class GrpcBacklog:
    """The estimated wait (ms) of a call before its handler runs (module docstring)."""

    def __init__(self, server_id: int | None) -> None:
        self.server_id = server_id
        self.backlog = 0
        self.call_ms = 0.0
        self.handling = 0  # calls inside our handlers now (the servicer counts them)
        self.handled = 0  # calls our handlers finished, ever
        self._last: tuple[float, int] | None = None  # (time, handled) at the last sample with a backlog
        if server_id is None:
            log.warning("channelz is unavailable: calls waiting inside gRPC cannot be seen or shed")

    @property
    def wait_ms(self) -> float:
        return self.backlog * self.call_ms

    def busy(self) -> bool:
        """Worth sampling: calls in flight, or a backlog at the last sample."""
        return self.server_id is not None and (self.handling > 0 or self.backlog > 0)

    def sample(self, now_s: float | None = None) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        counts = _channelz_counts(self.server_id) if self.server_id is not None else None
        if counts is None:
            self.backlog = 0
            return
        started, ended = counts
        self.backlog = max(started - ended - self.handling, 0)
        if self.backlog == 0:
            self._last = None
            return
        if self._last is not None:
            then, handled_then = self._last
            finished = self.handled - handled_then
            if finished > 0 and now_s > then:
                per_call = (now_s - then) * 1e3 / finished
                self.call_ms = per_call if self.call_ms == 0.0 else self.call_ms + WEIGHT * (per_call - self.call_ms)
        self._last = (now_s, self.handled)
