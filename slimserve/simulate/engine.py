"""The event-driven simulation of one server replaying arrivals, driven by the real router.

What runs, per worker process (`ServerParams.workers`; each call goes to one at random):
- **the event loop**, one thread: calls wait for it first in, first out (gRPC's backlog).
  Taking a call up costs `pre_ms` of CPU (read, decode, route, submit); a call that has
  waited past its SLO (or past WAIT_SHARE of it while the wait has stood above that for
  STANDING_S: `server.observe.backlog`'s rule, on the call's true wait) or whose deadline
  has passed is refused for `refuse_ms`. After its batch, answering costs `post_ms`.
- **the router**: the real `ModelRouter` with `policy.decide`, on this simulation's clock.
  It sees each variant's queue (`SimBatcher` is its `QueueView`), learns from every batch
  (`observe_batch`, with the batch's CPU: its full-speed time on each of its threads, as
  the server's batcher measures it) and answer (`observe_request`, `observe_timeout`), and its CPU account
  is sampled every SAMPLE_PERIOD_S with the simulated CPU time, its loop lag by a 5-ms
  timer whose lateness is what is left of the loop's current task — as the server's load
  monitor does. Pinned calls (static variants and fixed mixes) go through `router.pinned`,
  as a named `model_version` does, so the same admission (`Decision.shed`) applies to them.
- **one batcher per variant** (`server.core.batcher`'s rule): first in, first out; when
  idle it waits up to `max_queue_delay_ms` after the first queued call unless the batch
  fills, then takes calls while their rows fit `max_batch_size`, dropping those whose
  deadline has passed; one batch in flight per variant (a worker thread each); a batch
  pads to its longest input.
- **the cores**: processor sharing (`ServerParams`): every runnable thread — each loop with
  work, each batch in flight — gets an equal share, full speed while they fit the cores.

The client sends each call at its arrival time with a deadline of DEADLINE_X × its SLO and
gives up then; the answer reaches it `outside_ms` after the server sends it. A call is
*in time* when answered within its SLO; effective accuracy = Σ quality of in-time answers
/ calls sent (quality = the variant's measured quality, in expectation).

Deterministic for a seed: the only randomness (worker choice, mix draws) comes from it, and
ties in time are broken by the order events were scheduled.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slimserve.router.config import RouterConfig
from slimserve.router.cpu import SAMPLE_PERIOD_S, CpuAccount
from slimserve.router.hints import RequestHints
from slimserve.router.latency import LatencyModel
from slimserve.router.model_router import ModelRouter, VariantRoute
from slimserve.router.policy import Decision
from slimserve.simulate.policies import Arrival, Mix, Pinned, Policy, Routed
from slimserve.simulate.server import ServerParams, VariantSpec

__all__ = ["Arrival", "Mix", "Pinned", "Policy", "Result", "Routed", "Simulation", "simulate"]

DEADLINE_X = 2.0  # the caller's deadline, in its SLO (as loadtest/bench_router.py sends)
WAIT_SHARE = 0.3  # server.observe.backlog: the share of the SLO a standing queue may take
STANDING_S = 0.1  # ... and how long a wait must stay above (below) it to (stop to) stand
TICK_S = 0.005  # server.observe.load_monitor.PERIOD_S
LAG_WEIGHT = 0.2  # server.observe.load_monitor.LAG_WEIGHT

# Event kinds.
_ARRIVE, _CORE, _TIMER, _DEADLINE, _TICK = range(5)
# Call states.
_WAITING, _DECODING, _QUEUED, _RUNNING, _ANSWERING, _SENDING, _DONE = range(7)
# Loop task kinds.
_PRE, _POST, _ERROR = range(3)


@dataclass
class Call:
    index: int  # among measured calls (Policy.variant's argument); -1: warm-up
    arrival: Arrival
    worker: int
    deadline_s: float
    state: int = _WAITING
    received_s: float = 0.0
    enqueued_s: float = 0.0
    started_s: float = 0.0
    compute_ms: float = 0.0
    variant: str = ""
    decision: Decision | None = None
    latency_ms: float = math.inf
    outcome: str = ""  # OK, REFUSED, DEADLINE


@dataclass
class _Job:
    """A runnable thread on the cores: `left_ms` of work at full speed."""

    left_ms: float
    threads: int
    owner: object
    worker: int


class SimBatcher:
    """One variant's batcher in one worker; the router reads it as a `QueueView`."""

    def __init__(self, spec: VariantSpec, worker: int) -> None:
        self.spec = spec
        self.worker = worker
        self.queue: deque[Call] = deque()
        self.queued_rows = 0
        self.running_rows = 0
        self.running_started_s: float | None = None
        self.work_ms = 0.0  # the batch in flight at full speed: each of its threads' CPU
        self.batch: list[Call] = []
        self.timer_at: float | None = None


