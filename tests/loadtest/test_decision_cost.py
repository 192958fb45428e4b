"""The decision-cost benchmark's cases are what they say they are (the costs are a benchmark's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.decision_cost import BUSY_SHARE, CALL_GAP_S, SATURATED_SHARE, RouterUnderLoad, decision_cost_us
from slimserve.repository.format import ModelEntry
from slimserve.router.hints import RequestHints


@pytest.mark.parametrize("share", [BUSY_SHARE, SATURATED_SHARE])
def test_under_load_every_call_takes_a_new_snapshot_and_a_price(minilm: ModelEntry, share: float) -> None:
    key = next(iter(minilm.variants[minilm.config.reference_variant].manifest.profiles))
    loaded = RouterUnderLoad(minilm, key, RequestHints(slo_ms=60.0, slo_source="parameter"), share)
    prices, saturated = [], []
    for i in range(400):
        loaded.call(i)
        snapshot = loaded.router.snapshot()
        assert snapshot.taken_s == loaded.now_s  # taken by this call, not kept from the last
        prices.append(snapshot.price)
        saturated.append(snapshot.saturated)
    assert loaded.now_s == pytest.approx(400 * CALL_GAP_S)
    assert loaded.router.cpu.sampled and min(prices[100:]) > 0.0  # the traffic does not fit at price 0
    past_warm_up = saturated[100:]  # the saturated case's price finds no fit nearly every call
    assert sum(past_warm_up) >= 0.9 * len(past_warm_up) if share == SATURATED_SHARE else not any(past_warm_up)


def test_the_three_costs_are_measured_with_every_variant_or_some(repository: Path) -> None:
    for variants in (None, ["fp32", "int8"]):
        cost = decision_cost_us(repository, calls=50, variants=variants)
        assert min(cost.new_snapshot_us, cost.under_load_us, cost.saturated_us, cost.cached_us) > 0.0
        assert "under load" in cost.text()
