"""Dynamic batching per variant: merge requests that arrive together into one session call.

Algorithm: requests wait in a bounded FIFO. When the first one arrives the batcher waits
at most `max_queue_delay_ms` for more, then takes requests in order while their rows fit in
`max_batch_size` and their non-batch shapes equal the first one's (as Triton does without
ragged batching, so no padding can change a result). Requests whose deadline has passed
are answered DEADLINE_EXCEEDED before compute; cancelled calls leave the queue at once.
The session runs in a worker thread; its outputs are split back by rows. On close, what is
queued is still served before the loop ends, so a graceful shutdown loses nothing admitted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from server.errors import DeadlineExceededError, QueueFullError, ShuttingDownError
from server.request import InferenceRequest, InferenceResult
from server.runtime import VariantSession

log = logging.getLogger(__name__)
BatchListener = Callable[[int, float], None]  # (rows, compute_ms), once per session call


@dataclass(eq=False)  # identity: finding a call in the queue must not compare its tensors
class _Pending:
    request: InferenceRequest
    future: asyncio.Future[InferenceResult]
    enqueued_s: float
    deadline_s: float | None

    def shape_key(self) -> tuple[tuple[int, ...], ...]:
        return tuple(a.shape[1:] for a in self.request.inputs.values())


class DynamicBatcher:
    """Bounded queue + batching loop for one variant's session.

    Exposes its queue state (`queued_rows`, `running_rows`, `running_started_s`) for the
    router's latency model, and calls `on_batch(rows, compute_ms)` after every session call.
    """

    def __init__(
        self,
        session: VariantSession,
        executor: Executor,
        max_batch_size: int,
        max_queue_delay_ms: float,
        max_queue_size: int,
    ) -> None:
        self.session = session
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_queue_delay_ms / 1000.0
        self._max_queue_size = max_queue_size
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.executions: Counter[int] = Counter()  # session calls by rows, for statistics
        self.on_batch: BatchListener | None = None
        self._queued_rows = 0
        self._running_rows = 0
        self._running_started_s: float | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def running_rows(self) -> int:
        return self._running_rows

    @property
    def running_started_s(self) -> float | None:
        """When the batch in flight started computing; None while it waits for a worker."""
        return self._running_started_s

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.session.name}")

    async def close(self) -> None:
        """Stop taking requests, serve what is queued, then end the loop."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task

    async def submit(self, request: InferenceRequest, deadline_s: float | None) -> InferenceResult:
        if self._closing:
            raise ShuttingDownError("server is shutting down; retry on another replica")
        if len(self._queue) >= self._max_queue_size:
            raise QueueFullError(
                f"queue of variant '{self.session.name}' is full ({self._max_queue_size} waiting); retry later"
            )
        now = time.monotonic()
        if deadline_s is not None and deadline_s <= now:
            raise DeadlineExceededError("deadline passed before the request was queued")
        pending = _Pending(request, asyncio.get_running_loop().create_future(), now, deadline_s)
        self._queue.append(pending)
        self._queued_rows += request.batch_size
        self._arrived.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            if pending in self._queue:  # a cancelled call frees its slot at once
                self._queue.remove(pending)
                self._queued_rows -= request.batch_size
            raise

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_for_more()
            batch = self._take_batch()
            if batch:
                await self._run(batch)

    async def _wait_for_more(self) -> None:
        first = self._queue[0]
        while not self._closing:
            rows = sum(p.request.batch_size for p in self._queue)
            remaining = first.enqueued_s + self._max_delay_s - time.monotonic()
            if rows >= self._max_batch_size or remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Pending]:
        now = time.monotonic()
        batch: list[_Pending] = []
        rows = 0
        key = None
        kept: deque[_Pending] = deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():
                continue
            if pending.deadline_s is not None and pending.deadline_s <= now:
                pending.future.set_exception(DeadlineExceededError("deadline passed while queued; not computed"))
                continue
            fits = rows + pending.request.batch_size <= self._max_batch_size
            if (key is None or pending.shape_key() == key) and fits:
                key = pending.shape_key()
                batch.append(pending)
                rows += pending.request.batch_size
            else:
                kept.append(pending)
                if not fits:
                    break
        self._queue.extendleft(reversed(kept))
        self._queued_rows = sum(p.request.batch_size for p in self._queue)
        return batch

    def _timed_run(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float]:
        """In the worker thread: the outputs and when compute really started and ended."""
        started = time.monotonic()
        self._running_started_s = started  # a float store is atomic under the GIL
        outputs = self.session.run(inputs)
        return outputs, started, time.monotonic()

    async def _run(self, batch: list[_Pending]) -> None:
        names = list(batch[0].request.inputs)
        merged = {name: np.concatenate([p.request.inputs[name] for p in batch]) for name in names}
        rows = int(next(iter(merged.values())).shape[0])
        self._running_rows, self._running_started_s = rows, None
        try:
            outputs, started, finished = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._timed_run, merged
            )
        except Exception as exc:  # one bad batch must not stop the loop
            log.exception("variant %s failed on a batch of %d rows", self.session.name, rows)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        finally:
            self._running_rows = 0
        self.executions[rows] += 1
        if self.on_batch is not None:
            self.on_batch(rows, (finished - started) * 1e3)
        offset = 0
        for pending in batch:
            count = pending.request.batch_size
            if not pending.future.done():
                pending.future.set_result(
                    InferenceResult(
                        outputs={k: v[offset : offset + count] for k, v in outputs.items()},
                        variant=self.session.name,
                        queue_ms=(started - pending.enqueued_s) * 1e3,
                        compute_ms=(finished - started) * 1e3,
                        batch_size=rows,
                    )
                )
            offset += count
