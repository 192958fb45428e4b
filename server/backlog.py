"""How long a call waited before its handler started — which no handler can see.

grpc.aio takes every call the core receives and makes it a task on the event loop. Under
overload those tasks queue behind each other (first in, first out) before their handler
runs: measured at 3× capacity, about a thousand of them, 0.7 s of waiting, while the
handlers saw an empty batcher queue. gRPC's channelz counts every call when the core hands
it to the application and when it ends, so

    backlog = calls started − calls ended − calls inside our handlers

and the wait of a call taken now is about backlog × the time the server spends per call
(measured between samples while there is a backlog). The servicer refuses a call at once,
before decoding it, when that wait has used up its SLO — or, while the queue is standing
(a backlog for STANDING_S with no quiet spell of STANDING_S in it, as CoDel tells a standing
queue from a burst and keeps dropping until the queue has been quiet for an interval),
more than WAIT_SHARE of it: refusing costs a fraction of serving, so the backlog drains and
the calls that are taken can still make their SLO, while a passing burst refuses nothing
that could still make it.

Sampling reads channelz (~0.3 ms on a 2-core AMD EPYC) every SAMPLE_S, and only while calls
are in flight, so an idle server does not poll. Thread: owned by the event loop.
"""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger(__name__)

SAMPLE_S = 0.02
WAIT_SHARE = 0.3  # while the queue stands, a call that has waited this share of its SLO is refused
STANDING_S = 0.1  # a backlog this long, without a quiet spell this long, is overload, not a burst
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
        self._backlog_since_s: float | None = None  # start of the current run of backlog
        self._backlog_seen_s: float | None = None  # the last sample with a backlog
        if server_id is None:
            log.warning("channelz is unavailable: calls waiting inside gRPC cannot be seen or shed")

    @property
    def wait_ms(self) -> float:
        return self.backlog * self.call_ms

    def standing(self, now_s: float | None = None) -> bool:
        """A backlog for at least STANDING_S, not yet quiet for STANDING_S: overload, not a burst."""
        now_s = time.monotonic() if now_s is None else now_s
        if self._backlog_since_s is None or self._backlog_seen_s is None:
            return False
        return self._backlog_seen_s - self._backlog_since_s >= STANDING_S and now_s - self._backlog_seen_s < STANDING_S

    def wait_limit_ms(self, slo_ms: float, now_s: float | None = None) -> float:
        """How long a call with this SLO may have waited and still be taken."""
        return WAIT_SHARE * slo_ms if self.standing(now_s) else slo_ms

    def busy(self) -> bool:
        """Worth sampling: calls in flight, or a backlog at the last sample."""
        return self.server_id is not None and (self.handling > 0 or self.backlog > 0)

    def sample(self) -> None:
        """Read channelz now (on the event loop)."""
        counts = _channelz_counts(self.server_id) if self.server_id is not None else None
        if counts is None:
            self.backlog = 0
            self._backlog_since_s = self._backlog_seen_s = None
            return
        self.record(time.monotonic(), *counts)

    def record(self, now_s: float, started: int, ended: int) -> None:
        """Fold in channelz's counts of calls started and ended at `now_s`."""
        self.backlog = max(started - ended - self.handling, 0)
        if self.backlog == 0:
            self._last = None  # the run of backlog goes on unless the quiet lasts STANDING_S
            return
        quiet_too_long = self._backlog_seen_s is None or now_s - self._backlog_seen_s >= STANDING_S
        if self._backlog_since_s is None or quiet_too_long:
            self._backlog_since_s = now_s
        self._backlog_seen_s = now_s
        if self._last is not None:
            then, handled_then = self._last
            finished = self.handled - handled_then
            if finished > 0 and now_s > then:
                per_call = (now_s - then) * 1e3 / finished
                self.call_ms = per_call if self.call_ms == 0.0 else self.call_ms + WEIGHT * (per_call - self.call_ms)
        self._last = (now_s, self.handled)
