"""The CPU price: the smallest price at which the arriving traffic fits the budget."""

from __future__ import annotations

import numpy as np
import pytest

from slimserve.router.price import (
    PAST_BREAKPOINT,
    Budget,
    Demand,
    Menu,
    Offer,
    Price,
    cpu_price,
    fits,
    mean_wait_ms,
    split_share,
)

OVERHEAD_MS = 1.0


def offer(variant: str, quality: float, ms_per_row: float) -> Offer:
    return Offer(variant, quality, lambda rows: OVERHEAD_MS + ms_per_row * rows)


# The menu's readings, one question at a time (cpu_price asks them of one Menu).
def pick(offers: list[Offer], rows: int, price: float) -> Offer:
    menu = Menu(offers, {rows: 1.0})
    return menu.offers[menu.choice(menu.sizes[0][2], rows, price)]


def demand(offers: list[Offer], rates: dict[int, float], price: float) -> Demand:
    return Menu(offers, rates).demand(price)


def breakpoints(offers: list[Offer], rows: int) -> list[float]:
    return Menu(offers, {rows: 1.0}).breakpoints()


def quality_per_ms(offers: list[Offer], rates: dict[int, float], price: float) -> float:
    return Menu(offers, rates).quality_per_ms(price)


OFFERS = [offer("fp32", 1.000, 0.6), offer("int8", 0.998, 0.25), offer("distilled", 0.995, 0.03)]
RATES = {1: 100.0, 8: 100.0}  # fp32: 100 × 1.6 + 100 × 5.8 = 740 machine-ms/s


def test_traffic_that_fits_pays_nothing_and_gets_the_best_variant() -> None:
    assert demand(OFFERS, RATES, 0.0).ms_per_s == pytest.approx(740.0)
    assert cpu_price(OFFERS, RATES, Budget(0.8)).per_ms == 0.0


def test_the_price_is_the_smallest_that_fits_and_moves_the_cheapest_quality_first() -> None:
    budget = Budget(0.5)
    price = cpu_price(OFFERS, RATES, budget).per_ms
    assert price > 0
    assert fits(demand(OFFERS, RATES, price), budget)
    # fp32 → int8 costs 0.002 quality for 0.35 ms/row: the first step down, for both sizes.
    assert {pick(OFFERS, rows, price).variant for rows in RATES} == {"int8"}
    # Just below it, nothing has moved yet, and that did not fit.
    assert not fits(demand(OFFERS, RATES, price / 1.001), budget)


def test_a_share_of_the_calls_keeps_the_better_variant_where_the_mix_still_fits() -> None:
    budget = Budget(0.5)  # all fp32 is 740 machine-ms/s, all int8 (at the price) 425
    price = cpu_price(OFFERS, RATES, budget)
    assert (price.below_ms, price.saturated) == (0.0, False)  # below it: fp32 for both sizes
    over, within = demand(OFFERS, RATES, price.below_ms), demand(OFFERS, RATES, price.per_ms)
    # Utilization binds here (the M/G/1 wait is unbounded): f × 740 + (1 − f) × 425 = 500.
    assert price.share_below == pytest.approx((500 - 425) / (740 - 425), abs=1e-5)
    assert split_share(over, within, budget) == price.share_below
    # A bound on the wait binds first and leaves a smaller share.
    waiting = Budget(0.5, max_wait_ms=1.0)
    share = split_share(over, within, waiting)
    assert 0.0 < share < price.share_below
    mixed = Demand(
        share * over.ms_per_s + (1 - share) * within.ms_per_s,
        share * over.square_ms2_per_s + (1 - share) * within.square_ms2_per_s,
    )
    assert mean_wait_ms(mixed, waiting) == pytest.approx(1.0, rel=1e-4)
    # Where the traffic just fits at the price, no share is left; where all of it would fit
    # below, all of it may go.
    assert split_share(over, Demand(500.0, 0.0), budget) == 0.0
    assert split_share(within, within, budget) == pytest.approx(1.0, abs=1e-5)


def test_long_service_times_are_priced_out_before_the_machine_is_busy() -> None:
    # 40 % busy on fp32 is fine for utilization, but its 5.8-ms calls make the mean wait 2.3 ms.
    light = {1: 50.0, 8: 50.0}
    fp32 = demand(OFFERS, light, 0.0)
    assert fp32.ms_per_s == pytest.approx(370.0)
    assert mean_wait_ms(fp32, Budget(0.8)) == pytest.approx((50 * 1.6**2 + 50 * 5.8**2) / 1e3 / (2 * 0.63))
    assert cpu_price(OFFERS, light, Budget(0.8)).per_ms == 0.0
    strict = Budget(0.8, max_wait_ms=1.0)
    assert cpu_price(OFFERS, light, strict).per_ms > 0
    # The rest of the process counts towards utilization, and so towards the wait too.
    assert mean_wait_ms(fp32, Budget(0.8, rest_ms_per_s=300.0)) > mean_wait_ms(fp32, Budget(0.8))
    assert mean_wait_ms(Demand(900.0, 1.0), Budget(0.8, rest_ms_per_s=200.0)) == float("inf")


def test_more_traffic_raises_the_price_until_everything_runs_on_the_most_efficient() -> None:
    budget = Budget(0.5)
    prices = [cpu_price(OFFERS, {1: rate, 8: rate}, budget).per_ms for rate in (50.0, 100.0, 150.0, 400.0)]
    assert prices == sorted(prices) and prices[0] == 0.0 < prices[1]
    flooded = {1: 400.0, 8: 400.0}  # does not fit even on distilled, which answers most quality per ms
    assert not fits(demand(OFFERS, flooded, prices[-1]), budget)
    assert {pick(OFFERS, rows, prices[-1]).variant for rows in flooded} == {"distilled"}


