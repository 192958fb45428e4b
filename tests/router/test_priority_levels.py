"""The router's view of a queue served by priority level: a request of level k waits only
behind the rows queued at levels 1..k of its own variant (fake clock, fake queues)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from slimserve.router.config import RouterConfig
from slimserve.router.hints import RequestHints
from slimserve.router.latency import LatencyModel, ServiceCurve
from slimserve.router.model_router import ModelRouter, VariantRoute
from slimserve.router.policy import WITHIN_SLO
from tests.router.fakes import FakeClock, FakeQueue

CURVES = {  # ms per batch of 1, 8, 32
    "fp32": ServiceCurve.of({1: 1.0, 8: 5.0, 32: 18.0}),
    "int8": ServiceCurve.of({1: 0.4, 8: 2.0, 32: 7.0}),
}
QUALITY = {"fp32": 1.0, "int8": 0.998}


@dataclass
class LevelledQueue:
    """A batcher's queue state by priority level (level 1's rows first), set by the test."""

    rows_by_level: tuple[int, ...] = (0, 0, 0)
    running_rows: int = 0
    running_started_s: float | None = None

    @property
    def queued_rows(self) -> int:
        return sum(self.rows_by_level)


def make_router(
    queues: dict[str, LevelledQueue] | dict[str, FakeQueue], config: RouterConfig | None = None
) -> ModelRouter:
    routes = [VariantRoute(n, "cpu", QUALITY[n], LatencyModel(c, 32), queues[n]) for n, c in CURVES.items()]
    config = config or RouterConfig(rpc_allowance_ms=0.0)
    return ModelRouter("digits", routes, 20.0, config=config, clock=FakeClock())


def predicted_ms(router: ModelRouter, variant: str, level: int) -> float:
    return router.pinned(variant, 1, level).predicted_ms


def test_a_high_priority_request_waits_only_behind_its_level_and_higher() -> None:
    queues = {"fp32": LevelledQueue((8, 0, 64)), "int8": LevelledQueue((0, 0, 32))}
    router = make_router(queues)
    behind_eight = make_router({"fp32": LevelledQueue((8, 0, 0)), "int8": LevelledQueue((0, 0, 32))})
    # Level 1 (and 2: nothing queued at 2) sees fp32's 8 rows of level 1, not its 64 of level 3;
    # int8's lower levels still share the cores with it, so they count as before.
    assert predicted_ms(router, "fp32", 1) == pytest.approx(predicted_ms(behind_eight, "fp32", 0))
    assert predicted_ms(router, "fp32", 2) == pytest.approx(predicted_ms(behind_eight, "fp32", 0))
    everything = predicted_ms(router, "fp32", 0)
    assert predicted_ms(router, "fp32", 3) == pytest.approx(everything)
    assert predicted_ms(router, "fp32", 1) < everything


def test_priority_changes_the_choice_when_the_queue_ahead_is_shorter() -> None:
    # The prediction alone: the backlog price counts every level's work, since the lower
    # levels wait for whatever CPU a higher level's call takes (next test).
    no_backlog_price = RouterConfig(rpc_allowance_ms=0.0, backlog_price_on=False)
    router = make_router({"fp32": LevelledQueue((0, 0, 64)), "int8": LevelledQueue()}, no_backlog_price)
    tight = RequestHints(slo_ms=3.0, slo_source="parameter", priority=3)
    assert router.route(tight, 1).variant == "int8"  # behind fp32's 64 rows: too late
    first = router.route(RequestHints(slo_ms=3.0, slo_source="parameter", priority=1), 1)
    assert (first.variant, first.reason) == ("fp32", WITHIN_SLO)  # nothing ahead of it on fp32
    assert router.explain(RequestHints(slo_ms=3.0, slo_source="parameter", priority=1), 1).variant == "fp32"


def test_the_backlog_price_counts_the_lower_levels_work_too() -> None:
    queues = {"fp32": LevelledQueue((0, 0, 64)), "int8": LevelledQueue()}
    router = make_router(queues)
    first = router.route(RequestHints(slo_ms=3.0, slo_source="parameter", priority=1), 1)
    # In time on fp32, but its 64 queued rows (36 ms, at the 20-ms SLO's 80 ms²: 0.45 of quality
    # a machine-ms) price fp32's extra 0.6 ms far above the 0.002 it is better by.
    assert first.variant == "int8"
    assert router.snapshot().price == pytest.approx(router.snapshot().at_level(1).price)
    queues["fp32"].rows_by_level = (0, 0, 0)
    assert router.route(RequestHints(slo_ms=3.0, slo_source="parameter", priority=1), 1).variant == "fp32"


def test_without_lower_priority_work_the_snapshot_is_shared_as_it_is() -> None:
    router = make_router({"fp32": LevelledQueue((4, 4, 0)), "int8": LevelledQueue()})
    snapshot = router.snapshot()
    assert snapshot.at_level(2) is snapshot and snapshot.at_level(0) is snapshot
    assert snapshot.at_level(1) is not snapshot and snapshot.at_level(1).level == 1


def test_a_queue_without_levels_is_read_as_one_level() -> None:
    """The simulator's batchers, and a model without priority_levels, predict as before."""
    plain = make_router({"fp32": FakeQueue(queued_rows=64), "int8": FakeQueue()})
    snapshot = plain.snapshot()
    assert all(v.rows_by_level == () for v in snapshot.variants)
    assert snapshot.at_level(1) is snapshot
    assert predicted_ms(plain, "fp32", 1) == predicted_ms(plain, "fp32", 0)
