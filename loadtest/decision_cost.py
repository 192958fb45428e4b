"""What one routing decision costs, on minilm's real profiles (`make bench-router` prints it;
`python -m loadtest.decision_cost --repository R [--variants …]` alone).

Three cases, CPU time per call (`time.process_time`: these machines are shared):
- **new snapshot**: `route` right after fp32's queue changed, calls microseconds apart: one
  view is made again, the price is not (it is recomputed at most every `reprice_s`).
- **under load**: `route` 20 ms after the last call (50 calls/s, the bench's loads), each
  call answered and the CPU sampled as the server's load monitor does, on a machine that the
  traffic does not fit at price 0: every view is made again and the price recomputed. Only
  `route` is timed (a CPU-clock read costs about a microsecond of it), not what it learns after.
  Twice: with the process at BUSY_SHARE of its core, where some price makes the traffic fit,
  and at SATURATED_SHARE, where none does (the saturated price's search).
- **cached**: `explain` on an unchanged snapshot, the decision alone.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from slimserve.repository.format import ModelEntry, load_model
from slimserve.repository.hardware import cpu_description
from slimserve.router.build import build_model_router
from slimserve.router.cpu import SAMPLE_PERIOD_S
from slimserve.router.hints import RequestHints

CALL_GAP_S = 0.02  # under load: 50 calls/s, each past the price's `reprice_s`
BUSY_SHARE = 0.8  # under load: the process's CPU use as sampled, more than price 0 fits
SATURATED_SHARE = 0.95  # ... and more than any price fits (the budget is 0.9 of the core)


@dataclass
class _Queue:
    """A variant's queue as the router reads it (`QueueView`): rows queued and in flight."""

    queued_rows: int
    running_rows: int
    running_started_s: float


@dataclass(frozen=True)
class DecisionCost:
    """Microseconds of CPU per call in each case (module docstring)."""

    new_snapshot_us: float
    under_load_us: float
    saturated_us: float
    cached_us: float

    def text(self) -> str:
        return (
            f"{self.new_snapshot_us:.1f} µs with a new snapshot, {self.under_load_us:.1f} µs under load (a new price "
            f"and every view; {self.saturated_us:.1f} µs saturated), {self.cached_us:.1f} µs on a cached one"
        )


class RouterUnderLoad:
    """A router on a fake clock fed one call every CALL_GAP_S, each answered, its CPU account
    sampled every SAMPLE_PERIOD_S at `busy_share` of the core (the "under load" case)."""

    def __init__(
        self, entry: ModelEntry, hardware_key: str, hints: RequestHints, busy_share: float = BUSY_SHARE
    ) -> None:
        self.busy_share = busy_share
        self.now_s = 0.0
        self.queues = {name: _Queue(3, 8, 0.0) for name in entry.variants}
        self.router = build_model_router(entry, hardware_key, self.queues, clock=lambda: self.now_s)
        self.hints = hints
        self._reference = entry.config.reference_variant
        self._sampled_s = 0.0

    def call(self, i: int) -> float:
        """Call `i`; the CPU seconds `route` took (what it learns after is not counted)."""
        self.now_s += CALL_GAP_S
        if self.now_s - self._sampled_s >= SAMPLE_PERIOD_S:
            self.router.cpu.sample(self.now_s * self.busy_share, self.now_s, 1)
            self._sampled_s = self.now_s
        self.queues[self._reference].queued_rows = i & 7
        started = time.process_time()
        decision = self.router.route(self.hints, 1)
        took = time.process_time() - started
        self.router.observe_batch(decision.variant, 1, 10.0, 10.0)
        self.router.observe_request(decision, 30.0 + i % 7, 10.0, 15.0)
        return took


def decision_cost_us(repository: Path, calls: int = 20_000, variants: list[str] | None = None) -> DecisionCost:
    """The three costs over `calls` calls each, with minilm's served variants or `variants` of them."""
    entry = load_model(repository / "minilm")
    if variants:
        entry = entry.model_copy(update={"variants": {name: entry.variants[name] for name in variants}})
    key = next(iter(entry.variants[entry.config.reference_variant].manifest.profiles))
    hints = RequestHints(slo_ms=60.0, slo_source="parameter")

    queues = {name: _Queue(3, 8, time.monotonic()) for name in entry.variants}
    router = build_model_router(entry, key, queues)  # the server's default: every variant beside the others
    for i in range(2000):
        router.route(hints, 1)
        router.observe_request(router.route(hints, 1), 30.0 + i % 7, 10.0, 15.0)
    reference = queues[entry.config.reference_variant]
    started = time.process_time()
    for i in range(calls):
        reference.queued_rows = i & 7  # a queue changed: the router takes a new snapshot
        router.route(hints, 1)
    fresh = (time.process_time() - started) / calls * 1e6
    started = time.process_time()
    for _ in range(calls):
        router.explain(hints, 1)
    cached = (time.process_time() - started) / calls * 1e6

    under_load = []
    for share in (BUSY_SHARE, SATURATED_SHARE):
        loaded = RouterUnderLoad(entry, key, hints, share)
        for i in range(2000):
            loaded.call(i)
        under_load.append(sum(loaded.call(i) for i in range(calls)) / calls * 1e6)
    return DecisionCost(fresh, under_load[0], under_load[1], cached)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--variants", nargs="+", help="route between these of minilm's served variants only")
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")
    print(f"routing decision ({len(args.variants) if args.variants else 'served'} variants): "
          f"{decision_cost_us(args.repository, args.calls, args.variants).text()}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