def test_no_arrivals_or_no_offers_cost_nothing() -> None:
    assert cpu_price(OFFERS, {}, Budget(0.1)) == Price(0.0, saturated=False)
    assert cpu_price(OFFERS, {1: 0.0}, Budget(0.1)) == Price(0.0)
    assert cpu_price([], {1: 100.0}, Budget(0.1)) == Price(0.0)


def test_a_variant_no_better_and_no_cheaper_never_sets_a_price() -> None:
    twins = [offer("int8", 0.998, 0.25), offer("pruned", 0.998, 0.24)]
    assert breakpoints(twins, 8) == []
    assert pick(twins, 8, 0.0).variant == "pruned"  # same quality: the cheaper one


def test_past_saturation_the_price_keeps_the_variant_with_the_most_quality_per_millisecond() -> None:
    # As minilm's variants are on an AVX-512 EPYC: distilled is a little cheaper than int8 but
    # retrieves the right sentence far less often. Cheaper cannot make this traffic fit.
    offers = [offer("fp32", 1.0, 2.0), offer("int8", 0.91, 1.0), offer("distilled", 0.70, 0.9)]
    flooded = {1: 2_000.0}
    saturated = cpu_price(offers, flooded, Budget(0.6))
    assert saturated.saturated
    price = saturated.per_ms
    assert not fits(demand(offers, flooded, price), Budget(0.6))
    assert pick(offers, 1, price).variant == "int8"  # 0.91 / 2 ms beats 0.70 / 1.9 ms and 1.0 / 3 ms
    assert quality_per_ms(offers, flooded, price) == pytest.approx(0.91 / 2.0)


def _price_by_walking(offers: list[Offer], rates: dict[int, float], budget: Budget) -> Price:
    """The price as its definition reads: every breakpoint in turn, from the cheapest."""
    below, over = 0.0, demand(offers, rates, 0.0)
    if fits(over, budget):
        return Price(0.0)
    prices = sorted(
        {p * PAST_BREAKPOINT for rows, rate in rates.items() if rate > 0 for p in breakpoints(offers, rows)}
    )
    for price in prices:
        need = demand(offers, rates, price)
        if fits(need, budget):
            return Price(price, below_ms=below, share_below=split_share(over, need, budget))
        below, over = price, need
    return Price(max([0.0, *prices], key=lambda price: quality_per_ms(offers, rates, price)), saturated=True)


def test_the_bisected_price_is_the_first_breakpoint_that_fits() -> None:
    """cpu_price bisects the breakpoints, since demand only falls as the price rises: on
    random menus, traffic and budgets it finds what walking every breakpoint finds."""
    rng = np.random.default_rng(7)
    kinds = {"fits at 0": 0, "priced": 0, "saturated": 0}
    for _ in range(400):
        offers = [
            offer(f"v{i}", float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.05, 3.0)))
            for i in range(int(rng.integers(1, 8)))
        ]
        rates = {int(rows): float(rng.uniform(0.0, 60.0)) for rows in rng.choice([1, 2, 4, 8, 16], size=3)}
        budget = Budget(float(rng.uniform(0.2, 1.0)), float(rng.uniform(0.0, 100.0)), float(rng.uniform(0.5, 50.0)))
        walked = _price_by_walking(offers, rates, budget)
        assert cpu_price(offers, rates, budget) == walked
        kinds["saturated" if walked.saturated else "priced" if walked.per_ms else "fits at 0"] += 1
    assert min(kinds.values()) >= 40, kinds  # every branch was exercised


def _share_by_bisection(over: Demand, within: Demand, budget: Budget) -> float:
    """split_share as its definition reads: the largest share that still fits, to 2⁻³⁰."""
    lo, hi = 0.0, 1.0
    for _ in range(30):
        share = (lo + hi) / 2
        mixed = Demand(
            share * over.ms_per_s + (1 - share) * within.ms_per_s,
            share * over.square_ms2_per_s + (1 - share) * within.square_ms2_per_s,
        )
        lo, hi = (share, hi) if fits(mixed, budget) else (lo, share)
    return lo


def test_the_split_share_in_closed_form_is_the_largest_share_that_fits() -> None:
    rng = np.random.default_rng(11)
    bound = {"utilization": 0, "wait": 0, "none": 0}
    for _ in range(500):
        within = Demand(float(rng.uniform(50.0, 600.0)), float(rng.uniform(10.0, 4000.0)))
        over = Demand(
            within.ms_per_s + float(rng.uniform(1.0, 600.0)), within.square_ms2_per_s * float(rng.uniform(1.0, 6.0))
        )
        budget = Budget(
            float(rng.uniform(0.5, 1.0)),
            float(rng.uniform(0.0, 200.0)),
            float(rng.choice([rng.uniform(0.5, 20.0), np.inf])),
        )
        if not fits(within, budget):
            continue
        share = split_share(over, within, budget)
        assert share == pytest.approx(_share_by_bisection(over, within, budget), abs=1e-8)
        loose = Budget(budget.target_utilization, budget.rest_ms_per_s)
        binds = "none" if share == 1.0 else "utilization" if split_share(over, within, loose) == share else "wait"
        bound[binds] += 1
    assert min(bound.values()) >= 20, bound  # each bound, and neither, decided some