class _Worker:
    def __init__(self, index: int, router: ModelRouter, batchers: dict[str, SimBatcher], threads: int) -> None:
        self.index = index
        self.router = router
        self.batchers = batchers
        self.tasks: deque[tuple[int, Call]] = deque()
        self.free_threads = threads  # compute threads (ServerParams.compute_workers) not running a batch
        self.formed: deque[SimBatcher] = deque()  # batches formed, waiting for a compute thread
        self.current: _Job | None = None
        self.current_task: tuple[int, Call] | None = None
        self.in_flight = 0  # calls arrived and not over
        self.lag_ms = 0.0
        self.cpu_ms = 0.0  # CPU this worker process has used
        self.ticking = False
        self.last_sample_s = 0.0
        self.parked_s: float | None = 0.0
        self.standing: dict[float, bool] = {}
        self.above_since: dict[float, float | None] = {}
        self.below_since: dict[float, float | None] = {}


@dataclass(frozen=True)
class Result:
    """Per-call outcomes of one simulated replay (measured calls only)."""

    slo_ms: np.ndarray
    latency_ms: np.ndarray
    quality: np.ndarray  # the quality of the variant that answered (0: no answer)
    variants: tuple[str, ...]
    outcomes: tuple[str, ...]
    sim_s: float  # simulated seconds from the first to the last event
    busy_ms: float  # CPU used, machine-ms

    @property
    def in_time(self) -> np.ndarray:
        return self.latency_ms <= self.slo_ms

    @property
    def slo_attainment(self) -> float:
        return float(self.in_time.mean()) if len(self.slo_ms) else 0.0

    @property
    def effective_accuracy(self) -> float:
        return float((self.quality * self.in_time).sum() / len(self.slo_ms)) if len(self.slo_ms) else 0.0

    def shares(self) -> dict[str, float]:
        answered = [v for v, o in zip(self.variants, self.outcomes, strict=True) if o == "OK"]
        return {v: answered.count(v) / len(answered) for v in sorted(set(answered))} if answered else {}


