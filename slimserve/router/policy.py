"""The routing policy: one pure function from (snapshot, hints, config) to a decision.

No clocks, queues or I/O here: `router.snapshot.RouterSnapshot` holds everything the
router knows at one instant, and `decide` reads nothing else, so that Explain, given the
same snapshot and hints, says exactly what `route` does.

The rule (README, "Routing"): every variant's latency for this request is predicted from
its queue, the batches in flight and its (learned) service time; the variant chosen is the
one with the highest expected quality — quality × P(answer within the SLO) — less the CPU
it takes at the current price, among those at least `min_p_in_time` likely to be in time.
In order:
1. Variants below `min_quality` are rejected; if none is left → QualityUnreachableError.
2. Throughput guard: while the model's throughput SLO is at risk (`required_rows_s`), a
   loose request (SLO at least the model's default) goes only to variants with that
   capacity, if there are any.
3. `slo`: the best score as above (ties: the more accurate); reason `cpu_budget` when the
   price changed the choice. None likely in time → the best score among all of them (ties:
   the faster), reason `best_effort`: the most expected quality for the CPU it takes, not
   the fastest, which under load is an idle variant slower per row and less accurate than
   the busy one (RouterConfig.best_effort_quality_on; off: the fastest).
   `fastest`: the lowest predicted latency. `most_accurate`: the highest quality, SLO ignored.
4. Admission (`sheds`): a request that states an SLO (not the model's default) is refused,
   reason `shed_predicted_late`, when its variant is less than `admit_p_in_time` likely to
   answer within that SLO and there is work ahead of it — on that variant, or, past saturation
   (RouterConfig.shed_idle_on), on any variant, since the cores are shared. An idle
   machine never sheds: the prediction may be wrong, and only served calls correct it.
   The data plane refuses what the decision says, so Explain says exactly what happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from slimserve.router.config import RouterConfig
from slimserve.router.errors import QualityUnreachableError
from slimserve.router.hints import RequestHints
from slimserve.router.snapshot import Candidate, RouterSnapshot, VariantView

# Reasons, as they appear in responses, Explain and the routing-decision metric.
WITHIN_SLO = "most_accurate_within_slo"
BEST_EFFORT = "best_effort"
FASTEST = "fastest"
MOST_ACCURATE = "most_accurate"
THROUGHPUT_SLO = "throughput_slo"
CPU_BUDGET = "cpu_budget"
PINNED = "pinned"
SHED_PREDICTED_LATE = "shed_predicted_late"  # refused: predicted past its stated SLO with work ahead
REASONS = (WITHIN_SLO, BEST_EFFORT, FASTEST, MOST_ACCURATE, THROUGHPUT_SLO, CPU_BUDGET, PINNED, SHED_PREDICTED_LATE)


@dataclass(frozen=True)
class Verdict:
    """Why one candidate was taken or not (for Explain)."""

    candidate: Candidate
    chosen: bool
    why: str


@dataclass
class Grounds:
    """What a decision was made from, beyond the candidates: enough to explain it later.
    Nothing writes to one once made (nor to a `Decision`); neither is a frozen dataclass,
    which costs more to make, and every call makes one."""

    hints: RequestHints
    price: float
    required_rows_s: float | None  # the throughput guard's demand, where it applied
    min_p_in_time: float
    chosen_as: str = ""  # a shed decision: the reason its variant was chosen with


@dataclass
class Decision:
    """The chosen variant and the reason; `verdicts` explains every candidate (for Explain,
    written only when read: routing a request does not pay for the prose)."""

    variant: str
    reason: str
    predicted_ms: float
    device: str
    chosen: Candidate
    candidates: tuple[Candidate, ...]
    grounds: Grounds | None = None  # None: pinned, nothing was weighed
    learns: bool = True  # whether its prediction is exact enough to teach the ratio distribution

    @property
    def shed(self) -> bool:
        """Admission refuses it (UNAVAILABLE): predicted past its stated SLO with work ahead."""
        return self.reason == SHED_PREDICTED_LATE

    def refusal(self, slo_ms: float) -> str:
        """What a caller whose call admission refuses is told: the variant, the SLO and the
        probability of answering within it that the decision ranked by. Explain's verdict on
        the chosen variant says the same (`verdicts`)."""
        return (
            f"overloaded: variant '{self.variant}' would answer within the {slo_ms:g} ms SLO with probability "
            f"{self.chosen.p_in_time:.3f} (predicted {self.predicted_ms:.1f} ms) behind the work ahead of it; "
            "retry later or elsewhere"
        )

    @cached_property
    def verdicts(self) -> tuple[Verdict, ...]:
        return tuple(Verdict(c, c is self.chosen, self._why(c)) for c in self.candidates)

    def _why(self, c: Candidate) -> str:
        if c is self.chosen and self.shed and self.grounds is not None:
            chosen_as = f" (chosen as {self.grounds.chosen_as})" if self.grounds.chosen_as else ""
            return f"{SHED_PREDICTED_LATE}{chosen_as}: {self.refusal(self.grounds.hints.slo_ms)}"
        if c is self.chosen or self.grounds is None:
            return self.reason
        hints, price, required = self.grounds.hints, self.grounds.price, self.grounds.required_rows_s
        if c.quality < hints.min_quality:
            return f"quality {c.quality:.4f} < min_quality {hints.min_quality:.4f}"
        if required is not None and c.capacity_rows_s < required:
            return f"throughput SLO: capacity {c.capacity_rows_s:.0f} rows/s < {required:.0f} needed"
        if hints.policy == "slo" and c.p_in_time < self.grounds.min_p_in_time:
            return f"P(within SLO {hints.slo_ms:.2f} ms) = {c.p_in_time:.3f}, predicted {c.predicted_ms:.2f} ms"
        if hints.policy == "slo" and BEST_EFFORT not in (self.reason, self.grounds.chosen_as):
            cpu = f" less CPU {price * c.cost_per_row_ms:.4f}" if price > 0 else ""
            return (
                f"expected quality {c.expected_quality:.4f} (P(within SLO) {c.p_in_time:.3f}){cpu} "
                f"< {self.chosen.score(price):.4f} of '{self.chosen.variant}'"
            )
        if self.reason == FASTEST or c.quality == self.chosen.quality:
            return f"slower than '{self.chosen.variant}'"
        return f"less accurate than '{self.chosen.variant}'"


def candidate(snapshot: RouterSnapshot, view: VariantView, rows: int, slo_ms: float | None) -> Candidate:
    """One variant's prediction for a request of `rows` rows (`RouterSnapshot.candidates`)."""
    return snapshot.candidates(rows, slo_ms, (view,))[0]


