"""The calls a simulation replays: trace windows at a load, SLO classes as the real bench draws them.

`make bench-router` (loadtest/bench_router.py) sends, for each arrival of a trace window
time-compressed to `scale` × fp32's capacity, an interactive call (SLO INTERACTIVE_X ×
fp32's batch-1 round trip) or a background one (BACKGROUND_X ×), each with probability ½,
drawn from `np.random.default_rng(seed)` together with the held-out input of each call.
`bench_kinds` repeats those draws exactly, so that a simulated cell replays the very calls
a measured one sent. Its input length is the trace's ContextTokens clipped to MAX_TOKENS.

Before the window, the bench warmed every server up (2 s of routed calls near capacity)
and other segments ran on the same server; `warm_up` stands for that history: the router
starts the window with its corrections, ratios and overhead learned, not from the profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimserve.simulate.engine import Arrival
from slimserve.simulate.server import ServerParams, VariantSpec
from slimserve.simulate.trace import Trace

INTERACTIVE_X, BACKGROUND_X = 3.0, 10.0  # SLOs, in fp32's batch-1 round trip (loadtest/bench_router.py)
MAX_TOKENS = 128  # the bench clips every input to this many tokens
HELD_OUT_SENTENCES = 1684  # minilm's held-out sentences, one drawn per call (its draw follows the kind's)
WARM_UP_S = 2.0  # routed calls before the window, at WARM_UP_LOAD × fp32's capacity
WARM_UP_LOAD = 1.0
PAUSE_S = 2.0  # quiet between the warm-up and the window (the bench's --pause-seconds)


@dataclass(frozen=True)
class SloClasses:
    """The two kinds of call and their SLOs (ms)."""

    interactive_ms: float
    background_ms: float

    @classmethod
    def from_round_trip(cls, fp32_round_trip_ms: float) -> SloClasses:
        return cls(INTERACTIVE_X * fp32_round_trip_ms, BACKGROUND_X * fp32_round_trip_ms)


def bench_kinds(count: int, seed: int, held_out: int = HELD_OUT_SENTENCES) -> np.ndarray:
    """Whether each of `count` calls is interactive, as `build_requests` draws it for `seed`."""
    rng = np.random.default_rng(seed)
    kinds = np.empty(count, dtype=bool)
    for i in range(count):
        kinds[i] = rng.random() < 0.5
        rng.integers(held_out)  # the input drawn next, which moves the generator on
    return kinds


def window_arrivals(
    window: Trace, rate_rps: float, slo: SloClasses, seed: int, offset_s: float = 0.0, max_tokens: int = MAX_TOKENS
) -> list[Arrival]:
    """The calls of one trace window at `rate_rps`, kinds as the bench draws them for `seed`."""
    times = window.at_rate(rate_rps) + offset_s
    kinds = bench_kinds(len(times), seed)
    return [
        Arrival(float(t), slo.interactive_ms if k else slo.background_ms, int(min(max(tokens, 1), max_tokens)))
        for t, k, tokens in zip(times, kinds, window.context_tokens, strict=True)
    ]


def warm_up(rate_rps: float, slo: SloClasses, seed: int, seconds: float = WARM_UP_S) -> list[Arrival]:
    """Poisson calls at `rate_rps` for `seconds`, half of each kind, not measured, full length."""
    rng = np.random.default_rng(seed + 7919)
    times = np.cumsum(rng.exponential(1.0 / rate_rps, size=max(int(rate_rps * seconds * 2), 1)))
    times = times[times < seconds]
    kinds = rng.random(len(times)) < 0.5
    return [
        Arrival(float(t), slo.interactive_ms if k else slo.background_ms, MAX_TOKENS, measured=False)
        for t, k in zip(times, kinds, strict=True)
    ]


def replay(window: Trace, rate_rps: float, slo: SloClasses, seed: int, warm_rate_rps: float) -> list[Arrival]:
    """The warm-up, a pause, then the window (the calls a simulated bench segment sends)."""
    before = warm_up(warm_rate_rps, slo, seed) if warm_rate_rps > 0 else []
    return [*before, *window_arrivals(window, rate_rps, slo, seed, offset_s=WARM_UP_S + PAUSE_S)]


def round_trip_ms(spec: VariantSpec, params: ServerParams, tokens: int = MAX_TOKENS) -> float:
    """One call alone on an idle server: the loop's work, the session call, the outside."""
    return params.pre_ms + spec.physics.ms(1, tokens) * params.speed + params.post_ms + params.outside_ms


def capacity_rps(spec: VariantSpec, params: ServerParams, tokens: int = MAX_TOKENS) -> float:
    """Calls per second `spec` serves alone with full batches, every core busy (the bench
    measures fp32's closed loop with 32 callers, which keeps its batches full)."""
    per_call_ms = params.overhead_ms + spec.physics.ms(spec.max_batch_size, tokens) * params.speed / spec.max_batch_size
    return 1e3 * params.cores / per_call_ms
