"""Outcomes of `make bench-router` and the tables, CSV and plots made from them.

Per segment (one policy at one load on one workload in one run): SLO attainment (answered
within the SLO / sent), mean quality (correct / answered), effective accuracy (correct
within the SLO / sent) and the share of answers per variant. Across runs: the mean, and
the run-to-run noise (the mean absolute difference between runs of one policy at one load);
the router against the best static policy paired run by run (the runs replay the same
arrivals for every policy), with its 95 % t-interval. Per segment also the share of the
servers' core that other programs took (loadtest.interference), and the segments to rerun.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtest.interference import FOREIGN_SHARE_WARN, NO_READING, CoreReading
from slimserve.simulate.stats import Interval

VARIANTS = ("fp32", "int8", "pruned", "distilled")
RECOVERY_WINDOW_S = 2.0  # the burst target: back within a point of pre-burst this soon after it ends
RECOVERY_POINTS = 0.01
GENERATOR_HEADROOM = 1.2  # the generator must offer at least this multiple of what the server carries


@dataclass(frozen=True)
class Outcome:
    """What happened to one request."""

    at_s: float
    kind: str
    slo_ms: float
    latency_ms: float
    answered: bool
    correct: bool
    variant: str
    status: str

    @property
    def in_time(self) -> bool:
        return self.answered and self.latency_ms <= self.slo_ms

    @property
    def effective(self) -> bool:
        return self.in_time and self.correct


@dataclass
class Segment:
    """One policy at one load level of one workload in one run."""

    workload: str
    run: int
    scale: float  # × fp32's capacity (0 for the burst)
    policy: str
    seconds: float  # span of the arrivals
    outcomes: list[Outcome] = field(repr=False)
    slip_ms: float  # the generator's worst lateness against its schedule
    fp32_capacity_rps: float
    slo_ms: dict[str, float]
    core: CoreReading = NO_READING  # what the servers' core did meanwhile (loadtest.interference)

    @property
    def foreign_share(self) -> float:
        """Of the servers' core, taken by other programs."""
        return self.core.foreign_share

    def row(self) -> dict[str, float | str | int]:
        sent = max(len(self.outcomes), 1)
        answered = [o for o in self.outcomes if o.answered]
        shares = Counter(o.variant for o in answered)
        statuses = Counter(o.status for o in self.outcomes if not o.answered)
        row: dict[str, float | str | int] = {
            "workload": self.workload,
            "run": self.run,
            "scale": self.scale,
            "policy": self.policy,
            "requests": len(self.outcomes),
            "offered_rps": len(self.outcomes) / max(self.seconds, 1e-9),
            "carried_rps": len(answered) / max(self.seconds, 1e-9),
            "slip_ms": self.slip_ms,
            "slo_attainment": sum(o.in_time for o in self.outcomes) / sent,
            "mean_quality": sum(o.correct for o in answered) / max(len(answered), 1),
            "effective_accuracy": sum(o.effective for o in self.outcomes) / sent,
            "failed": len(self.outcomes) - len(answered),
            "refused": statuses.get("UNAVAILABLE", 0) + statuses.get("RESOURCE_EXHAUSTED", 0),
            "deadline_exceeded": statuses.get("DEADLINE_EXCEEDED", 0),
            "interactive_slo_ms": self.slo_ms["interactive"],
            "background_slo_ms": self.slo_ms["background"],
            "foreign_core_share": self.foreign_share,
            # The servers' CPU over the segment, per call they answered: the session call's share,
            # the event loop's cost and the background work spread over the calls.
            "server_cpu_ms_per_answer": 1e3 * self.core.owners_cpu_s / len(answered) if answered else math.nan,
        }
        for kind in ("interactive", "background"):
            latencies = [o.latency_ms for o in answered if o.kind == kind]
            row[f"p95_ms_{kind}"] = float(np.percentile(latencies, 95)) if latencies else float("nan")
        # The four kinds always (a stable CSV), then any other variant that answered (stacked ones).
        for variant in [*VARIANTS, *sorted(set(shares) - set(VARIANTS) - {""})]:
            row[f"share_{variant}"] = shares[variant] / max(len(answered), 1)
        return row

    def summary(self) -> str:
        r = self.row()
        return (
            f"{self.workload:>6} run {self.run} scale {self.scale:4.2f} {self.policy:>22}: "
            f"{float(r['offered_rps']):6.1f} rps offered, {float(r['carried_rps']):6.1f} carried, "
            f"SLO {float(r['slo_attainment']):6.1%}, quality {float(r['mean_quality']):6.1%}, "
            f"effective {float(r['effective_accuracy']):6.1%}, failed {r['failed']}, slip {self.slip_ms:.0f} ms"
            + ("" if math.isnan(self.foreign_share) else f", foreign {self.foreign_share:.0%}")
            + (" (other programs on the servers' core: rerun it)" if self.foreign_share > FOREIGN_SHARE_WARN else "")
        )

    def per_second(self) -> list[tuple[int, float, float, int]]:
        """(second, effective accuracy, SLO attainment, requests) by arrival second."""
        seconds: dict[int, list[Outcome]] = {}
        for o in self.outcomes:
            seconds.setdefault(int(o.at_s), []).append(o)
        return [
            (s, sum(o.effective for o in got) / len(got), sum(o.in_time for o in got) / len(got), len(got))
            for s, got in sorted(seconds.items())
        ]


