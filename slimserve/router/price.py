"""The price of CPU time: how much quality one machine-millisecond is worth right now.

Every request sent to an expensive variant takes CPU from the requests after it. The
router charges for that with a price μ (quality per machine-millisecond per row): a
request of n rows then scores variant v as quality_v − μ · cost_v(n) / n. At μ = 0 every
request gets the most accurate variant that is in time; as μ rises, the variants that buy
little quality for much CPU drop out first.

`cpu_price` finds the smallest μ at which the traffic now arriving fits the `Budget`:
- the machine's utilization ρ (this model's demand plus what the rest of the process
  uses) stays below the target, and
- the mean queueing delay stays below `max_wait_ms`. The delay is the M/G/1 one,
  λ·E[S²] / 2(1 − ρ) (Pollaczek–Khinchine): it grows with the *square* of service times,
  so a variant with long calls (fp32 on 8 images) makes everyone wait long before the
  machine is busy. On a 2-core Xeon fp32 missed 7 % of its SLOs at ρ ≈ 0.57 and int8
  0.4 % at ρ ≈ 0.54: utilization alone cannot tell them apart.
Raising μ only ever moves a request size to a cheaper variant, so demand falls with μ, and
the answer is one of the breakpoints where some request size switches variant.

One price moves *every* request of a size across its breakpoint, though the budget may hold
many of them on the better variant: the best fixed mix (the fractional solution of the
knapsack the breakpoints walk) keeps the largest share that still fits on it. `Price`
carries that share and the price just below the breakpoint; the router prices that share
of its calls there (`RouterConfig.price_split_on`). Without it the price jumps between
variants that break even at nearly one price (minilm's int8mixed, int8 and pruned-int8),
and at 2× fp32's capacity the router answered 1.5 points under pinned int8 (simulator,
docs/routing.md).

If no price makes the traffic fit, the machine is past what it can serve in time, and some
requests will be late or refused whatever the router does. The price then maximises the
quality answered per machine-millisecond (Σ λ·quality / Σ λ·cost over the choices it
makes): going further, to the cheapest variants, would buy speed with quality where the
speed no longer makes the traffic fit.

The rates are those of the last second, and a lull inside a busy second looks like more
room than there is. So the router also prices the work queued now (`backlog_price`): μ =
backlog / (`RouterConfig.backlog_price_slo2` × the traffic's SLO²), and the higher of the two
prices applies. This is the drift-plus-penalty rule of Lyapunov optimisation (Neely,
"Stochastic Network Optimization", 2010): maximise V·quality − Q·cost per decision, with the
queue Q standing for the price, which keeps the time-average quality within O(1/V) of the
best the machine can sustain with a queue of O(V). It needs no rates, reacts within a
request to a burst and falls back to nothing as the queue drains.

Pure: rates, costs and budget in; the price out (and whether it is past saturation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# A price just past a breakpoint, so that the cheaper variant wins there.
PAST_BREAKPOINT = 1.0 + 1e-6


@dataclass(frozen=True)
class Offer:
    """A variant as the pricing sees it: quality per row and the CPU one request costs."""

    variant: str
    quality: float
    cost_ms: Callable[[int], float]  # machine-milliseconds for one request of n rows


@dataclass(frozen=True)
class Budget:
    """What the arriving traffic may use of the machine."""

    target_utilization: float  # 0..1
    rest_ms_per_s: float = 0.0  # machine-ms per second used by everything else
    max_wait_ms: float = float("inf")  # mean queueing delay allowed


@dataclass(frozen=True)
class Demand:
    """What traffic needs at some price: Σ λ·cost and Σ λ·cost² (machine-ms per second, and ms²/s)."""

    ms_per_s: float
    square_ms2_per_s: float


class Menu:
    """Every offer's cost for every request size now arriving, computed once per pricing:
    the price walks the breakpoints and weighs each size's choice at every step it tries, and
    reading `Offer.cost_ms` (a latency curve and its corrections) each time was most of the
    router's CPU per call under load (docs/routing.md, "The ceiling on the unfused build, and
    the decision under load")."""

    __slots__ = ("offers", "qualities", "sizes")

    def __init__(self, offers: Sequence[Offer], rates: Mapping[int, float]) -> None:
        self.offers = list(offers)
        self.qualities = [o.quality for o in self.offers]
        # (rows, requests/s, each offer's machine-ms for one request of that size)
        self.sizes = [(rows, rate, [o.cost_ms(rows) for o in self.offers]) for rows, rate in rates.items() if rate > 0]

    def choice(self, costs: Sequence[float], rows: int, price: float) -> int:
        """The offer a request of `rows` rows gets at `price`, by index (ties: the cheaper,
        then the first)."""
        best, best_score, best_cost = 0, -math.inf, math.inf
        for i, (quality, cost) in enumerate(zip(self.qualities, costs, strict=True)):
            score = quality - price * cost / rows
            if score > best_score or (score == best_score and cost < best_cost):
                best, best_score, best_cost = i, score, cost
        return best

    def demand(self, price: float) -> Demand:
        """What the arriving requests need at `price`."""
        ms, square = 0.0, 0.0
        for rows, rate, costs in self.sizes:
            cost = costs[self.choice(costs, rows, price)]
            ms += rate * cost
            square += rate * cost * cost
        return Demand(ms, square)

    def breakpoints(self) -> list[float]:
        """Prices at which a request of an arriving size could switch from one offer to a
        cheaper one."""
        points = []
        for rows, _, costs in self.sizes:
            for quality_a, cost_a in zip(self.qualities, costs, strict=True):
                for quality_b, cost_b in zip(self.qualities, costs, strict=True):
                    saved_ms = (cost_a - cost_b) / rows
                    if quality_a > quality_b and saved_ms > 0:
                        points.append((quality_a - quality_b) / saved_ms)
        return points

    def switches(self) -> list[float]:
        """The breakpoints at which some size's choice does change as the price rises (a
        subset of `breakpoints`, computed alike): from the choice at price 0, the cheaper
        offer whose breakpoint with it comes first (ties: the cheapest), and on from that one
        — the upper hull of the size's (cost, quality) points. Between two switches the
        choices are those of the first, so the rest of `breakpoints` change nothing."""
        points = []
        for rows, _, costs in self.sizes:
            current = self.choice(costs, rows, 0.0)
            while True:
                quality_a, cost_a = self.qualities[current], costs[current]
                step: tuple[float, float, int] | None = None  # (breakpoint, cost, offer)
                for b, (quality_b, cost_b) in enumerate(zip(self.qualities, costs, strict=True)):
                    saved_ms = (cost_a - cost_b) / rows
                    if quality_a > quality_b and saved_ms > 0:
                        candidate = ((quality_a - quality_b) / saved_ms, cost_b, b)
                        if step is None or candidate[:2] < step[:2]:
                            step = candidate
                if step is None:
                    break
                points.append(step[0])
                current = step[2]
        return points

    def quality_per_ms(self, price: float) -> float:
        """Quality answered per machine-millisecond by the choices made at `price`."""
        quality, cost = 0.0, 0.0
        for rows, rate, costs in self.sizes:
            chosen = self.choice(costs, rows, price)
            quality += rate * rows * self.qualities[chosen]
            cost += rate * costs[chosen]
        return quality / cost if cost > 0 else 0.0


