"""The int8 settings search on a tiny graph with real ONNX Runtime (variants.search): its
plan, its time budget on an injected clock, and the front it returns."""

from __future__ import annotations

import itertools

import numpy as np

from slimserve.repository.sessions import make_session, run_batched
from slimserve.variants.mixed_int8 import MixedSettings
from slimserve.variants.search import ALPHAS, QuantSearch, SearchBudget, Trial, pareto_front
from tests.variants.tiny_encoder import ROLES, tiny_encoder, token_rows

TIMING_S = 0.02


def _search(budget: SearchBudget, clock: object = None) -> QuantSearch:
    model = tiny_encoder()
    reference = model.SerializeToString()
    rows = token_rows(32)
    expected = run_batched(make_session(reference, 1), rows)

    def fidelity(graph: bytes) -> float:
        got = run_batched(make_session(graph, 1), rows)
        return 1.0 - float(np.linalg.norm(got - expected) / np.linalg.norm(expected))

    extra = {} if clock is None else {"clock": clock}
    return QuantSearch({"fp32": model}, reference, fidelity, token_rows(32, seed=2), token_rows(1),
                       budget, threads=1, timing_s=TIMING_S, **extra)  # type: ignore[arg-type]  # fmt: skip


def test_the_whole_plan_runs_within_a_large_budget() -> None:
    result = _search(SearchBudget(time_s=600)).run()
    # (1) each strength, (2) each role alone, (3) the roles together, (4) embeddings, float.
    assert len(result.trials) == len(ALPHAS) + len(ROLES) + (len(ROLES) - 1) + 2
    assert not result.stopped_early
    labels = [t.settings.label for t in result.trials]
    assert len(set(labels)) == len(labels), labels  # no setting measured twice
    assert any(t.settings.embedding_int8 for t in result.trials)
    best = max(result.trials, key=lambda t: t.agreement)
    assert best.agreement > max(t.agreement for t in result.trials[: len(ALPHAS)])
    assert result.front and set(result.front) <= set(result.trials)
    assert all(t.graph for t in result.front)  # the front keeps its graphs, the rest are dropped
    assert not any(t.graph for t in result.trials if t not in result.front)


def test_it_stops_within_its_time_budget() -> None:
    ticks = itertools.count(step=10.0)  # every look at the clock: 10 s later
    result = _search(SearchBudget(time_s=100), clock=lambda: next(ticks)).run()
    assert result.stopped_early
    assert 1 <= len(result.trials) < len(ALPHAS) + 2 * len(ROLES) + 1
    assert result.elapsed_s <= 100 + 10 * 3  # one trial's clock reads past the last check at most


def _trial(name: str, agreement: float, p50_ms: float, size_bytes: int = 1000) -> Trial:
    settings = MixedSettings(by_role=((name, "float"),))
    return Trial("fp32", settings, agreement, p50_ms, p50_ms * 1.2, 10 / p50_ms, size_bytes, b"")


def test_the_front_keeps_what_nothing_beats_within_budget() -> None:
    fast, precise, dominated, big = (
        _trial("a", 0.90, 4.0), _trial("b", 0.99, 6.0), _trial("c", 0.95, 7.0), _trial("d", 1.0, 3.0, 10**9),
    )  # fmt: skip
    trials = [fast, precise, dominated, big]
    assert pareto_front(trials, SearchBudget(time_s=1, max_size_bytes=10**6)) == [precise, fast]
    assert pareto_front(trials, SearchBudget(time_s=1)) == [big]
    # p95 of `precise` is 7.2 ms: over a 7 ms budget, so `fast` alone is left.
    assert pareto_front(trials, SearchBudget(time_s=1, max_p95_ms=7.0, max_size_bytes=10**6)) == [fast]
