"""Turns: at most N session calls of one model at once, the others waiting, the batch due first next.

Why: on a core shared by two batches both finish late, while one after the other the first
finishes early and the second no later. With SLIMSERVE_COMPUTE_WORKERS=N a model's variants
take turns, N batches at a time, instead of each running beside the others (the default). On
the router bench (minilm, one core) one turn at a time first come first served measured
−0.4 ± 1.7 points of effective accuracy against side by side (docs/routing.md, "Turns per
model"); taken by deadline, below, it gains on one core at light load (and, in the simulator,
not with two or four workers), so it is an option, not the default. It is per model, unlike
the one executor thread it replaces, which put a digits call behind a minilm batch.

The turn is taken in the executor's thread, around the session call, not on the event loop:
under load the loop is the busy part of the process, and a batch waiting on the loop starts
only when the loop next runs its batcher. The executor has a thread for every batcher, so a
model waiting for its turn never holds up another model's calls: each model has its own
`Turns`, and models share the cores.

Due first, then first come: a thread that asks while every turn is taken waits on a gate of
its own, opened by the call that ends next, which hands its turn over without releasing it (so
no newcomer can slip in between) to the waiting batch whose earliest call's SLO ends first;
among batches due alike (no SLO), the one that asked first. With one turn at a time and one
worker, the simulator measured this order +1.9 points of effective accuracy over the best
static variant on the mean of 0.5-3x fp32's capacity, against +0.8 first come first served
and +0.3 side by side; the router bench +1.0 ± 1.1 over side by side on the mean of 1-3x (five
windows, inside the interval; +3.0 ± 1.6 at 1x; docs/routing.md, tenth part).

Thread: the executor's threads share one `Turns`; its fields (the holders' count, the heap of
waiting gates, the counter of asks) are read and written only under its lock. The event loop
never takes a turn (a batcher's short calls that run on the loop do not wait for one:
blocking the loop on a worker thread would stall every model).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    """A limit of `limit` holders at once, for threads; the next turn goes to the waiting
    thread due first (`turn(due_s)`), then to the one that asked first."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a model needs at least one turn at a time, got {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._holders = 0
        # One locked gate per waiting thread, as (due, order of asking, gate): a heap.
        self._waiting: list[tuple[float, int, threading.Lock]] = []
        self._asked = itertools.count()

    @contextmanager
    def turn(self, due_s: float = math.inf) -> Iterator[None]:
        """Hold a turn; while every turn is taken, wait behind the threads due before `due_s`
        (any clock, the same for every caller of this `Turns`; by default no due time)."""
        self._take(due_s)
        try:
            yield
        finally:
            self._give_back()

    def _take(self, due_s: float) -> None:
        with self._lock:
            if self._holders < self.limit:
                self._holders += 1
                return
            gate = threading.Lock()
            gate.acquire()
            heapq.heappush(self._waiting, (due_s, next(self._asked), gate))
        gate.acquire()  # opened by `_give_back`, which hands over its turn: `_holders` already counts this one

    def _give_back(self) -> None:
        with self._lock:
            if self._waiting:
                heapq.heappop(self._waiting)[2].release()
            else:
                self._holders -= 1

    @property
    def waiting(self) -> int:
        """Threads waiting for a turn now (a snapshot; for tests and statistics)."""
        with self._lock:
            return len(self._waiting)
