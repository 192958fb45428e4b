"""Every constant of the router in one place, with its unit, and the switches of its mechanisms.

None of these is calibrated on one machine: what depends on the machine is learned at run
time (service times: the profile corrected online; the per-request overhead; the spread of
observed / predicted latency; the CPU each request costs) or is a server setting with a
stated default (`rpc_allowance_ms`, `cpu_target_utilization`). What is left are choices of
policy (how sure, how much of a budget may go to waiting) and of estimation (how fast to
forget).

The `*_on` switches turn a mechanism off, for the ablations in `make bench-router`
(`--router-off`) and in the simulator (`loadtest.bench_router_sim --policies router-no-…`);
a mechanism stays in the router only while the ablation shows it earns its place
(docs/routing.md).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, get_args

Mechanism = Literal[
    "correction",
    "pooled_correction",
    "measured_cost",
    "ratios",
    "price",
    "price_split",
    "backlog_price",
    "loop_backlog",
    "traffic_slo",
    "best_effort_quality",
    "shed_idle",
]
MECHANISMS: tuple[Mechanism, ...] = get_args(Mechanism)


@dataclass(frozen=True)
class RouterConfig:
    """The router's parameters; defaults are the shipped ones (README's parameter table)."""

    # Mechanisms.
    correction_on: bool = True  # correct each variant's profiled service time by what batches take
    # A variant yet to run starts from the model's corrections, not its profile (router.latency).
    pooled_correction_on: bool = True
    measured_cost_on: bool = True  # price each variant's CPU by what its calls use, not by the profile
    ratios_on: bool = True  # P(within SLO) from the learned spread of observed / predicted latency
    price_on: bool = True  # charge CPU when the traffic would not fit: cheaper variants win
    # At the breakpoint where the traffic comes to fit, price a share of the calls just below it
    # (router.price.Price.share_below): a mix of the two variants, not all calls to the cheaper.
    price_split_on: bool = True
    # Charge CPU in proportion to the work queued now, whatever the rates (router.price.backlog_price).
    backlog_price_on: bool = True
    # The event loop's lag counts in that backlog: calls not yet routed wait behind it.
    loop_backlog_on: bool = True
    # Both prices on the time scale of the SLOs requests carry, not the model's default SLO.
    traffic_slo_on: bool = True
    # None likely in time: the best score among all (expected quality less CPU), not the fastest.
    best_effort_quality_on: bool = True
    # Past saturation, shed a request predicted late on an idle variant too while any variant has work.
    shed_idle_on: bool = True
    # Admission at all (settings' shed_late, SLIMSERVE_SHED_LATE): off, the decision never sheds,
    # so Explain and the data plane agree that nothing is refused for a predicted lateness.
    shed_late_on: bool = True

    # Policy.
    min_p_in_time: float = 0.5  # least P(within SLO) for a variant to be chosen in time
    # Least P(within SLO) a request that states an SLO needs to be admitted while there is work
    # ahead of it (admission, router.policy.sheds). 0.9 until 2026-12-06 (its predicted_ms, the
    # 0.9 quantile, past the SLO).
    admit_p_in_time: float = 0.75
    # Settings (server/process/settings.py): time a call spends outside the server, added to every
    # prediction; and the share of the machine routed traffic may plan to use.
    rpc_allowance_ms: float = 1.5
    # 0.6 and 0.1 until the price charged measured CPU: with the default build's set the budget then
    # moved a fifth of the calls at 1× to variants a quarter less accurate (simulator: −5 points
    # against int8mixed alone); 0.9 and 0.5 were chosen on half the trace windows, checked on the
    # other half (docs/routing.md, "Workers on their share, measured CPU and a looser budget").
    cpu_target_utilization: float = 0.9
    # Mean queueing delay the CPU price allows, as a share of the traffic's SLO (a harmonic mean
    # of the requests' SLOs, `ModelRouter.traffic_slo_ms`; the model's default SLO until 2026-12-06).
    price_wait_share: float = 0.5
    # The backlog price is backlog_ms / (this × the traffic's SLO²): at a 100-ms SLO a 20-ms
    # backlog prices a machine-ms at 0.01 of quality. The square makes it one scale for every
    # SLO: a backlog that is the same share of the SLO prices the same share of it per ms.
    # (2000 ms² whatever the SLO until 2026-12-06, chosen among 300-10,000 on the simulator's
    # tune windows: docs/routing.md, "The backlog as a price".)
    backlog_price_slo2: float = 0.2

    # Estimation.
    correction_weight: float = 0.1  # weight of one batch in the running service-time correction
    correction_bounds: tuple[float, float] = (0.25, 4.0)
    ratio_half_life_s: float = 2.0  # the latency-ratio histogram forgets at this rate
    ratio_min_samples: float = 30.0  # less recent weight than this: trust the prediction as it is
    overhead_weight: float = 0.05  # weight of one request in the running per-request overhead
    traffic_slo_weight: float = 0.01  # weight of one request in the traffic's SLO (a running harmonic mean)
    traffic_slo_range: float = 10.0  # a request's SLO counts in it within this factor of the default either way
    rate_window_s: float = 2.0  # arrival, completion and per-variant rates
    size_window_s: float = 1.0  # arrivals per request size, for the price
    reprice_s: float = 0.01  # the price is recomputed at most this often (it takes ~0.1 ms)
    snapshot_max_age_s: float = 0.005  # a snapshot older than this is taken again, queues unchanged or not
    predicted_quantile: float = 0.9  # the latency reported as `predicted_ms`

    # Throughput SLO: the guard engages when arrivals reach `throughput_pressure` of the
    # mix's capacity, and then asks loose requests for arrivals / pressure of capacity.
    throughput_pressure: float = 0.8
    throughput_sustained_fraction: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 < self.cpu_target_utilization <= 1.0:
            raise ValueError(f"CPU target utilization must be in (0, 1], got {self.cpu_target_utilization}")
        if self.backlog_price_slo2 <= 0.0:
            raise ValueError(f"backlog_price_slo2 must be positive, got {self.backlog_price_slo2}")
        if self.traffic_slo_range < 1.0:
            raise ValueError(f"traffic_slo_range must be at least 1, got {self.traffic_slo_range}")
        if not 0.0 < self.min_p_in_time <= 1.0:
            raise ValueError(f"min_p_in_time must be in (0, 1], got {self.min_p_in_time}")
        if not 0.0 < self.admit_p_in_time <= 1.0:
            raise ValueError(f"admit_p_in_time must be in (0, 1], got {self.admit_p_in_time}")

    @classmethod
    def without(cls, mechanisms: Collection[str], **fields: float) -> RouterConfig:
        """The default configuration with the named mechanisms (MECHANISMS) turned off."""
        unknown = set(mechanisms) - set(MECHANISMS)
        if unknown:
            raise ValueError(f"unknown router mechanism(s) {sorted(unknown)}; they are {list(MECHANISMS)}")
        switches = {f"{name}_on": name not in mechanisms for name in MECHANISMS}
        return cls(**switches, **fields)  # type: ignore[arg-type]
