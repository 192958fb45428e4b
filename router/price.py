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
the answer is one of the breakpoints where some request size switches variant. Switching
a whole request size at once overshoots (both sizes of a two-size mix often switch at
nearly the same μ), so the answer also says which share of the traffic may keep the
choices of the breakpoint below: the fractional knapsack's split item.

Pure: rates, costs and budget in; a `Price` out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# A price just past a breakpoint: the cheaper variant wins, by a margin the caller must not
# treat as a tie (the router charges it with no tie band).
PAST_BREAKPOINT = 1.0 + 1e-6
SPLIT_STEPS = 20  # bisection steps for the share kept at the lower price


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

    def mixed(self, other: Demand, share: float) -> Demand:
        """`share` of the traffic as in `other`, the rest as in this one."""
        return Demand(
            self.ms_per_s + share * (other.ms_per_s - self.ms_per_s),
            self.square_ms2_per_s + share * (other.square_ms2_per_s - self.square_ms2_per_s),
        )


@dataclass(frozen=True)
class Price:
    """The price to charge, and the share of requests that may be charged `lower` instead."""

    price: float
    lower: float = 0.0
    lower_share: float = 0.0


FREE = Price(0.0)


def pick(offers: Sequence[Offer], rows: int, price: float) -> Offer:
    """The variant a request of `rows` rows gets at `price`, in time or not (ties: cheaper)."""
    return max(offers, key=lambda o: (o.quality - price * o.cost_ms(rows) / rows, -o.cost_ms(rows)))


def demand(offers: Sequence[Offer], rates: Mapping[int, float], price: float) -> Demand:
    """What the arriving requests (`rates`: rows → requests/s) need at `price`."""
    ms, square = 0.0, 0.0
    for rows, rate in rates.items():
        if rate > 0:
            cost = pick(offers, rows, price).cost_ms(rows)
            ms += rate * cost
            square += rate * cost * cost
    return Demand(ms, square)


def utilization(need: Demand, budget: Budget) -> float:
    return (need.ms_per_s + budget.rest_ms_per_s) / 1e3


def mean_wait_ms(need: Demand, budget: Budget) -> float:
    """M/G/1 mean queueing delay: λ·E[S²] / 2(1 − ρ); infinite at or past saturation."""
    rho = utilization(need, budget)
    return need.square_ms2_per_s / 1e3 / (2.0 * (1.0 - rho)) if rho < 1.0 else float("inf")


def fits(need: Demand, budget: Budget) -> bool:
    return utilization(need, budget) <= budget.target_utilization and mean_wait_ms(need, budget) <= budget.max_wait_ms


def breakpoints(offers: Sequence[Offer], rows: int) -> list[float]:
    """Prices at which a request of `rows` rows could switch from one variant to a cheaper one."""
    points = []
    for a in offers:
        for b in offers:
            saved_ms = (a.cost_ms(rows) - b.cost_ms(rows)) / rows
            if a.quality > b.quality and saved_ms > 0:
                points.append((a.quality - b.quality) / saved_ms)
    return points


def cpu_price(offers: Sequence[Offer], rates: Mapping[int, float], budget: Budget) -> Price:
    """The smallest price at which the arriving requests fit `budget` (free: they fit as they
    are), with the share that may keep the previous breakpoint's choices. If even the
    cheapest variants do not fit, the price that sends every request size to its cheapest."""
    if not offers or fits(demand(offers, rates, 0.0), budget):
        return FREE
    sizes = [rows for rows, rate in rates.items() if rate > 0]
    prices = sorted({p * PAST_BREAKPOINT for rows in sizes for p in breakpoints(offers, rows)})
    lower = 0.0
    for price in prices:
        need = demand(offers, rates, price)
        if fits(need, budget):
            return Price(price, lower, _lower_share(need, demand(offers, rates, lower), budget))
        lower = price
    return Price(prices[-1]) if prices else FREE


def _lower_share(need: Demand, lower_need: Demand, budget: Budget) -> float:
    """The largest share of traffic that may take the lower price's choices and still fit."""
    low, high = 0.0, 1.0
    for _ in range(SPLIT_STEPS):
        middle = (low + high) / 2
        if fits(need.mixed(lower_need, middle), budget):
            low = middle
        else:
            high = middle
    return low