def candidates(snapshot: RouterSnapshot, rows: int, slo_ms: float | None) -> list[Candidate]:
    """Every variant's prediction for a request of `rows` rows."""
    return snapshot.candidates(rows, slo_ms)


def pinned(
    snapshot: RouterSnapshot,
    variant: str,
    rows: int,
    learns: bool = True,
    hints: RequestHints | None = None,
    config: RouterConfig | None = None,
) -> Decision:
    """The caller named the variant: no choice, but the prediction is still useful, and
    admission (step 4) applies to it as to a routed request, given its `hints`."""
    chosen = candidate(snapshot, snapshot.view(variant), rows, hints.slo_ms if hints is not None else None)
    if hints is not None and config is not None and sheds(snapshot, hints, chosen, config):
        grounds = Grounds(hints, snapshot.price, None, config.min_p_in_time, PINNED)
        return Decision(variant, SHED_PREDICTED_LATE, chosen.predicted_ms, chosen.device, chosen, (chosen,), grounds)
    return Decision(variant, PINNED, chosen.predicted_ms, chosen.device, chosen, (chosen,), learns=learns)


def sheds(snapshot: RouterSnapshot, hints: RequestHints, chosen: Candidate, config: RouterConfig) -> bool:
    """Step 4, admission: whether a request sent to `chosen` is refused (module docstring).
    Never one that states no SLO (it gets the model's default and waits its turn)."""
    if not config.shed_late_on or hints.slo_source == "model_default" or chosen.p_in_time >= config.admit_p_in_time:
        return False
    if snapshot.view(chosen.variant).busy:
        return True
    return config.shed_idle_on and snapshot.saturated and any(v.busy for v in snapshot.variants)