class Simulation:
    """One server (ServerParams) serving `variants`, assigning calls by `policy` (module docstring)."""

    def __init__(
        self,
        variants: Sequence[VariantSpec],
        params: ServerParams,
        policy: Policy,
        default_slo_ms: float,
        router_config: RouterConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.specs = {v.name: v for v in variants}
        self.params = params
        self.policy = policy
        self.config = router_config or RouterConfig()
        self.default_slo_ms = default_slo_ms
        self.seed = seed
        self.now_s = 0.0
        self._events: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._jobs: list[_Job] = []
        self._jobs_at_s = 0.0
        self._core_version = 0
        self._busy_ms = 0.0
        self._hints: dict[float, RequestHints] = {}
        self.workers = [self._make_worker(i) for i in range(params.workers)]

    def clock(self) -> float:
        return self.now_s

    def _make_worker(self, index: int) -> _Worker:
        batchers = {name: SimBatcher(spec, index) for name, spec in self.specs.items()}
        routes = [
            VariantRoute(
                name=name,
                device=spec.device,
                quality=spec.quality,
                latency=LatencyModel(
                    spec.belief, spec.max_batch_size, self.config.correction_weight, self.config.correction_bounds
                ),
                queue=batchers[name],
            )
            for name, spec in self.specs.items()
        ]
        worker: _Worker
        # Each worker plans on its share of the cores, as the server's workers do (router.cpu).
        cpu = CpuAccount(self.config.cpu_target_utilization, share=1.0 / self.params.workers)
        threads = self.params.compute_workers or len(self.specs)
        router = ModelRouter(
            "simulated", routes, self.default_slo_ms, None, self.config, side_by_side=threads >= len(self.specs),
            clock=self.clock, cpu=cpu, loop_lag_ms=lambda: worker.lag_ms,
        )  # fmt: skip
        worker = _Worker(index, router, batchers, threads)
        return worker

    # -- the event queue ------------------------------------------------------------------

    def _at(self, time_s: float, kind: int, item: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (time_s, self._seq, kind, item))

    def run(self, arrivals: Sequence[Arrival]) -> Result:
        rng = np.random.default_rng(self.seed)
        nworkers = len(self.workers)
        picks = rng.integers(nworkers, size=len(arrivals)) if nworkers > 1 else np.zeros(len(arrivals), dtype=int)
        calls, measured_index = [], 0
        for i, arrival in enumerate(arrivals):
            index = measured_index if arrival.measured else -1
            measured_index += arrival.measured
            call = Call(index, arrival, int(picks[i]), arrival.at_s + DEADLINE_X * arrival.slo_ms / 1e3)
            calls.append(call)
            self._at(arrival.at_s, _ARRIVE, call)
        events = self._events
        start_s = arrivals[0].at_s if arrivals else 0.0
        while events:
            time_s, _, kind, item = heapq.heappop(events)
            self.now_s = time_s
            if kind == _CORE:
                if item == self._core_version:
                    self._core_done()
            elif kind == _ARRIVE:
                self._arrive(item)  # type: ignore[arg-type]
            elif kind == _DEADLINE:
                self._deadline(item)  # type: ignore[arg-type]
            elif kind == _TIMER:
                batcher: SimBatcher = item  # type: ignore[assignment]
                if batcher.timer_at == time_s:
                    batcher.timer_at = None
                    self._maybe_start(batcher)
            else:
                self._tick(item)  # type: ignore[arg-type]
        measured = [c for c in calls if c.arrival.measured]
        return Result(
            slo_ms=np.array([c.arrival.slo_ms for c in measured]),
            latency_ms=np.array([c.latency_ms for c in measured]),
            quality=np.array([self.specs[c.variant].quality if c.outcome == "OK" else 0.0 for c in measured]),
            variants=tuple(c.variant for c in measured),
            outcomes=tuple(c.outcome for c in measured),
            sim_s=self.now_s - start_s,
            busy_ms=self._busy_ms,
        )

    # -- the cores: processor sharing ------------------------------------------------------

    def _speed(self) -> float:
        asked = sum(j.threads for j in self._jobs)
        return min(1.0, self.params.cores / asked) if asked else 1.0

    def _advance(self) -> None:
        """Bring every job's work left up to now."""
        elapsed_ms = (self.now_s - self._jobs_at_s) * 1e3
        self._jobs_at_s = self.now_s
        if elapsed_ms <= 0 or not self._jobs:
            return
        speed = self._speed()
        done_ms = elapsed_ms * speed
        for job in self._jobs:
            job.left_ms -= done_ms
            self._busy_ms += done_ms * job.threads
            self.workers[job.worker].cpu_ms += done_ms * job.threads

    def _reschedule(self) -> None:
        self._core_version += 1
        if self._jobs:
            left = min(j.left_ms for j in self._jobs)
            self._at(self.now_s + max(left, 0.0) / self._speed() / 1e3, _CORE, self._core_version)

    def _add_job(self, job: _Job) -> None:
        self._advance()
        self._jobs.append(job)
        self._reschedule()

    def _core_done(self) -> None:
        self._advance()
        finished = [j for j in self._jobs if j.left_ms <= 1e-9]
        self._jobs = [j for j in self._jobs if j.left_ms > 1e-9]
        self._reschedule()
        for job in finished:
            owner = job.owner
            if isinstance(owner, SimBatcher):
                self._batch_done(owner)
            else:
                self._task_done(owner)  # type: ignore[arg-type]

    # -- the event loop ---------------------------------------------------------------------

    def _arrive(self, call: Call) -> None:
        worker = self.workers[call.worker]
        worker.in_flight += 1
        if not worker.ticking:
            self._wake(worker)
        self._at(call.deadline_s, _DEADLINE, call)
        self._loop_push(worker, (_PRE, call))

    def _loop_push(self, worker: _Worker, task: tuple[int, Call]) -> None:
        worker.tasks.append(task)
        if worker.current is None:
            self._loop_next(worker)

    def _loop_next(self, worker: _Worker) -> None:
        """Start the next task the loop has, at its cost."""
        params = self.params
        while worker.tasks:
            kind, call = worker.tasks.popleft()
            if kind == _PRE:
                cost = self._take_up(worker, call)
            elif kind == _POST:
                if call.state == _DONE:  # the caller gave up while its answer waited for the loop
                    continue
                cost, call.state = params.post_ms, _SENDING
                worker.router.observe_request(
                    call.decision,
                    (self.now_s - call.received_s) * 1e3,
                    (call.started_s - call.enqueued_s) * 1e3,
                    call.compute_ms,
                )
            else:
                cost = params.refuse_ms
            worker.current_task = (kind, call)
            worker.current = _Job(cost, 1, worker, worker.index)
            self._add_job(worker.current)
            return
        worker.current = worker.current_task = None

    def _take_up(self, worker: _Worker, call: Call) -> float:
        """The handler starts: refuse a call that is too late to serve, else decode and route."""
        now = self.now_s
        call.received_s = now
        slo_ms = call.arrival.slo_ms
        if now >= call.deadline_s:
            self._finish(worker, call, "DEADLINE")
            return self.params.refuse_ms
        waited_ms = (now - call.arrival.at_s) * 1e3
        if self.params.shed_late and waited_ms > self._wait_limit_ms(worker, slo_ms, waited_ms):
            self._finish(worker, call, "REFUSED")
            return self.params.refuse_ms
        call.state = _DECODING  # and routing: the task's end submits it
        return self.params.pre_ms

    def _wait_limit_ms(self, worker: _Worker, slo_ms: float, waited_ms: float) -> float:
        """server.observe.backlog's limit, judged on each call's true wait: the SLO, or
        WAIT_SHARE of it while waits have stayed above that for STANDING_S."""
        target = WAIT_SHARE * slo_ms
        now = self.now_s
        if waited_ms > target:
            worker.below_since[target] = None
            since = worker.above_since.get(target) or now
            worker.above_since[target] = since
            if now - since >= STANDING_S:
                worker.standing[target] = True
        else:
            worker.above_since[target] = None
            since = worker.below_since.get(target) or now
            worker.below_since[target] = since
            if now - since >= STANDING_S:
                worker.standing[target] = False
        return target if worker.standing.get(target, False) else slo_ms

    def _task_done(self, worker: _Worker) -> None:
        task = worker.current_task
        assert task is not None
        kind, call = task
        if kind == _PRE and call.state == _DECODING:
            self._route_and_submit(worker, call)
        elif kind == _POST and call.state == _SENDING:
            call.latency_ms = (self.now_s - call.arrival.at_s) * 1e3 + self.params.outside_ms
            self._finish(worker, call, "OK")
        worker.current = worker.current_task = None
        self._loop_next(worker)

    def _hints_for(self, slo_ms: float) -> RequestHints:
        hints = self._hints.get(slo_ms)
        if hints is None:
            hints = self._hints[slo_ms] = RequestHints(slo_ms, "parameter")
        return hints

    def _route_and_submit(self, worker: _Worker, call: Call) -> None:
        router, rows = worker.router, call.arrival.rows
        named = self.policy.variant(call.index) if call.index >= 0 else None  # warm-up calls are routed
        hints = self._hints_for(call.arrival.slo_ms)
        decision = router.pinned(named, rows, hints=hints) if named else router.route(hints, rows)
        call.decision, call.variant = decision, decision.variant
        batcher = worker.batchers[decision.variant]
        if self.params.shed_late and decision.shed:  # the data plane's predicted-late refusal
            router.observe_request(None)
            self._finish(worker, call, "REFUSED")
            return
        if self.now_s >= call.deadline_s:
            router.observe_timeout(decision, (self.now_s - call.received_s) * 1e3)
            self._finish(worker, call, "DEADLINE")
            return
        call.state, call.enqueued_s = _QUEUED, self.now_s
        batcher.queue.append(call)
        batcher.queued_rows += rows
        self._maybe_start(batcher)

    def _finish(self, worker: _Worker, call: Call, outcome: str) -> None:
        call.state, call.outcome = _DONE, outcome
        worker.in_flight -= 1

    def _deadline(self, call: Call) -> None:
        """The caller gives up: a queued call leaves its queue, and the router learns how long
        it waited (data plane: CancelledError). A call still waiting for the loop, or being
        decoded, is refused when its handler gets to it; one being sent is simply late."""
        if call.state in (_DONE, _WAITING, _DECODING):
            return
        worker = self.workers[call.worker]
        if call.state == _QUEUED:
            batcher = worker.batchers[call.variant]
            batcher.queue.remove(call)
            batcher.queued_rows -= call.arrival.rows
        if call.state in (_QUEUED, _RUNNING, _ANSWERING):
            assert call.decision is not None
            worker.router.observe_timeout(call.decision, (self.now_s - call.received_s) * 1e3)
        self._finish(worker, call, "DEADLINE")

    # -- batchers -------------------------------------------------------------------------

    def _maybe_start(self, batcher: SimBatcher) -> None:
        """server.core.batcher's loop: one batch at a time; wait for more up to the delay."""
        if batcher.batch or not batcher.queue:
            return
        spec = batcher.spec
        wait_until = batcher.queue[0].enqueued_s + spec.max_queue_delay_ms / 1e3
        if batcher.queued_rows < spec.max_batch_size and self.now_s < wait_until:
            if batcher.timer_at is None:
                batcher.timer_at = wait_until
                self._at(wait_until, _TIMER, batcher)
            return
        batcher.timer_at = None
        worker = self.workers[batcher.worker]
        batch, rows, tokens = [], 0, 0
        while batcher.queue:
            call = batcher.queue[0]
            if call.deadline_s <= self.now_s:  # answered DEADLINE_EXCEEDED before compute
                batcher.queue.popleft()
                batcher.queued_rows -= call.arrival.rows
                worker.router.observe_timeout(call.decision, (self.now_s - call.received_s) * 1e3)  # type: ignore[arg-type]
                self._finish(worker, call, "DEADLINE")
                self._loop_push(worker, (_ERROR, call))
                continue
            if rows + call.arrival.rows > spec.max_batch_size:
                break
            batcher.queue.popleft()
            batcher.queued_rows -= call.arrival.rows
            rows += call.arrival.rows
            tokens = max(tokens, call.arrival.tokens)
            call.state, call.started_s = _RUNNING, self.now_s
            batch.append(call)
        if not batch:
            return
        batcher.batch = batch
        batcher.running_rows, batcher.running_started_s = rows, None
        batcher.work_ms = spec.physics.ms(rows, tokens) * self.params.speed
        worker.formed.append(batcher)
        self._compute_next(worker)

    def _compute_next(self, worker: _Worker) -> None:
        """A compute thread is free and a batch is formed: the one whose earliest call is due
        first starts (the server's turns, core.turns; among equals, the first formed)."""
        while worker.free_threads and worker.formed:
            if len(worker.formed) > 1:
                batcher = min(worker.formed, key=_due_s)  # min keeps the first of equals
                worker.formed.remove(batcher)
            else:
                batcher = worker.formed.popleft()
            worker.free_threads -= 1
            batcher.running_started_s = self.now_s
            for call in batcher.batch:
                call.started_s = self.now_s  # its wait for the thread counts as queueing, as in the server
            self._add_job(_Job(batcher.work_ms, self.params.session_threads, batcher, batcher.worker))

    def _batch_done(self, batcher: SimBatcher) -> None:
        worker = self.workers[batcher.worker]
        started = batcher.running_started_s
        assert started is not None
        compute_ms = (self.now_s - started) * 1e3
        batch, rows = batcher.batch, batcher.running_rows
        batcher.batch, batcher.running_rows, batcher.running_started_s = [], 0, None
        worker.router.observe_batch(batcher.spec.name, rows, compute_ms, batcher.work_ms * self.params.session_threads)
        for call in batch:
            if call.state == _RUNNING:  # not given up meanwhile
                call.state, call.compute_ms = _ANSWERING, compute_ms
                self._loop_push(worker, (_POST, call))
        worker.free_threads += 1
        self._compute_next(worker)
        self._maybe_start(batcher)

    # -- the load monitor -------------------------------------------------------------------

    def _wake(self, worker: _Worker) -> None:
        """A call arrives at an idle worker: the monitor samples, decays the lag over the gap
        and ticks again (server.observe.load_monitor)."""
        parked = worker.parked_s if worker.parked_s is not None else self.now_s
        worker.lag_ms *= (1.0 - LAG_WEIGHT) ** ((self.now_s - parked) / TICK_S)
        self._sample(worker)
        worker.ticking, worker.parked_s = True, None
        self._at(self.now_s + TICK_S, _TICK, worker)

    def _sample(self, worker: _Worker) -> None:
        self._advance()
        worker.router.cpu.sample(worker.cpu_ms / 1e3, self.now_s, math.ceil(self.params.cores))
        worker.last_sample_s = self.now_s

    def _tick(self, worker: _Worker) -> None:
        if worker.in_flight == 0 and not worker.tasks and worker.current is None:
            self._sample(worker)  # park until the next call
            worker.ticking, worker.parked_s = False, self.now_s
            return
        late_ms = 0.0
        if worker.current is not None:  # the timer runs once the loop's current task is done
            self._advance()
            late_ms = max(worker.current.left_ms, 0.0) / self._speed()
        worker.lag_ms += LAG_WEIGHT * (late_ms - worker.lag_ms)
        if self.now_s + late_ms / 1e3 - worker.last_sample_s >= SAMPLE_PERIOD_S:
            self._sample(worker)
        self._at(self.now_s + late_ms / 1e3 + TICK_S, _TICK, worker)


def _due_s(batcher: SimBatcher) -> float:
    """When the earliest call of a formed batch is due: sent + its SLO (min over a formed batch,
    at most max_batch_size calls; runs only while batches wait for a thread)."""
    return min(call.arrival.at_s + call.arrival.slo_ms / 1e3 for call in batcher.batch)


def simulate(
    variants: Sequence[VariantSpec],
    params: ServerParams,
    policy: Policy,
    arrivals: Sequence[Arrival],
    default_slo_ms: float,
    router_config: RouterConfig | None = None,
    seed: int = 0,
) -> Result:
    """Replay `arrivals` on a fresh simulated server (see `Simulation`)."""
    return Simulation(variants, params, policy, default_slo_ms, router_config, seed).run(arrivals)
