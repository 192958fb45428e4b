"""How long a call waited before its handler started — which no handler can see.

grpc.aio takes every call the core receives and makes it a task on the event loop. Under
overload those tasks queue behind each other (first in, first out) before their handler
runs: measured at 3× capacity, about a thousand of them, 0.7 s of waiting, while the
handlers saw an empty batcher queue. gRPC's channelz counts every call when the core hands
it to the application and when it ends; `CallCount`, the server's first interceptor, counts
every call when its task first runs — grpc.aio runs the interceptors first thing, before it
reads the request message — and again when that task ends with the call. So

    backlog = calls started − calls ended − calls taken up and not over

counts the calls that have arrived and wait for the loop to take them up, and no others:
an idle grpc.health.v1 Watch stream (open to everyone, tokens or not) or a call whose
request message never comes is taken up and waits for its client, not for the loop.
(Subtracting only the calls inside the data plane's handler counted those as waiting:
200 idle Watch streams priced out every call with a 15-ms SLO, anyone's off switch.)
Nothing drifts: a call that ends before it is taken up counts in neither `taken` nor
`over`, and started and ended cancel it. The counts are read at one moment, but channelz
is kept by the core's threads: a call that has just ended can count for a sample, and the
clamp at zero covers the other order. Not counted: a call taken up whose message has
arrived still waits one more turn of the loop before its handler runs; with the loop held
by 10-ms handlers that was 2–4 calls at a time against dozens waiting to be taken up (17
against 42 at the start of a burst of 60).

The wait of a call taken now is about backlog × the time per call, measured between
samples while there is a backlog as the lesser of the wall time and the process's CPU time
per call handled (the data plane counts `handled`). Under overload the two agree (on one
core) or the wall time is the smaller (ONNX Runtime on other cores); at light load a call or
two caught between the core and its handler over a mostly idle process made the wall time
per call look like 20 ms of waiting, and calls that would have made a 15-ms SLO were
refused: the CPU time says how little work was really ahead of them.
The data plane refuses a call at once, before decoding it, when that wait has used up its
SLO — or, when the queue stands for it, more than its target, WAIT_SHARE of its SLO. The
queue stands for a target by CoDel's rule with hysteresis: from when the wait stayed above
the target for a whole interval (STANDING_S) — overload, not a burst — until it stayed
below it for a whole interval. While it stands, refusing costs a fraction of serving, so
the backlog drains and the calls that are taken can still make their SLO; the wait then
hovers around the target, dipping below it now and then, and the queue still stands. A
wait that dips below the target within every interval — the small, passing queue of a
light load on a shared machine — refuses nothing that could still make it.

Sampling reads channelz (~0.3 ms on a 2-core AMD EPYC) every SAMPLE_S, and only while the
data plane's handlers hold calls (`handling`) or there was a backlog at the last sample, so
an idle server does not poll, nor one holding only idle streams (the server's sampler loop).
The estimate itself does not wait: it reads the time from `clock` (the router's `Clock`)
when it samples and when it is asked, and `record` takes the time of the counts, so tests
feed it counts on a fake clock and jump a day between bursts. Thread: owned by the event
loop — the interceptor, the ends of the calls' tasks, the data plane's counts and the
sampler all run there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from itertools import pairwise
from types import MappingProxyType
from typing import Any

import grpc

from slimserve.router.load import Clock

log = logging.getLogger(__name__)

SAMPLE_S = 0.02
WAIT_SHARE = 0.3  # a call's target: while the wait stays above this share of its SLO for STANDING_S, it is refused
STANDING_S = 0.1  # a wait above the target for this long is a standing queue (CoDel's interval)
MAX_SAMPLE_GAP_S = 5 * SAMPLE_S  # samples further apart than this say nothing about the time between them
MAX_TARGETS = 64  # distinct targets (SLOs) whose standing state is kept; the oldest is forgotten first
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


class CallCount(grpc.aio.ServerInterceptor):
    """The calls the event loop has taken up, as a server interceptor: each call is counted
    when its task first runs (`taken`) and when that task ends (`over`).

    grpc.aio runs the interceptors first thing in a call's own task (`_handle_rpc` →
    `_find_method_handler`, in the task `_schedule_rpc_coro` created), before it reads the
    request message, and the task ends when the call does: answered, refused or cancelled.
    It goes first among the server's interceptors, so that none can keep a call from it
    (the token check's refusals included), and it only counts: one done-callback on the
    call's task. Thread: the event loop (interceptors and done-callbacks run there)."""

    def __init__(self) -> None:
        self.taken = 0  # calls whose task reached the interceptors, ever
        self.over = 0  # of those, calls whose task has ended, ever

    @property
    def open(self) -> int:
        """Calls taken up and not over: handlers at work, streams parked in theirs, calls
        waiting for a request message."""
        return self.taken - self.over

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        task = asyncio.current_task()
        if task is not None:  # always, under grpc.aio: the call's own task
            self.taken += 1
            task.add_done_callback(self._end)
        return await continuation(details)

    def _end(self, task: asyncio.Task[Any]) -> None:
        self.over += 1


class GrpcBacklog:
    """The estimated wait (ms) of a call before its handler runs (module docstring).

    `calls` is the `CallCount` installed first on the server whose channelz id is
    `server_id`; without one (no server, or a test that feeds counts), no call is seen taken
    up and every open call counts as waiting."""

    def __init__(self, server_id: int | None, clock: Clock = time.monotonic, calls: CallCount | None = None) -> None:
        self.server_id = server_id
        self._clock = clock
        self.calls = calls if calls is not None else CallCount()
        self.backlog = 0
        self.call_ms = 0.0
        self.handling = 0  # calls inside the data plane's handler now (it counts them): worth sampling
        self.handled = 0  # calls the data plane's handler finished, ever: the time per call is learned from them
        self._last: tuple[float, float, int] | None = (
            None  # (time, CPU time, handled) at the last sample with a backlog
        )
        self._waits: deque[tuple[float, float]] = deque()  # (time, wait_ms) of the samples of the last interval
        self._standing: dict[float, bool] = {}  # target wait (ms) → whether the queue stands for it
        if server_id is None:
            log.warning("channelz is unavailable: calls waiting inside gRPC cannot be seen or shed")

    @property
    def wait_ms(self) -> float:
        return self.backlog * self.call_ms

    @property
    def standing(self) -> Mapping[float, bool]:
        """Target wait (ms) → whether the queue stands for it, for the targets remembered (at
        most MAX_TARGETS); read-only."""
        return MappingProxyType(self._standing)

    def window_ms(self, now_s: float | None = None) -> tuple[float, float] | None:
        """(least, greatest) wait over the last STANDING_S before `now_s` (default: the clock's
        now), or None unless samples cover all of it."""
        now_s = self._clock() if now_s is None else now_s
        if not self._waits or self._waits[0][0] > now_s - STANDING_S:
            return None  # the samples do not reach back over the whole interval
        times = [at_s for at_s, _ in self._waits] + [now_s]
        if any(later - earlier > MAX_SAMPLE_GAP_S for earlier, later in pairwise(times)):
            return None  # a gap in the samples: nothing is known of the wait in it
        # The first sample is from before the interval; its wait held until the next one.
        waits = [wait for _, wait in self._waits]
        return min(waits), max(waits)

    def wait_limit_ms(self, slo_ms: float, now_s: float | None = None) -> float:
        """How long a call with this SLO may have waited and still be taken, at `now_s`
        (default: the clock's now)."""
        now_s = self._clock() if now_s is None else now_s
        if not self._waits or now_s - self._waits[-1][0] > MAX_SAMPLE_GAP_S:
            return slo_ms  # no recent sample: no backlog as far as anyone knows
        target_ms = WAIT_SHARE * slo_ms
        standing = self._standing.get(target_ms)
        if standing is None:  # a target not seen before: does the last interval say it stands?
            window = self.window_ms(self._waits[-1][0])
            standing = self._standing[target_ms] = window is not None and window[0] > target_ms
            if len(self._standing) > MAX_TARGETS:
                del self._standing[next(iter(self._standing))]
        return target_ms if standing else slo_ms

    def busy(self) -> bool:
        """Worth sampling: calls in flight, or a backlog at the last sample."""
        return self.server_id is not None and (self.handling > 0 or self.backlog > 0)

    def sample(self) -> None:
        """Read channelz now (on the event loop)."""
        counts = _channelz_counts(self.server_id) if self.server_id is not None else None
        if counts is None:
            self.backlog = 0
            self._last = None
            self._waits.clear()
            self._standing.clear()
            return
        self.record(self._clock(), *counts, cpu_s=time.process_time())

    def record(self, now_s: float, started: int, ended: int, cpu_s: float | None = None) -> None:
        """Fold in channelz's counts of calls started and ended at `now_s`, when the process
        had used `cpu_s` of CPU time (None: as much as the wall time, a process never idle),
        with the calls taken up and not over now (`calls.open`)."""
        cpu_s = now_s if cpu_s is None else cpu_s
        self.backlog = max(started - ended - self.calls.open, 0)
        if self.backlog == 0:
            self._last = None
        else:
            self._learn_call_ms(now_s, cpu_s)
            self._last = (now_s, cpu_s, self.handled)
        if self._waits and now_s - self._waits[-1][0] > MAX_SAMPLE_GAP_S:
            self._waits.clear()  # after a gap in the samples (an idle spell), start afresh
            self._standing.clear()
        self._waits.append((now_s, self.wait_ms))
        while len(self._waits) > 1 and self._waits[1][0] < now_s - STANDING_S:
            self._waits.popleft()  # keep one sample before the interval: it held into it
        window = self.window_ms(now_s)
        if window is not None:
            least_ms, greatest_ms = window
            for target_ms in self._standing:
                if least_ms > target_ms:
                    self._standing[target_ms] = True  # above it for a whole interval: standing
                elif greatest_ms < target_ms:
                    self._standing[target_ms] = False  # below it for a whole interval: over

    def _learn_call_ms(self, now_s: float, cpu_s: float) -> None:
        """Time per call handled since the last sample, if there was a backlog all along."""
        if self._last is None:
            return
        then_s, then_cpu_s, handled_then = self._last
        finished = self.handled - handled_then
        spent_s = min(now_s - then_s, cpu_s - then_cpu_s)
        if finished > 0 and spent_s > 0:
            per_call_ms = spent_s * 1e3 / finished
            self.call_ms = per_call_ms if self.call_ms == 0.0 else self.call_ms + WEIGHT * (per_call_ms - self.call_ms)