def decide(
    snapshot: RouterSnapshot, hints: RequestHints, rows: int, config: RouterConfig, below_breakpoint: bool = False
) -> Decision:
    """Pick a variant for one request of `rows` rows (see the module docstring for the rule),
    at the price of a call drawn `below_breakpoint` of a split price or not
    (`RouterSnapshot.price_of_a_call`)."""
    price = snapshot.price_of_a_call(below_breakpoint)
    pool = candidates(snapshot, rows, hints.slo_ms)
    qualifying = [c for c in pool if c.quality >= hints.min_quality]
    if not qualifying:
        best = max(pool, key=lambda c: c.quality)
        raise QualityUnreachableError(
            f"no variant reaches min_quality {hints.min_quality:.4f}; "
            f"the best is '{best.variant}' at {best.quality:.4f}"
        )
    # Step 2, the throughput guard: loose requests to variants with the capacity, if any has it.
    required = snapshot.required_rows_s if hints.slo_ms >= snapshot.default_slo_ms else None
    guarded = False
    if required is not None:
        roomy = [c for c in qualifying if c.capacity_rows_s >= required]
        guarded = bool(roomy) and len(roomy) < len(qualifying)
        qualifying = roomy if guarded else qualifying
    chosen, reason = _choose(qualifying, hints, price, config)
    if guarded and reason in (WITHIN_SLO, MOST_ACCURATE, CPU_BUDGET):
        reason = THROUGHPUT_SLO
    chosen_as = ""
    if sheds(snapshot, hints, chosen, config):  # step 4
        reason, chosen_as = SHED_PREDICTED_LATE, reason
    grounds = Grounds(hints, price, required if guarded else None, config.min_p_in_time, chosen_as)
    return Decision(chosen.variant, reason, chosen.predicted_ms, chosen.device, chosen, tuple(pool), grounds)


def _choose(pool: list[Candidate], hints: RequestHints, price: float, config: RouterConfig) -> tuple[Candidate, str]:
    """Step 3 of the rule, over the candidates steps 1 and 2 left."""
    if hints.policy == "fastest":
        return min(pool, key=lambda c: c.predicted_ms), FASTEST
    if hints.policy == "most_accurate":
        return min(pool, key=lambda c: (-c.quality, c.predicted_ms)), MOST_ACCURATE
    min_p = config.min_p_in_time
    chosen, best = None, None  # the best (score, quality) among those likely in time: one pass, it is hot
    for c in pool:
        if c.p_in_time >= min_p:
            key = (c.score(price), c.quality)
            if best is None or key > best:
                chosen, best = c, key
    if chosen is None:
        if config.best_effort_quality_on:
            return max(pool, key=lambda c: (c.score(price), -c.predicted_ms)), BEST_EFFORT
        return min(pool, key=lambda c: c.predicted_ms), BEST_EFFORT
    if price > 0:
        # The price chose only if it gave up expected quality: a tie (pruned and pruned-int8
        # answer alike) broken toward the cheaper variant is still the most accurate in time.
        # On an idle server the event loop's timer jitter alone prices CPU a little.
        likely = [c for c in pool if c.p_in_time >= min_p]
        if chosen.expected_quality < max(c.expected_quality for c in likely):
            return chosen, CPU_BUDGET
    return chosen, WITHIN_SLO