def _mean(rows: list[dict[str, float | str | int]], key: str) -> float:
    return float(np.mean([float(r[key]) for r in rows])) if rows else float("nan")


def _cells(rows: list[dict[str, float | str | int]], workload: str) -> dict[tuple[float, str], list[dict]]:
    cells: dict[tuple[float, str], list[dict]] = {}
    for r in rows:
        if r["workload"] == workload:
            cells.setdefault((float(r["scale"]), str(r["policy"])), []).append(r)
    return cells


def noise_points(rows: list[dict[str, float | str | int]], workload: str) -> float:
    """Run-to-run noise of effective accuracy: mean |difference| between runs of one cell (points)."""
    spreads = [
        abs(float(a["effective_accuracy"]) - float(b["effective_accuracy"])) * 100
        for cell in _cells(rows, workload).values()
        for i, a in enumerate(cell)
        for b in cell[i + 1 :]
    ]
    return float(np.mean(spreads)) if spreads else float("nan")


def trace_table(rows: list[dict[str, float | str | int]], workload: str) -> list[str]:
    """Every policy at every scale, means over the runs."""
    cells = _cells(rows, workload)
    lines = [
        "| load × fp32 capacity | policy | offered / carried rps | SLO attainment | mean quality "
        "| effective accuracy (runs) | p95 interactive / background ms | router's shares of answers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (scale, policy), cell in cells.items():
        runs = " / ".join(f"{float(r['effective_accuracy']):.1%}" for r in cell)
        shares = _shares(cell) if policy.startswith("router") else ""
        lines.append(
            f"| {scale:.2f} | {policy} | {_mean(cell, 'offered_rps'):.1f} / {_mean(cell, 'carried_rps'):.1f} "
            f"| {_mean(cell, 'slo_attainment'):.1%} | {_mean(cell, 'mean_quality'):.1%} "
            f"| **{_mean(cell, 'effective_accuracy'):.1%}** ({runs}) "
            f"| {_mean(cell, 'p95_ms_interactive'):.0f} / {_mean(cell, 'p95_ms_background'):.0f} | {shares} |"
        )
    return lines


def _shares(cell: list[dict[str, float | str | int]]) -> str:
    """Every variant's mean share of the answers, largest first ("int8 64% · fp32 8%")."""
    names = {str(key)[len("share_") :] for row in cell for key in row if str(key).startswith("share_")}
    means = {name: float(np.mean([float(row.get(f"share_{name}", 0.0)) for row in cell])) for name in names}
    return " · ".join(f"{name} {share:.0%}" for name, share in sorted(means.items(), key=lambda i: -i[1]) if share > 0)


def is_static(policy: str) -> bool:
    """A pinned variant, not a router."""
    return not policy.startswith("router")


def _by_run(cell: list[dict[str, float | str | int]], key: str) -> dict[int, float]:
    return {int(r["run"]): float(r[key]) for r in cell}


def verdict_table(rows: list[dict[str, float | str | int]], workload: str) -> list[str]:
    """Router against the best static policy at each scale (the best by its mean), paired run
    by run with a 95 % t-interval, and the gain averaged over the scales (per run, then over
    the runs). One run: no interval (∞)."""
    cells = _cells(rows, workload)
    scales = sorted({scale for scale, _ in cells})
    lines = [
        "| load | best static (effective accuracy) | router | router − best static (paired) | SLO violations: "
        "best static / router (router's as a share of best static's) |",
        "|---|---|---|---|---|",
    ]
    per_run: dict[int, list[float]] = {}
    compared = 0  # scales with a router and a static policy
    for scale in scales:
        static = {p: cell for (s, p), cell in cells.items() if s == scale and is_static(p)}
        if not static or (scale, "router") not in cells:
            continue
        best = max(static, key=lambda p: _mean(static[p], "effective_accuracy"))
        router = _by_run(cells[(scale, "router")], "effective_accuracy")
        pinned = _by_run(static[best], "effective_accuracy")
        runs = sorted(set(router) & set(pinned))
        gain = Interval.paired([router[r] for r in runs], [pinned[r] for r in runs])
        compared += 1
        for r in runs:
            per_run.setdefault(r, []).append(router[r] - pinned[r])
        violations_static = 1 - _mean(cells[(scale, best)], "slo_attainment")
        violations_router = 1 - _mean(cells[(scale, "router")], "slo_attainment")
        # As the acceptance states it: the router's violations over the best static's (≤ 1/1.6 = 0.63).
        ratio = violations_router / violations_static if violations_static > 0 else float("inf")
        lines.append(
            f"| {scale:.2f} | {best} ({Interval.of(list(pinned.values())).points()}) "
            f"| {Interval.of(list(router.values())).points()} | {gain.points(signed=True)} points "
            f"| {violations_static:.1%} / {violations_router:.1%} (×{ratio:.2f}) |"
        )
    if not compared:  # routers only (an ablation, a server setting): nothing pinned to compare with
        return ["No pinned variant ran beside the router, so there is no best static policy to compare it with."]
    complete = [float(np.mean(gains)) for gains in per_run.values() if len(gains) == compared]  # runs with every scale
    lines.append(f"| mean of the loads | | | **{Interval.of(complete).points(signed=True)} points** | |")
    return lines


def generator_check(rows: list[dict[str, float | str | int]], workload: str) -> str:
    """Whether the load generator could offer more than the server carries (≥ 1.2× at the
    top load, or the top load measures the generator rather than the server). Runs are
    compared each with itself: each remeasures fp32's capacity, so their rates differ."""
    mine = [r for r in rows if r["workload"] == workload]
    top = [r for r in mine if float(r["scale"]) == max(float(r["scale"]) for r in mine)]
    by_run: dict[int, list[dict[str, float | str | int]]] = {}
    for r in top:
        by_run.setdefault(int(r["run"]), []).append(r)
    pairs = [(min(float(r["offered_rps"]) for r in got), max(float(r["carried_rps"]) for r in got))
             for got in by_run.values()]  # fmt: skip
    offered, carried = min(pairs, key=lambda pair: pair[0] / pair[1] if pair[1] > 0 else float("inf"))
    ratio = offered / carried if carried > 0 else float("inf")
    verdict = "ok" if ratio >= GENERATOR_HEADROOM else f"below {GENERATOR_HEADROOM}×: the generator may be the limit"
    slip = max(float(r["slip_ms"]) for r in mine)
    return (
        f"Generator: at the top load it offered {offered:.1f} requests/s against at most {carried:.1f} carried "
        f"(×{ratio:.2f}, {verdict}); worst lateness of a send {slip:.0f} ms."
    )


def interference_check(rows: list[dict[str, float | str | int]], workload: str) -> str:
    """The segments in which other programs took more than FOREIGN_SHARE_WARN of the
    servers' core (loadtest.interference): their cells measure the machine, not the policy."""
    shares = [(r, float(r.get("foreign_core_share", math.nan))) for r in rows if r["workload"] == workload]
    read = [(r, share) for r, share in shares if not math.isnan(share)]
    if not read:
        return "Interference: not measured (one core, or no /proc)."
    busy = [f"run {r['run']} × {float(r['scale']):g} {r['policy']} ({share:.0%})"
            for r, share in read if share > FOREIGN_SHARE_WARN]  # fmt: skip
    worst = max(share for _, share in read)
    if not busy:
        return f"Interference: other programs took at most {worst:.1%} of the servers' core in any segment."
    return (
        f"Interference: other programs took more than {FOREIGN_SHARE_WARN:.0%} of the servers' core in "
        f"{len(busy)} of {len(read)} segments, which should be rerun: {', '.join(busy)}."
    )


def server_cpu_check(rows: list[dict[str, float | str | int]], workload: str) -> str:
    """The servers' CPU per answered call at the lightest load, by policy (mean over runs, 95 %
    t): with a pinned variant and batches of one, that figure less the variant's session call
    is the event loop's cost per call plus the server's background CPU spread over the calls;
    the CPU per second against the calls per second, load by load, splits the two
    (docs/routing.md, the AVX2 EPYC)."""
    mine = [
        r
        for r in rows
        if r["workload"] == workload and not math.isnan(float(r.get("server_cpu_ms_per_answer", math.nan)))
    ]
    if not mine:
        return "Servers' CPU per answered call: not measured (one core, or no /proc)."
    lightest = min(float(r["scale"]) for r in mine)
    by_policy: dict[str, list[float]] = {}
    for r in mine:
        if float(r["scale"]) == lightest:
            by_policy.setdefault(str(r["policy"]), []).append(float(r["server_cpu_ms_per_answer"]))
    intervals = {policy: Interval.of(values) for policy, values in sorted(by_policy.items())}
    parts = [f"{policy} {i.mean:.2f} ± {i.half_width:.2f} ms" for policy, i in intervals.items()]
    return f"Servers' CPU per answered call at {lightest:g}× (mean over runs): {', '.join(parts)}."


def ablation_table(rows: list[dict[str, float | str | int]], workload: str) -> list[str]:
    """Effective accuracy of the router with each mechanism off, against all on."""
    cells = _cells(rows, workload)
    ablated = sorted({p for _, p in cells if p.startswith("router-no-")})
    scales = sorted({scale for scale, _ in cells})
    lines = [
        "| load | router | " + " | ".join(f"{p.removeprefix('router-no-')} off" for p in ablated) + " |",
        "|---|---|" + "---|" * len(ablated),
    ]
    for scale in scales:
        if (scale, "router") not in cells:
            continue
        base = _mean(cells[(scale, "router")], "effective_accuracy")
        parts = []
        for p in ablated:
            value = _mean(cells.get((scale, p), []), "effective_accuracy")
            parts.append(f"{value:.1%} ({(value - base) * 100:+.1f})")
        lines.append(f"| {scale:.2f} | {base:.1%} | " + " | ".join(parts) + " |")
    means = [
        np.mean([(_mean(cells[(s, p)], "effective_accuracy") - _mean(cells[(s, "router")], "effective_accuracy")) * 100
                 for s in scales if (s, p) in cells and (s, "router") in cells])
        for p in ablated
    ]  # fmt: skip
    lines.append("| mean change | | " + " | ".join(f"**{m:+.1f} points**" for m in means) + " |")
    return lines


def burst_recovery(segment: Segment, burst_start_s: float, burst_end_s: float) -> dict[str, float]:
    """The pre-burst level (from 5 s to the burst), the level during it, the level from
    RECOVERY_WINDOW_S after it to the end, and how soon after it ends the level from then on
    is back within RECOVERY_POINTS of the pre-burst one (whole seconds; per-second levels
    at 0.3× load rest on a dozen requests, too few to judge a point by)."""
    o = segment.outcomes

    def level(start: float, end: float = float("inf")) -> float:
        hits = [float(x.effective) for x in o if start <= x.at_s < end]
        return float(np.mean(hits)) if hits else float("nan")

    pre = level(5.0, burst_start_s)
    last_s = max(x.at_s for x in o)
    recovered = next(
        (t - burst_end_s for t in np.arange(burst_end_s, last_s, 1.0) if level(t) >= pre - RECOVERY_POINTS),
        float("nan"),
    )
    return {
        "pre_burst": pre,
        "burst": level(burst_start_s, burst_end_s),
        "after_window": level(burst_end_s + RECOVERY_WINDOW_S),
        "recovered_after_s": float(recovered),
    }


def write_reports(segments: list[Segment], out: Path, header: list[str]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    rows = [s.row() for s in segments]
    with open(out / "bench_router.csv", "w", newline="") as handle:
        columns = list(dict.fromkeys(key for row in rows for key in row))  # stacked variants' shares too
        writer = csv.DictWriter(handle, fieldnames=columns, restval=0.0)
        writer.writeheader()
        writer.writerows(rows)
    bursts = [s for s in segments if s.workload == "burst"]
    with open(out / "bench_router_burst.csv", "w", newline="") as handle:
        burst_writer = csv.writer(handle)
        burst_writer.writerow(["run", "policy", "second", "effective_accuracy", "slo_attainment", "requests"])
        for s in bursts:
            for second, effective, in_time, count in s.per_second():
                burst_writer.writerow([s.run, s.policy, second, f"{effective:.4f}", f"{in_time:.4f}", count])
    lines = ["# Router benchmark (`make bench-router`)", "", *header, ""]
    for workload in ("minilm", "digits"):
        if not any(r["workload"] == workload for r in rows):
            continue
        verdict = verdict_table(rows, workload)
        lines += [f"## {workload} on the trace", "", *verdict, "",
                  f"Run-to-run noise (mean |run 1 − run 2| of effective accuracy over all cells): "
                  f"{noise_points(rows, workload):.1f} points. {generator_check(rows, workload)}", "",
                  interference_check(rows, workload), "", server_cpu_check(rows, workload), "",
                  *trace_table(rows, workload), ""]  # fmt: skip
        if any(str(r["policy"]).startswith("router-no-") for r in rows if r["workload"] == workload):
            lines += [f"### Ablation ({workload}): effective accuracy with one mechanism off (change, points)",
                      "", *ablation_table(rows, workload), ""]  # fmt: skip
    if bursts:
        lines += ["## Burst (minilm): 20 s at 0.3×, 10 s at 3×, 20 s at 0.3× fp32 capacity", "",
                  "| run | policy | pre-burst | during | from 2 s after | back within 1 point after |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for s in bursts:
            r = burst_recovery(s, 20.0, 30.0)
            lines.append(
                f"| {s.run} | {s.policy} | {r['pre_burst']:.1%} | {r['burst']:.1%} | {r['after_window']:.1%} "
                f"| {r['recovered_after_s']:.0f} s |"
            )
        lines.append("")
    text = "\n".join(lines)
    (out / "bench_router.md").write_text(text + "\n")
    _plot(segments, rows, out / "bench_router.png")
    return text


def _plot(segments: list[Segment], rows: list[dict[str, float | str | int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for axis, workload in zip(axes[:2], ("minilm", "digits"), strict=True):
        cells = _cells(rows, workload)
        for policy in dict.fromkeys(p for _, p in cells):
            scales = sorted(s for s, p in cells if p == policy)
            values = [_mean(cells[(s, policy)], "effective_accuracy") for s in scales]
            style = "-" if is_static(policy) or policy == "router" else ":"
            axis.plot(scales, values, style, marker="o", label=policy, linewidth=2.5 if policy == "router" else 1.2)
        axis.set_xlabel("offered load (× fp32 capacity), Azure trace arrivals")
        axis.set_ylabel("effective accuracy (correct within SLO / sent)")
        axis.set_title(f"{workload} on the trace")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    burst_axis = axes[2]
    for s in segments:
        if s.workload == "burst" and s.run == 1:
            per_second = s.per_second()
            burst_axis.plot([p[0] for p in per_second], [p[1] for p in per_second], label=s.policy,
                            linewidth=2.5 if s.policy == "router" else 1.0)  # fmt: skip
    burst_axis.axvspan(20, 30, color="grey", alpha=0.15)
    burst_axis.set_xlabel("second (burst shaded)")
    burst_axis.set_ylabel("effective accuracy per second")
    burst_axis.set_title("burst: 0.3× → 3× → 0.3× fp32 capacity (run 1)")
    burst_axis.grid(alpha=0.3)
    burst_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
