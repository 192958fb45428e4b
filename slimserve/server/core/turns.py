"""Turns: at most N session calls of one model at once, the others waiting in order of asking.

Why: on a core shared by two batches both finish late, while one after the other the first
finishes early and the second no later. With SLIMSERVE_COMPUTE_WORKERS=N a model's variants
take turns, N batches at a time, instead of each running beside the others (the default). On
the router bench (minilm, one core) one turn at a time measured −0.4 ± 1.7 points of
effective accuracy against side by side, and the single compute thread it replaces +0.4 ±
3.6 the same day (docs/routing.md, "Turns per model"): no gain either way, so it is an
option, not the default. It is per model, unlike the one executor thread it replaces, which
put a digits call behind a minilm batch.

The turn is taken in the executor's thread, around the session call, not on the event loop:
under load the loop is the busy part of the process, and a batch waiting on the loop starts
only when the loop next runs its batcher. The executor has a thread for every batcher, so a
model waiting for its turn never holds up another model's calls: each model has its own
`Turns`, and models share the cores.

First come, first served: a thread that asks while every turn is taken waits on a gate of its
own, opened by the call that ends next, which hands its turn over without releasing it (so no
newcomer can slip in between).

Thread: the executor's threads share one `Turns`; its two fields are read and written only
under its lock. The event loop never takes a turn (a batcher's short calls that run on the
loop do not wait for one: blocking the loop on a worker thread would stall every model).
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType


class Turns:
    """A first-come-first-served limit of `limit` holders at once, for threads."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a model needs at least one turn at a time, got {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._holders = 0
        self._waiting: deque[threading.Lock] = deque()  # one locked gate per waiting thread, oldest first

    def __enter__(self) -> None:
        with self._lock:
            if self._holders < self.limit:
                self._holders += 1
                return
            gate = threading.Lock()
            gate.acquire()
            self._waiting.append(gate)
        gate.acquire()  # opened by `__exit__`, which hands over its turn: `_holders` already counts this one

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._holders -= 1

    @property
    def waiting(self) -> int:
        """Threads waiting for a turn now (a snapshot; for tests and statistics)."""
        with self._lock:
            return len(self._waiting)
