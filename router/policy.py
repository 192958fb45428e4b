"""Routing policies: one pure function from candidates and hints to a decision.

No clocks, queues or I/O here: `router.model_router` predicts each candidate's latency and
capacity, then asks `choose`. That keeps the policy small enough to test exhaustively.

Rules, in order:
1. Variants below `min_quality` are rejected; if none is left → QualityUnreachableError.
2. Throughput guard: when `required_rows_s` is set (the model's throughput SLO is at risk)
   and the request is loose (its SLO is at least the model's default), variants whose
   capacity is below it are set aside, if any variant has enough capacity.
3. `slo`: the variant with the highest score among those at least CONFIDENT to answer
   within the SLO. The score is the *expected effective quality* — quality × P(answer
   within the SLO) — less the CPU the request would take at the current `price` (quality
   per machine-millisecond per row, `router.price`; 0 while the machine has room). A
   0.2-point quality gain is not worth a 1 % risk of missing the deadline, nor the CPU that
   the requests behind it need, and this weighs exactly that. Scores within `tie` of the
   best count as equal — the caller sets `tie` no finer than its estimate of P can resolve —
   and go to the most accurate of them, or, while CPU has a price, to the one with the most
   capacity. Reason `cpu_budget` when the price changed the choice. No variant is
   CONFIDENT → best effort: the fastest qualifying variant, reason `best_effort`.
   `fastest`: the lowest predicted latency. `most_accurate`: the highest quality, SLO ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.errors import QualityUnreachableError
from router.hints import RequestHints

# Reasons, as they appear in responses, Explain and the routing-decision metric.
WITHIN_SLO = "most_accurate_within_slo"
BEST_EFFORT = "best_effort"
FASTEST = "fastest"
MOST_ACCURATE = "most_accurate"
THROUGHPUT_SLO = "throughput_slo"
CPU_BUDGET = "cpu_budget"
PINNED = "pinned"
REASONS = (WITHIN_SLO, BEST_EFFORT, FASTEST, MOST_ACCURATE, THROUGHPUT_SLO, CPU_BUDGET, PINNED)
CONFIDENT = 0.5  # least P(within SLO) for a variant to be chosen under the `slo` policy
SCORE_TIE = 0.0005  # expected qualities closer than this are treated as equal


@dataclass(frozen=True)
class Candidate:
    """A variant as the policy sees it: quality, predicted latency, capacity."""

    variant: str
    device: str
    quality: float
    predicted_ms: float  # queue wait + service time for this request, now
    capacity_rows_s: float  # rows per second at the largest batch
    modelled_ms: float = 0.0  # predicted_ms before the learned stretch and the RPC allowance
    p_in_time: float = 1.0  # probability of answering within the request's SLO
    cost_per_row_ms: float = 0.0  # machine-milliseconds of CPU per row of this request

    @property
    def expected_quality(self) -> float:
        return self.quality * self.p_in_time

    def score(self, price: float) -> float:
        """Expected quality less the CPU it takes at `price` (quality per machine-ms per row)."""
        return self.expected_quality - price * self.cost_per_row_ms


@dataclass(frozen=True)
class Verdict:
    """Why one candidate was taken or not (for Explain)."""

    candidate: Candidate
    chosen: bool
    why: str


@dataclass(frozen=True)
class Decision:
    """The chosen variant, the reason, and a verdict on every candidate."""

    variant: str
    reason: str
    predicted_ms: float
    device: str
    verdicts: tuple[Verdict, ...]

    @property
    def chosen(self) -> Candidate:
        return next(v.candidate for v in self.verdicts if v.chosen)


def _rank_quality(c: Candidate) -> tuple[float, float]:
    return (-c.quality, c.predicted_ms)


def choose(
    candidates: Sequence[Candidate],
    hints: RequestHints,
    default_slo_ms: float,
    required_rows_s: float | None = None,
    tie: float = SCORE_TIE,
    price: float = 0.0,
) -> Decision:
    """Pick a variant for one request (see the module docstring for the rules)."""
    why: dict[str, str] = {}
    qualifying = []
    for c in candidates:
        if c.quality < hints.min_quality:
            why[c.variant] = f"quality {c.quality:.4f} < min_quality {hints.min_quality:.4f}"
        else:
            qualifying.append(c)
    if not qualifying:
        best = max(candidates, key=lambda c: c.quality)
        raise QualityUnreachableError(
            f"no variant reaches min_quality {hints.min_quality:.4f}; "
            f"the best is '{best.variant}' at {best.quality:.4f}"
        )
    pool, guarded = qualifying, False
    if required_rows_s is not None and hints.slo_ms >= default_slo_ms:
        roomy = [c for c in qualifying if c.capacity_rows_s >= required_rows_s]
        if roomy and len(roomy) < len(qualifying):
            for c in qualifying:
                if c not in roomy:
                    why[c.variant] = (
                        f"throughput SLO: capacity {c.capacity_rows_s:.0f} rows/s < {required_rows_s:.0f} needed"
                    )
            pool, guarded = roomy, True
    fastest = min(pool, key=lambda c: c.predicted_ms)
    if hints.policy == "fastest":
        chosen, reason = fastest, FASTEST
    elif hints.policy == "most_accurate":
        chosen, reason = min(pool, key=_rank_quality), MOST_ACCURATE
    else:
        confident = [c for c in pool if c.p_in_time >= CONFIDENT]
        if confident:
            top = max(c.score(price) for c in confident)
            tied = [c for c in confident if c.score(price) >= top - tie]
            if price > 0:
                chosen = max(tied, key=lambda c: (c.capacity_rows_s, -c.predicted_ms))
            else:
                chosen = max(tied, key=lambda c: (c.quality, c.expected_quality, c.capacity_rows_s))
            unpriced = max(c.expected_quality for c in confident)
            reason = CPU_BUDGET if chosen.expected_quality < unpriced - tie else WITHIN_SLO
        else:
            chosen, reason = fastest, BEST_EFFORT
        for c in pool:
            if c.p_in_time < CONFIDENT:
                why.setdefault(
                    c.variant,
                    f"P(within SLO {hints.slo_ms:.2f} ms) = {c.p_in_time:.3f}, predicted {c.predicted_ms:.2f} ms",
                )
            elif c is not chosen and c.score(price) < top - tie:
                cpu = f" less CPU {price * c.cost_per_row_ms:.4f}" if price > 0 else ""
                why.setdefault(
                    c.variant,
                    f"expected quality {c.expected_quality:.4f} (P(within SLO) {c.p_in_time:.3f}){cpu} "
                    f"< {top:.4f} - {tie:.4f}",
                )
            elif c is not chosen:
                better = "has more capacity" if price > 0 else "is at least as accurate"
                why.setdefault(c.variant, f"within {tie:.4f} of the best; '{chosen.variant}' {better}")
    if guarded and reason in (WITHIN_SLO, MOST_ACCURATE, CPU_BUDGET):
        reason = THROUGHPUT_SLO
    for c in pool:
        if c is not chosen and c.variant not in why:
            if reason == FASTEST or c.quality == chosen.quality:
                why[c.variant] = f"slower than '{chosen.variant}'"
            else:
                why[c.variant] = f"less accurate than '{chosen.variant}'"
    why[chosen.variant] = reason
    verdicts = tuple(Verdict(c, c is chosen, why[c.variant]) for c in candidates)
    return Decision(chosen.variant, reason, chosen.predicted_ms, chosen.device, verdicts)
