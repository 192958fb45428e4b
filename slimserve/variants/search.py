"""Hardware-aware search over int8 settings: what is fast *here* at what agreement.

Which quantization pays depends on the chip (VNNI, AMX, cores) and the network, so the
search measures instead of predicting: every candidate graph is built, scored by a cheap
proxy (agreement with the reference on calibration rows, never the held-out set) and timed
at batch 1 interleaved with the reference in the same run (speedup = reference p50 / its
p50, so a noisy neighbour slows both). It stops within its time budget and returns the
Pareto front (agreement vs speedup) of what it measured within the latency and size budgets.
`slimserve build --search` runs it (variants.search_run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from slimserve.repository.profile import profile_sessions
from slimserve.repository.sessions import make_session
from slimserve.variants.matmul_roles import roles
from slimserve.variants.mixed_int8 import MixedSettings, quantize_mixed
from slimserve.variants.pareto import Tradeoff, front
from slimserve.variants.smooth import input_maxima

log = logging.getLogger(__name__)
Scorer = Callable[[bytes], float]
Clock = Callable[[], float]
# Each candidate is timed this long beside the reference: enough for a stable median at
# minilm's 4-9 ms per call, short enough for ~10 candidates a minute.
TIMING_S = 1.5
# SmoothQuant strengths tried on every parent (None: none); 0.8 was best on minilm.
ALPHAS: tuple[float | None, ...] = (None, 0.8)


@dataclass(frozen=True)
class SearchBudget:
    """What the search may spend (`time_s`) and what a result must meet: p95 at batch 1
    and graph size (None: no limit)."""

    time_s: float
    max_p95_ms: float | None = None
    max_size_bytes: int | None = None


@dataclass(frozen=True)
class Trial:
    """One measured candidate: a parent graph quantized with `settings`."""

    parent: str
    settings: MixedSettings
    agreement: float  # the proxy: higher is better, 1.0 = the reference's own
    p50_ms: float
    p95_ms: float
    speedup: float  # reference p50 / this p50, timed in the same interleaved run
    size_bytes: int
    graph: bytes = field(repr=False, compare=False)  # b"" once off the front (QuantSearch)

    @property
    def name(self) -> str:
        return f"{self.parent}:{self.settings.label}"

    def within(self, budget: SearchBudget) -> bool:
        fast = budget.max_p95_ms is None or self.p95_ms <= budget.max_p95_ms
        return fast and (budget.max_size_bytes is None or self.size_bytes <= budget.max_size_bytes)


@dataclass
class SearchResult:
    """Every trial in the order run, the front among those within budget, and the time spent."""

    trials: list[Trial]
    front: list[Trial]
    elapsed_s: float
    stopped_early: bool  # the time budget ran out before the plan did


def pareto_front(trials: list[Trial], budget: SearchBudget) -> list[Trial]:
    """The trials within budget that no other one beats in both agreement and speedup, by
    agreement, best first. Speedup, not milliseconds: each trial is timed in its own run, and
    on a shared machine only the ratio to the reference timed beside it compares across runs."""
    eligible = [t for t in trials if t.within(budget)]
    kept = front([Tradeoff(t.name, t.agreement, 1.0 / t.speedup, 0) for t in eligible])
    return sorted((t for t in eligible if t.name in kept), key=lambda t: -t.agreement)


class QuantSearch:
    """A greedy, budgeted walk through int8 settings for each parent graph, in order.

    Per parent: (1) every MatMul dynamic, at each SmoothQuant strength in ALPHAS; the best
    strength is kept. (2) Sensitivity: each MatMul role in turn made `blockwise` (the
    precise int8, variants.mixed_int8), the rest dynamic: the agreement it buys. (3) Greedy:
    the roles made blockwise together, most agreement bought per weight first, one more at
    a time. (4) The best-agreeing graph so far with its embedding tables int8 too, and with
    its most sensitive role in float instead. Every step is a measured trial on the front's
    candidates. Before each trial the search checks it can finish one more (the mean trial
    time so far) within the budget, and stops otherwise. Progress lines say the trial
    number, elapsed time and an estimate of the time left (mean trial time × trials left in
    the plan, at most the budget left).
    """

    def __init__(
        self,
        parents: dict[str, onnx.ModelProto],
        reference: bytes,
        score: Scorer,
        calibration: dict[str, np.ndarray],
        timing_item: dict[str, np.ndarray],
        budget: SearchBudget,
        threads: int,
        clock: Clock = time.monotonic,
        timing_s: float = TIMING_S,
    ) -> None:
        self._parents, self._score, self._calibration = parents, score, calibration
        self._timing_item, self._budget, self._threads = timing_item, budget, threads
        self._clock, self._timing_s = clock, timing_s
        self._reference = make_session(reference, threads)
        self._trials: list[Trial] = []
        self._started_s = 0.0
        role_count = {name: len(roles(model)) for name, model in parents.items()}
        # (1) + (2) + (3) + (4) per parent: what the estimate of the time left counts.
        self._planned = sum(len(ALPHAS) + 2 * count - 1 + 2 for count in role_count.values())

    def run(self) -> SearchResult:
        self._started_s = self._clock()
        stopped = False
        for name, model in self._parents.items():
            if not self._parent(name, model):
                stopped = True
                break
        elapsed = self._clock() - self._started_s
        log.info("search: %d trials in %.0f s%s", len(self._trials), elapsed, " (time budget spent)" if stopped else "")
        return SearchResult(self._trials, pareto_front(self._trials, self._budget), elapsed, stopped)

    def _parent(self, name: str, model: onnx.ModelProto) -> bool:
        """Every step for one parent; False when the time budget stopped it."""
        maxima = input_maxima(model, self._calibration, self._threads)
        steps = self._steps(name, model)
        settings = next(steps)
        while True:
            if not self._time_for_one_more():
                return False
            trial = self._trial(name, model, settings, maxima)
            try:
                settings = steps.send(trial)
            except StopIteration:
                return True

    def _steps(self, name: str, model: onnx.ModelProto) -> Generator[MixedSettings, Trial, None]:
        """The settings to try, each chosen after the previous trial's result (sent back)."""
        by_alpha: list[Trial] = []
        for alpha in ALPHAS:
            by_alpha.append((yield MixedSettings(alpha=alpha)))
        base = max(by_alpha, key=lambda t: t.agreement)
        alpha = base.settings.alpha
        weights = {role: sum(m.count for m in found) for role, found in roles(model).items()}
        gain: dict[str, float] = {}
        for role in weights:
            trial = yield MixedSettings(alpha=alpha, by_role=((role, "blockwise"),))
            gain[role] = trial.agreement - base.agreement
        order = sorted(weights, key=lambda role: gain[role] / weights[role], reverse=True)
        for count in range(2, len(order) + 1):
            yield MixedSettings(alpha=alpha, by_role=tuple((role, "blockwise") for role in order[:count]))
        chosen = max((t for t in self._trials if t.parent == name), key=lambda t: t.agreement).settings
        yield replace(chosen, embedding_int8=True)
        others = tuple((role, p) for role, p in chosen.by_role if role != order[0])
        yield replace(chosen, by_role=(*others, (order[0], "float")))

    def _trial(
        self, parent: str, model: onnx.ModelProto, settings: MixedSettings, maxima: dict[str, np.ndarray]
    ) -> Trial:
        graph = quantize_mixed(model, settings, maxima)
        agreement = self._score(graph)
        sessions = {"reference": self._reference, "candidate": make_session(graph, self._threads)}
        latency = profile_sessions(sessions, lambda _n: self._timing_item, [1], self._timing_s, bars=False)
        reference, candidate = latency["reference"][1], latency["candidate"][1]
        trial = Trial(
            parent, settings, agreement, candidate.p50_ms, candidate.p95_ms,
            reference.p50_ms / candidate.p50_ms, len(graph), graph,
        )  # fmt: skip
        self._trials.append(trial)
        # Only the front's graphs are kept: minilm's are 20-60 MB each, and a search runs dozens.
        kept = {t.name for t in pareto_front(self._trials, self._budget)}
        self._trials = [t if t.name in kept or not t.graph else replace(t, graph=b"") for t in self._trials]
        elapsed = self._clock() - self._started_s
        log.info(
            "search trial=%d/%d elapsed_s=%.0f remaining_s=%.0f %s agreement=%.4f speedup=%.2f p95_ms=%.2f "
            "size_mb=%.1f",
            len(self._trials), self._planned, elapsed, self._remaining_s(elapsed), trial.name, agreement,
            trial.speedup, trial.p95_ms, trial.size_bytes / 1e6,
        )  # fmt: skip
        return trial

    def _mean_trial_s(self, elapsed: float) -> float:
        return elapsed / len(self._trials) if self._trials else 0.0

    def _remaining_s(self, elapsed: float) -> float:
        left = max(0, self._planned - len(self._trials)) * self._mean_trial_s(elapsed)
        return min(left, max(0.0, self._budget.time_s - elapsed))

    def _time_for_one_more(self) -> bool:
        elapsed = self._clock() - self._started_s
        return elapsed + self._mean_trial_s(elapsed) <= self._budget.time_s