def utilization(need: Demand, budget: Budget) -> float:
    return (need.ms_per_s + budget.rest_ms_per_s) / 1e3


def mean_wait_ms(need: Demand, budget: Budget) -> float:
    """M/G/1 mean queueing delay: λ·E[S²] / 2(1 − ρ); infinite at or past saturation."""
    rho = utilization(need, budget)
    return need.square_ms2_per_s / 1e3 / (2.0 * (1.0 - rho)) if rho < 1.0 else float("inf")


def fits(need: Demand, budget: Budget) -> bool:
    return utilization(need, budget) <= budget.target_utilization and mean_wait_ms(need, budget) <= budget.max_wait_ms


@dataclass(frozen=True)
class Price:
    """The price, and whether the traffic fits at any price (`saturated`: it does not).

    At `per_ms` the traffic fits; at `below_ms`, the price just below the breakpoint that
    made it fit, it does not. A share `share_below` of the calls may still be priced at
    `below_ms` (and get the better variant) with the traffic fitting: the best fixed mix at
    a breakpoint splits the calls between the two variants, where one price sends them all
    to the cheaper one (`split_share`)."""

    per_ms: float
    saturated: bool = False
    below_ms: float = 0.0
    share_below: float = 0.0


def cpu_price(offers: Sequence[Offer], rates: Mapping[int, float], budget: Budget) -> Price:
    """The smallest price at which the arriving requests fit `budget` (0: they fit as they
    are); if none does, the one with the most quality per machine-millisecond, saturated.

    Demand only falls as the price rises (module docstring), so once the traffic fits it
    fits at every higher price: the first breakpoint that fits is found by bisection."""
    if not offers:
        return Price(0.0)
    menu = Menu(offers, rates)
    at_zero = menu.demand(0.0)
    if fits(at_zero, budget):
        return Price(0.0)
    prices = sorted({p * PAST_BREAKPOINT for p in menu.breakpoints()})
    needs = {-1: at_zero}  # by index in `prices` (-1: no price)

    def need(k: int) -> Demand:
        if k not in needs:
            needs[k] = menu.demand(prices[k])
        return needs[k]

    lo, hi = 0, len(prices)  # prices[:lo] do not fit; prices[hi:] do
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(need(mid), budget):
            hi = mid
        else:
            lo = mid + 1
    if lo < len(prices):
        below = prices[lo - 1] if lo > 0 else 0.0
        return Price(prices[lo], below_ms=below, share_below=split_share(need(lo - 1), need(lo), budget))
    # Past saturation: the price answering most quality per machine-ms, the first such in
    # `prices` — which is where the choices last changed, one of the switches (or 0).
    switches = sorted({p * PAST_BREAKPOINT for p in menu.switches()})
    return Price(max([0.0, *switches], key=menu.quality_per_ms), saturated=True)


