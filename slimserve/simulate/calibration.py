"""The simulator's calibrated parameters, in one place: `make bench-router-sim` fits them, `slimserve plan` uses them.

Two physical quantities no repository records were fitted by grid search on the 50 pinned
cells `make bench-router` measured over five trace windows on 2026-12-06, with the load
generator off the servers' core (docs/bench/bench_router_clean_core.csv: minilm, the edge
profile, the default build's variants; docs/bench/router_sim_calibration_clean_core.md): the
machine's **speed** against the one that measured the service curves (`SERVICE_CURVES`:
minilm's one-thread service times at 32 and 128 tokens) and the **CPU the event loop spends
per call** (gRPC, decoding, routing, encoding). The two trade along a ridge that the pinned
cells cannot resolve: speed 1.15 with 1.5 ms, 1.25 with 0.5, 1.10 with 2.0 and 1.20 with 1.0
fit within 0.1 points of each other, since each gives fp32 about the same round trip. Before,
the values were 0.95 and 4.5 ms, fitted on docs/bench/bench_router_price_split.csv, a run
whose load generator had gRPC threads on the servers' core (16-39 % of it): that CPU had been
counted as the loop's; on the clean run those values miss by 2.99 points where the fit misses
by 1.41. Earlier still 1.00 and 2.0 ms (docs/bench/router_sim_calibration_served.md).
The bench searches them again on every run (`SPEEDS_GRID`, `LOOP_CPU_MS_GRID`); the values
below are the fit it reported, so that a planning run costs no calibration and says which
parameters its figures rest on. A fit that moves should be copied here with the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slimserve.simulate.server import ServerParams

# Where the fitted values come from (a sentence for reports that quote them).
SOURCE = (
    "fitted by `make bench-router-sim` on the 50 pinned cells of docs/bench/bench_router_clean_core.csv "
    "(minilm, edge, the default build's variants, five trace windows, the load generator off the servers' core; "
    "docs/bench/router_sim_calibration_clean_core.md)"
)
SERVICE_CURVES = Path("docs/bench/router_sim_service.json")  # the curves the speed is relative to
CALIBRATED_SPEED = 1.15  # time here = curve time × this (1.25 with 0.5 ms fits as well: 1.41 / 1.42 points)
CALIBRATED_LOOP_CPU_MS = 1.5  # event-loop CPU per call, ms
PRE_SHARE = 2.0 / 3.0  # of the loop's CPU per call, the share before the session call (read, decode, route)
# The bench's search grid around the fit.
SPEEDS_GRID = (1.0, 1.05, 1.1, 1.15, 1.2, 1.25)
LOOP_CPU_MS_GRID = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


@dataclass(frozen=True)
class Calibration:
    """The two fitted parameters: speed (× the service times) and the loop's CPU per call (ms)."""

    speed: float = CALIBRATED_SPEED
    loop_cpu_ms: float = CALIBRATED_LOOP_CPU_MS

    def params(self, cores: float = 1.0, workers: int = 1, session_threads: int = 1) -> ServerParams:
        """A simulated server with these parameters, the loop's CPU split as PRE_SHARE says."""
        return ServerParams(
            cores=cores,
            workers=workers,
            session_threads=session_threads,
            speed=self.speed,
            pre_ms=self.loop_cpu_ms * PRE_SHARE,
            post_ms=self.loop_cpu_ms * (1 - PRE_SHARE),
        )

    @property
    def is_default(self) -> bool:
        return (self.speed, self.loop_cpu_ms) == (CALIBRATED_SPEED, CALIBRATED_LOOP_CPU_MS)


def params_for(speed: float, loop_cpu_ms: float) -> ServerParams:
    """One core, one worker, with these two parameters (the bench's calibration cells)."""
    return Calibration(speed, loop_cpu_ms).params()


ServiceTimes = dict[str, dict[int, dict[int, float]]]  # variant → input tokens → batch size → ms


def read_service_curves(path: Path) -> ServiceTimes:
    """A service-curve file (docs/bench/router_sim_service.json's layout: {"tokens": {tokens:
    {variant: {batch: ms}}}}) as variant → tokens → batch → ms."""
    data = json.loads(path.read_text())["tokens"]
    out: ServiceTimes = {}
    for tokens, variants in data.items():
        for variant, points in variants.items():
            out.setdefault(variant, {})[int(tokens)] = {int(b): float(ms) for b, ms in points.items()}
    return out
