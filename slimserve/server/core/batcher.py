"""Dynamic batching per variant: merge requests that arrive together into one session call.

Algorithm: requests wait in a bounded queue, one FIFO per priority level (`priority_levels`
of model.yaml, Triton's dynamic_batching levels; one FIFO when the model has none). While
requests wait, the batcher waits for more until `max_queue_delay_ms` after the oldest one
arrived, then takes requests — level 1 first, then 2, …, each level in arrival order —
while their rows fit in `max_batch_size` and their non-batch shapes equal the first one's
(as Triton does without ragged batching, so no padding can change a result) — except inputs
that declare a `pad_value` (a masked encoder's token ids and mask): requests that differ only
in such inputs' lengths share a batch, each padded to the longest with that value. A request
of another shape is passed over and keeps its place; the first one whose rows do not fit
ends the batch, so no lower-priority or later request slips in ahead of it. Priority is
strict: while higher levels keep the variant busy the lower ones wait (Triton has no
starvation guard either); their deadlines, timeouts and the queue bound still apply, and the
bound (`max_queue_size`, `max_queue_bytes`) counts every level together.
Requests whose gRPC deadline has passed are answered DEADLINE_EXCEEDED before compute.
A request whose own `timeout` parameter ends first (router.hints) is answered as Triton
answers it, UNAVAILABLE "Request timeout expired" (RequestTimeoutError), by a timer at that
moment: a caller whose gRPC deadline passes cancels its call itself, but one that sent a
`timeout` keeps waiting for the server's word. Cancelled calls leave the queue at once.
The session runs in a worker thread, once its model's turn comes if it takes turns (`turns`,
core.turns: SLIMSERVE_COMPUTE_WORKERS); its outputs are split back by rows. A session call
that this batcher measured shorter than INLINE_BELOW_MS for the same size of input (the
elements of all its input tensors, to the next power of two: rows alone would let one rows=1
call of 512 tokens run inline because rows=1 calls of 8 tokens were quick) runs on the event
loop instead, without a turn: handing it to a thread and back costs more CPU than that
(~0.1 ms on a 2-core EPYC: the executor's queue, a thread wake-up, the loop's self-pipe), and
blocking the loop for less than that delays nothing measurably. A call that turns slower goes
back to the thread. On close, what is
queued is still served before the loop ends, so a graceful shutdown loses nothing admitted.

Isolation: when a merged session call fails, its requests are run again one by one, so
only the request the session cannot run fails (ModelExecutionError), never its batch-mates.
A session that quantizes activations at run time (`VariantSession.merges_requests` False)
runs every request alone: an answer must not depend on who else was in the batch.

Supervision: an unexpected error in one iteration fails that batch's calls and the loop
goes on. If the loop task itself ends other than by `close` (cancelled from outside, a
BaseException), it is restarted, up to MAX_RESTARTS times within RESTART_WINDOW_S (a server
runs for weeks: deaths far apart are not a failing variant); past that the batcher is marked
failed, every call waiting in it is answered UNAVAILABLE at once, new calls are refused,
and `on_failure` tells the app, which reports the model not ready. No call waits on a
loop that is gone.

Time: every time here is read from `clock` (the router's `Clock`, monotonic seconds): when a
call was queued, its deadline, when compute started (`running_started_s`, which the router
compares with its own clock, so the two must be one clock) and the restart window. The
batching wait is a timer on the event loop, its length computed from `clock`: in the server
both are time.monotonic (asyncio's loop time); tests run the batcher on an event loop whose
time is their fake clock (tests/fake_clock.py), so they jump the wait and the restart window
instead of sleeping. Only the length of a session call is measured on perf_counter: it is
CPU work in a worker thread, not time a test could set, and the inline rule and the routers
learn from it (on Linux perf_counter and monotonic are the same CLOCK_MONOTONIC).

What a session call costs in CPU is measured too: the calling thread's CPU time
(time.thread_time) times the session's threads, since ONNX Runtime splits a call's work over
its intra-op threads, the calling one among them, and only the calling thread's time can be
read. Unlike the call's length, it does not grow while other calls share the cores; the
routers price CPU by it (`router.latency`, cost correction).

Thread: everything here is owned by the event loop, except `_running_started_s`, which the
worker thread stores (a single float store) when compute starts, and the model's `Turns`,
which the worker threads share under its own lock (core.turns). A call whose loop was
cancelled while its thread waited for a turn is marked abandoned, and the thread, once its
turn comes, hands it on without running (or storing anything).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from slimserve.router.load import Clock
from slimserve.server.core.request import InferenceRequest, InferenceResult
from slimserve.server.core.session import VariantSession
from slimserve.server.core.turns import Turns
from slimserve.server.errors import (
    DeadlineExceededError,
    ModelExecutionError,
    QueueFullError,
    ServingError,
    ShuttingDownError,
    VariantUnavailableError,
)

log = logging.getLogger(__name__)
# (batcher, rows, compute_ms, cpu_ms): once per session call; cpu_ms is CPU over all its threads (module docstring)
BatchListener = Callable[["DynamicBatcher", int, float, float], None]
MAX_RESTARTS = 3  # a loop that dies more often than this within RESTART_WINDOW_S is marked failed
RESTART_WINDOW_S = 60.0
SESSION_MESSAGE_CHARS = 300  # how much of ONNX Runtime's error a caller is shown
INLINE_BELOW_MS = 0.5  # session calls measured shorter than this run on the event loop (module docstring)
INLINE_WEIGHT = 0.2  # weight of one call in the running compute time per row count
TIMEOUT_EXPIRED = "Request timeout expired"  # Triton's words, which its clients may look for


class RequestTimeoutError(QueueFullError):
    """The request's own `timeout` parameter ended before it was computed. A queue too long
    for the time the caller gave: UNAVAILABLE, as Triton answers it and as a full queue is
    (the caller may retry, elsewhere), not DEADLINE_EXCEEDED — the caller's gRPC deadline,
    if it set one, has not passed."""


@dataclass(eq=False)  # identity: finding a call in the queue must not compare its tensors
class _Pending:
    request: InferenceRequest
    future: asyncio.Future[InferenceResult]
    enqueued_s: float
    deadline_s: float | None  # the earlier of the gRPC deadline and the `timeout`'s end
    level: int = 0  # index of its priority level's queue (0: the highest)
    by_timeout: bool = False  # deadline_s is the `timeout`'s end, not the gRPC deadline
    due_s: float = math.inf  # when its SLO ends: its batch's place among those waiting for a turn (core.turns)
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)  # answers it when the timeout ends

    def expired(self, where: str) -> ServingError:
        """What a request whose deadline passed `where` is answered."""
        if self.by_timeout:
            return RequestTimeoutError(f"{TIMEOUT_EXPIRED}: its 'timeout' passed {where}; not computed")
        return DeadlineExceededError(f"deadline passed {where}; not computed")

    def shape_key(self, padded: Collection[str]) -> tuple[tuple[int, ...], ...]:
        """What batch-mates must share: every input's non-batch shape, or only its rank where
        it may be padded."""
        return tuple((a.ndim,) if name in padded else a.shape[1:] for name, a in self.request.inputs.items())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.request.inputs.values())

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class DynamicBatcher:
    """Bounded queue (one FIFO per priority level) + batching loop for one variant's session.

    Exposes its queue state (`queued_rows`, `rows_by_level`, `running_rows`,
    `running_started_s`) for the router's latency model, and calls `on_batch(batcher, rows,
    compute_ms, cpu_ms)` after every session call and `on_failure()` once if its loop is gone for good
    (module docstring).
    """

    def __init__(
        self,
        session: VariantSession,
        executor: Executor,
        max_batch_size: int,
        max_queue_delay_ms: float,
        max_queue_size: int,
        max_queue_bytes: int = 1 << 62,
        *,
        on_batch: BatchListener | None = None,
        on_failure: Callable[[], None] | None = None,
        clock: Clock = time.monotonic,
        priority_levels: int = 0,
        default_priority_level: int = 0,
        turns: Turns | None = None,
    ) -> None:
        self.session = session
        self._executor = executor
        self._turns = turns  # the model's (core.turns); None: no limit but the executor's
        self._clock = clock
        self._compute_ms: dict[int, float] = {}  # running mean of a session call's time, by _size_class
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_queue_delay_ms / 1000.0
        self._max_queue_size = max_queue_size
        self._max_queue_bytes = max_queue_bytes
        self._pad_values = {spec.name: spec.pad_value for spec in session.config.inputs if spec.pad_value is not None}
        self._priority_levels = priority_levels  # 0: none, one FIFO
        self._default_level = default_priority_level or 1  # what level 0 (unstated) means
        # One FIFO per level, level 1's first; the counts below cover all of them.
        self._queues: tuple[deque[_Pending], ...] = tuple(deque() for _ in range(max(priority_levels, 1)))
        self._level_rows = [0] * len(self._queues)
        self._queued = 0
        self._queued_bytes = 0
        self._arrived = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.executions: Counter[int] = Counter()  # session calls by rows, for statistics
        self._on_batch = on_batch
        self._on_failure = on_failure  # the loop is gone for good
        self.failed = False
        self.restarts = 0  # ever, for statistics
        self._recent_restarts_s: deque[float] = deque()  # clock times of the restarts in the window
        self._in_flight: list[_Pending] = []  # the batch handed to the session
        self._queued_rows = 0
        self._running_rows = 0
        self._running_started_s: float | None = None

    @property
    def queue_depth(self) -> int:
        return self._queued

    @property
    def merges_requests(self) -> bool:
        """Whether requests share session calls (the router's `IsolatingQueueView`)."""
        return bool(self.session.merges_requests)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def rows_by_level(self) -> tuple[int, ...]:
        """Rows queued at each priority level, level 1's first; () when the model has none
        (the router's `LevelledQueueView`)."""
        return tuple(self._level_rows) if self._priority_levels else ()

    @property
    def running_rows(self) -> int:
        return self._running_rows

    @property
    def running_started_s(self) -> float | None:
        """When the batch in flight started computing; None while it waits for a worker."""
        return self._running_started_s

    @property
    def loop_task(self) -> asyncio.Task[None] | None:
        """The task running the batching loop now (None before `start`); a new one after each
        restart. Read-only: cancelling it from outside is how a test makes the loop die."""
        return self._task

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.session.name}")
        self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """Supervision (module docstring): restart a loop that ended unasked, or fail for good."""
        if self._closing and not task.cancelled():
            return  # closed as asked: everything queued was served
        if self._closing:  # cancelled while closing (the process is going): answer what is left
            self._fail_everything(ShuttingDownError("server is shutting down; retry on another replica"))
            return
        error = task.exception() if not task.cancelled() else None
        lost = VariantUnavailableError(f"variant '{self.session.name}' stopped serving; retry")
        for pending in self._in_flight:  # the batch it was computing will never be split back
            pending.fail(lost)
        self._in_flight = []
        now = self._clock()
        while self._recent_restarts_s and now - self._recent_restarts_s[0] > RESTART_WINDOW_S:
            self._recent_restarts_s.popleft()
        if len(self._recent_restarts_s) < MAX_RESTARTS:
            self._recent_restarts_s.append(now)
            self.restarts += 1
            log.error("batcher of %s ended unexpectedly (%r); restart %d", self.session.name, error, self.restarts)
            self.start()
            return
        log.error("batcher of %s ended unexpectedly (%r); the variant is failed", self.session.name, error)
        self.failed = True
        self._fail_everything(lost)
        if self._on_failure is not None:
            self._on_failure()

    def _fail_everything(self, error: Exception) -> None:
        for pending in (*self._in_flight, *(p for queue in self._queues for p in queue)):
            pending.fail(error)
        self._in_flight = []
        for queue in self._queues:
            queue.clear()
        self._level_rows = [0] * len(self._queues)
        self._queued = self._queued_rows = self._queued_bytes = 0

    @property
    def closed(self) -> bool:
        """Closed and its loop ended: it serves nothing more."""
        return self._closing and (self._task is None or self._task.done())

    async def close(self) -> None:
        """Stop taking requests, serve what is queued, then end the loop."""
        self._closing = True
        self._arrived.set()
        if self._task is not None and not self._task.done():
            await self._task

    async def submit(
        self,
        request: InferenceRequest,
        deadline_s: float | None,
        level: int = 0,
        timeout_at_s: float | None = None,
        due_s: float = math.inf,
    ) -> InferenceResult:
        """Queue `request` and wait for its answer. `deadline_s`: the gRPC deadline; `level`:
        its priority level (0: the model's default; router.hints checked it); `timeout_at_s`:
        when its `timeout` parameter ends (module docstring); `due_s`: when its latency SLO ends,
        which orders its batch among those waiting for a turn (core.turns); all on `clock`."""
        if self._closing:
            raise ShuttingDownError("server is shutting down; retry on another replica")
        if self.failed:
            raise VariantUnavailableError(f"variant '{self.session.name}' is not serving (its batcher failed)")
        if not 0 <= level <= self._priority_levels:  # the data plane's mistake, not the caller's
            raise ValueError(f"priority level {level} is not in [0, {self._priority_levels}] ({self.session.name})")
        if self._queued >= self._max_queue_size:
            raise QueueFullError(
                f"queue of variant '{self.session.name}' is full ({self._max_queue_size} waiting); retry later"
            )
        now = self._clock()
        by_timeout = timeout_at_s is not None and (deadline_s is None or timeout_at_s < deadline_s)
        expires_s = timeout_at_s if by_timeout else deadline_s
        loop = asyncio.get_running_loop()
        index = (level or self._default_level) - 1
        pending = _Pending(request, loop.create_future(), now, expires_s, index, by_timeout, due_s)
        if expires_s is not None and expires_s <= now:
            raise pending.expired("before the request was queued")
        size = pending.nbytes
        # One request larger than the limit is still taken into an empty queue: the message
        # size limit bounds it, and refusing it forever would help nobody.
        if self._queued and self._queued_bytes + size > self._max_queue_bytes:
            raise QueueFullError(
                f"queue of variant '{self.session.name}' holds {self._queued_bytes} bytes; "
                f"{size} more would pass its {self._max_queue_bytes}-byte limit; retry later"
            )
        self._queues[index].append(pending)
        self._queued += 1
        self._level_rows[index] += request.batch_size
        self._queued_rows += request.batch_size
        self._queued_bytes += size
        if by_timeout and timeout_at_s is not None:  # O(log n) on the loop's timer heap; cancelled once answered
            pending.timer = loop.call_later(timeout_at_s - now, self._expire, pending)
        self._arrived.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._unqueue(pending)  # a cancelled call frees its slot at once
            raise
        finally:
            if pending.timer is not None:
                pending.timer.cancel()  # and lets go of the request's tensors

    def _unqueue(self, pending: _Pending) -> bool:
        """Take `pending` out of its queue; False if it is not there (in a batch, or answered)."""
        try:
            self._queues[pending.level].remove(pending)
        except ValueError:
            return False
        rows = pending.request.batch_size
        self._queued -= 1
        self._level_rows[pending.level] -= rows
        self._queued_rows -= rows
        self._queued_bytes -= pending.nbytes
        return True

    def _expire(self, pending: _Pending) -> None:
        """The timer of a request's `timeout`: answer it now if it is still queued."""
        if not pending.future.done() and self._unqueue(pending):
            pending.fail(pending.expired("while queued"))

    async def _loop(self) -> None:
        while True:
            if not self._queued:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch: list[_Pending] = []
            try:
                await self._wait_for_more()
                batch = self._take_batch()
                if batch:
                    await self._run(batch)
            except Exception as exc:  # a bug in one iteration must not stop the variant
                log.exception("batcher of %s failed on a batch of %d calls", self.session.name, len(batch))
                for pending in batch:
                    pending.fail(exc)
            # Not in a `finally`: if the loop is cancelled mid-batch, _loop_ended must still
            # find that batch to answer it.
            self._in_flight = []

    async def _wait_for_more(self) -> None:
        """Up to max_queue_delay after the oldest call waiting, unless the batch fills: a timer
        on the event loop, as long as `clock` says is left (module docstring)."""
        while not self._closing and self._queued:
            oldest_s = min(queue[0].enqueued_s for queue in self._queues if queue)  # each level's head is its oldest
            remaining = oldest_s + self._max_delay_s - self._clock()
            if self._queued_rows >= self._max_batch_size or remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Pending]:
        """The next batch, highest priority level first (module docstring)."""
        now = self._clock()
        batch: list[_Pending] = []
        rows = 0
        key = None
        full = False
        for queue in self._queues:
            kept: deque[_Pending] = deque()
            while queue:
                pending = queue.popleft()
                if pending.future.done():
                    continue
                if pending.deadline_s is not None and pending.deadline_s <= now:
                    pending.fail(pending.expired("while queued"))
                    continue
                fits = rows + pending.request.batch_size <= self._max_batch_size
                shape_key = pending.shape_key(self._pad_values)
                if (key is None or shape_key == key) and fits:
                    key = shape_key
                    batch.append(pending)
                    rows += pending.request.batch_size
                else:
                    kept.append(pending)
                    if not fits:
                        full = True
                        break
            queue.extendleft(reversed(kept))
            if full:
                break
        self._level_rows = [sum(p.request.batch_size for p in queue) for queue in self._queues]
        self._queued = sum(len(queue) for queue in self._queues)
        self._queued_rows = sum(self._level_rows)
        self._queued_bytes = sum(p.nbytes for queue in self._queues for p in queue)
        return batch

    def _merge(self, name: str, arrays: list[np.ndarray]) -> np.ndarray:
        """One input of a batch: the requests' rows stacked, padded to the longest where allowed."""
        longest = tuple(max(sizes) for sizes in zip(*(a.shape[1:] for a in arrays), strict=True))
        if name in self._pad_values and any(a.shape[1:] != longest for a in arrays):
            value = self._pad_values[name]
            arrays = [
                np.pad(a, [(0, 0), *((0, n - d) for n, d in zip(longest, a.shape[1:], strict=True))],
                       constant_values=value)
                for a in arrays
            ]  # fmt: skip
        return np.concatenate(arrays)

    def _timed_run(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float, float]:
        """In the worker thread (or on the loop, if short): the outputs, when compute really
        started (on `clock`), how long it took (seconds, perf_counter) and the CPU seconds it
        took on the calling thread (module docstring)."""
        started = self._clock()
        self._running_started_s = started  # a float store is atomic under the GIL
        began, cpu_began = time.perf_counter(), time.thread_time()
        outputs = self.session.run(inputs)
        return outputs, started, time.perf_counter() - began, time.thread_time() - cpu_began

    def _timed_run_in_turn(
        self, inputs: dict[str, np.ndarray], abandoned: threading.Event, due_s: float
    ) -> tuple[dict[str, np.ndarray], float, float, float]:
        """In the worker thread: `_timed_run` once the model's turn comes (core.turns: the
        batch due first goes first); the wait is neither compute time nor running time.
        Nothing runs for an abandoned call."""
        with self._turns.turn(due_s) if self._turns is not None else contextlib.nullcontext():
            if abandoned.is_set():
                raise asyncio.CancelledError  # nobody awaits it: the loop that asked was cancelled
            return self._timed_run(inputs)

    async def _run(self, batch: list[_Pending]) -> None:
        self._in_flight = batch
        if len(batch) > 1 and not self.session.merges_requests:
            # Each request alone: its activation scales must not depend on its batch-mates
            # (core.session); the batch taken still bounds how much leaves the queue at once.
            for pending in batch:
                await self._run_alone(pending)
            return
        if len(batch) == 1:
            merged = batch[0].request.inputs
        else:
            names = list(batch[0].request.inputs)
            merged = {name: self._merge(name, [p.request.inputs[name] for p in batch]) for name in names}
        try:
            outputs, started, took_s, _ = await self._call(merged, min(p.due_s for p in batch))
        except Exception as exc:
            if len(batch) == 1:
                batch[0].fail(self._execution_error(exc))
                return
            # Isolation: one request the session cannot run must not fail the others.
            log.warning("variant %s failed on a merged batch of %d calls; running them one by one",
                        self.session.name, len(batch))  # fmt: skip
            for pending in batch:
                await self._run_alone(pending)
            return
        self._answer(batch, outputs, started, took_s)

    async def _run_alone(self, pending: _Pending) -> None:
        if pending.future.done():
            return
        try:
            outputs, started, took_s, _ = await self._call(pending.request.inputs, pending.due_s)
        except Exception as exc:
            pending.fail(self._execution_error(exc))
            return
        self._answer([pending], outputs, started, took_s)

    async def _call(
        self, inputs: dict[str, np.ndarray], due_s: float = math.inf
    ) -> tuple[dict[str, np.ndarray], float, float, float]:
        rows = int(next(iter(inputs.values())).shape[0])
        self._running_rows, self._running_started_s = rows, None
        size = _size_class(inputs)
        known_ms = self._compute_ms.get(size)
        try:
            if known_ms is not None and known_ms < INLINE_BELOW_MS:
                result = self._timed_run(inputs)
            else:
                abandoned = threading.Event()
                try:
                    result = await asyncio.get_running_loop().run_in_executor(
                        self._executor, self._timed_run_in_turn, inputs, abandoned, due_s
                    )
                except asyncio.CancelledError:
                    abandoned.set()  # its thread may still be waiting for a turn: it must not run then
                    raise
        finally:
            self._running_rows = 0
        took_ms = result[2] * 1e3
        self._compute_ms[size] = took_ms if known_ms is None else known_ms + INLINE_WEIGHT * (took_ms - known_ms)
        self.executions[rows] += 1
        if self._on_batch is not None:
            try:
                self._on_batch(self, rows, took_ms, result[3] * 1e3 * self.session.threads)
            except Exception:  # a listener's bug must not fail calls that were answered
                log.exception("batch listener of %s failed", self.session.name)
        return result

    def _execution_error(self, error: Exception) -> ModelExecutionError:
        log.warning("variant %s failed on one request: %s", self.session.name, error)
        detail = (
            str(error).strip().splitlines()[0][:SESSION_MESSAGE_CHARS] if str(error).strip() else type(error).__name__
        )
        return ModelExecutionError(f"variant '{self.session.name}' could not run this input: {detail}")

    def _answer(self, batch: list[_Pending], outputs: dict[str, np.ndarray], started: float, took_s: float) -> None:
        rows = sum(p.request.batch_size for p in batch)
        offset = 0
        for pending in batch:
            count = pending.request.batch_size
            if not pending.future.done():
                pending.future.set_result(
                    InferenceResult(
                        outputs={k: v[offset : offset + count] for k, v in outputs.items()},
                        variant=self.session.name,
                        queue_ms=(started - pending.enqueued_s) * 1e3,
                        compute_ms=took_s * 1e3,
                        batch_size=rows,
                    )
                )
            offset += count


def _size_class(inputs: dict[str, np.ndarray]) -> int:
    """The elements of all `inputs`, rounded up to a power of two: calls of one class take
    about the same time, so the inline rule (module docstring) learns per class."""
    elements = sum(int(array.size) for array in inputs.values())
    return 1 << max(elements - 1, 0).bit_length()