def split_share(over: Demand, within: Demand, budget: Budget) -> float:
    """The largest share f of the calls that may take the choices of `over` (a demand that
    does not fit) while the rest take those of `within` (one that does), the traffic still
    fitting. Both bounds are linear in f: utilization is, and the M/G/1 wait's bound is once
    multiplied out (λ·E[S²](f) ≤ 2W·(1 − ρ(f))), so f is the least of two ratios (it was
    found by 20 bisections, a third of the price's CPU)."""
    share = 1.0
    extra_ms_per_s = over.ms_per_s - within.ms_per_s
    if extra_ms_per_s > 0:
        room_ms_per_s = budget.target_utilization * 1e3 - budget.rest_ms_per_s - within.ms_per_s
        share = min(share, room_ms_per_s / extra_ms_per_s)
    if math.isfinite(budget.max_wait_ms):
        wait_x2 = 2.0 * budget.max_wait_ms
        slope = (over.square_ms2_per_s - within.square_ms2_per_s + wait_x2 * extra_ms_per_s) / 1e3
        if slope > 0:
            room = wait_x2 * (1.0 - utilization(within, budget)) - within.square_ms2_per_s / 1e3
            share = min(share, room / slope)
    return min(max(share, 0.0), 1.0)


def backlog_price(backlog_ms: float, price_ms2: float) -> float:
    """The price of one machine-millisecond when `backlog_ms` of work is queued or in flight
    (module docstring): quality per machine-ms per row, growing with the backlog."""
    return max(backlog_ms, 0.0) / price_ms2
