"""What any router could reach on a window: the hindsight-best fixed mix, and a fluid upper bound.

**Hindsight-best mix.** A fixed mix sends each call to variant v with probability w_v (one
seeded uniform draw per call, the same draws for every mix: common random numbers), as
calls that name a variant. `best_mix` searches the weights in simulation on the very
window it is judged on — hindsight no router has — by coordinate search over the simplex:
from the best single variant, move a step of weight from one variant to another while that
raises effective accuracy, halving the step (0.5, 0.25, … down to MIN_STEP) when no move
does. Only Pareto-efficient variants take part (`efficient`): a variant that is both less
accurate and costlier per row than another at every batch size is replaced by that one in
any mix at no loss.

**Fluid bound.** Ignore queueing, bursts and batching delays; let every call cost the least
CPU it could (the per-call overhead plus its variant's cheapest per-row service time at
its length, over every batch size) and let the machine be busy all the time from the first
arrival until the last call's SLO runs out. Then the effective accuracy of any policy is at
most the value of the linear programme

    maximise Σ_v s_v·q_v  subject to  Σ_v s_v ≤ 1,  Σ_v s_v·N·c_v ≤ cores·T,  s ≥ 0

(s_v: share of the N calls answered in time by v; c_v: its least cost; T: that span, in
ms). With two constraints an optimum has at most two variants, so it is found exactly by
trying every variant and every pair (no solver needed).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from slimserve.simulate.engine import Arrival
from slimserve.simulate.server import ServerParams, VariantSpec

MIN_STEP = 0.125  # the finest weight step of the mix search (0.5, 0.25, 0.125)
Evaluate = Callable[[dict[str, float]], float]  # weights → effective accuracy on the window


def efficient(specs: Sequence[VariantSpec], tokens: int) -> list[VariantSpec]:
    """The variants no other beats on both quality and cost per row at every batch size."""

    def dominates(a: VariantSpec, b: VariantSpec) -> bool:
        sizes = range(1, min(a.max_batch_size, b.max_batch_size) + 1)
        cheaper = all(a.physics.ms(n, tokens) <= b.physics.ms(n, tokens) for n in sizes)
        return a.quality >= b.quality and cheaper and (a.quality, a.name) != (b.quality, b.name)

    return [b for b in specs if not any(dominates(a, b) for a in specs if a is not b)]


@dataclass(frozen=True)
class MixResult:
    weights: dict[str, float]
    effective_accuracy: float
    evaluations: int


def best_mix(names: Sequence[str], evaluate: Evaluate, min_step: float = MIN_STEP) -> MixResult:
    """Coordinate search over the simplex of `names` (module docstring)."""
    cache: dict[tuple[float, ...], float] = {}

    def value(weights: dict[str, float]) -> float:
        key = tuple(round(weights[n], 6) for n in names)
        if key not in cache:
            cache[key] = evaluate({n: w for n, w in weights.items() if w > 1e-9})
        return cache[key]

    singles = [{n: 1.0 if n == m else 0.0 for n in names} for m in names]
    best = max(singles, key=value)
    step = 0.5
    while step >= min_step - 1e-12:
        improved = True
        while improved:
            improved = False
            for src, dst in itertools.permutations(names, 2):
                moved = min(step, best[src])
                if moved <= 1e-9:
                    continue
                trial = dict(best)
                trial[src] -= moved
                trial[dst] += moved
                if value(trial) > value(best) + 1e-12:
                    best, improved = trial, True
        step /= 2
    return MixResult({n: w for n, w in best.items() if w > 1e-9}, value(best), len(cache))


@dataclass(frozen=True)
class Bound:
    shares: dict[str, float]
    effective_accuracy: float


def fluid_bound(specs: Sequence[VariantSpec], params: ServerParams, arrivals: Sequence[Arrival]) -> Bound:
    """The LP of the module docstring over the measured calls of `arrivals`."""
    calls = [a for a in arrivals if a.measured]
    if not calls:
        return Bound({}, 0.0)
    span_ms = (max(a.at_s + a.slo_ms / 1e3 for a in calls) - min(a.at_s for a in calls)) * 1e3
    budget = params.cores * span_ms / len(calls)  # machine-ms per call
    cost = {
        s.name: params.overhead_ms
        + sum(s.physics.min_ms_per_row(a.tokens, s.max_batch_size) * a.rows for a in calls) / len(calls) * params.speed
        for s in specs
    }
    quality = {s.name: s.quality for s in specs}
    best = Bound({}, 0.0)
    for name in cost:  # one variant: as many calls as fit, at most all
        share = min(1.0, budget / cost[name])
        if share * quality[name] > best.effective_accuracy:
            best = Bound({name: share}, share * quality[name])
    for a, b in itertools.combinations(cost, 2):  # two variants, both constraints tight
        det = cost[b] - cost[a]
        if abs(det) < 1e-12:
            continue
        s_a = (cost[b] - budget) / det
        s_b = 1.0 - s_a
        if 0.0 <= s_a <= 1.0:
            value = s_a * quality[a] + s_b * quality[b]
            if value > best.effective_accuracy:
                best = Bound({a: s_a, b: s_b}, value)
    return best
