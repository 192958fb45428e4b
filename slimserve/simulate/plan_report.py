"""What `slimserve plan` prints and draws: a Markdown report, a JSON document, a PNG.

Every figure is simulated, and the report says with which parameters (the calibration, the
service times, the windows) and, for the Azure trace, whose arrivals they are (CC-BY 4.0).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from slimserve.simulate.calibration import SOURCE
from slimserve.simulate.plan import ROUTER, PlanResult
from slimserve.simulate.stats import Interval
from slimserve.simulate.trace import ATTRIBUTION


def _shares_text(shares: dict[str, float]) -> str:
    return ", ".join(f"{v} {s:.0%}" for v, s in shares.items() if s >= 0.01) or "none answered"


def _sustained_text(result: PlanResult, hardware: str, cores: int, policy: str) -> str:
    found = result.sustained(hardware, cores, policy)
    if found is None:
        return "not run"
    if found.bound == "below":
        lowest = min(result.request.loads_x)
        return f"< {lowest * result.capacity_rps[(hardware, cores)]:.1f} (< {lowest:g}×)"
    prefix = "≥ " if found.bound == "at least" else ""
    return f"{prefix}{found.rate_rps:.1f} ({prefix}{found.load_x:.2f}×)"


def header_lines(result: PlanResult) -> list[str]:
    request = result.request
    calibration = request.calibration
    slo = request.slo.describe() if request.slo else "every call with the model's default_slo_ms"
    model = next(iter(result.models.values()))
    lines = [
        f"# Capacity plan: {request.model} ({', '.join(request.hardware)})",
        "",
        f"Simulated (slimserve.simulate, the real router on a simulated clock), not measured: speed "
        f"**{calibration.speed:.2f}** × the service times, event-loop CPU **{calibration.loop_cpu_ms:.1f} ms** "
        f"per call" + (f" — the calibrated defaults, {SOURCE}." if calibration.is_default else " (set by hand)."),
        f"Traffic: {request.traffic.source}; {len(request.traffic.trace)} arrivals, replayed as "
        f"{request.windows} windows of {min(request.arrivals, len(request.traffic.trace))} spread over it, "
        f"each compressed to the rate asked. SLOs: {slo} (default {model.default_slo_ms:g} ms).",
    ]
    if request.traffic.azure:
        lines.append(ATTRIBUTION)
    lines.append(
        f"Target: effective accuracy ≥ {request.target_accuracy:.0%} and SLO attainment ≥ {request.target_slo:.0%} "
        "(means over the windows)."
    )
    for hardware, sim in result.models.items():
        lines.append(f"{hardware}: {'; '.join(sim.notes)}.")
    lines.append(
        "Topologies: cloud-cpu = one machine, its cores shared by "
        + (f"{request.workers} serving process(es)" if request.workers else "one serving process per core")
        + "; edge = that many one-core boxes, calls spread at random."
    )
    if not result.complete:
        lines.append(f"**Incomplete**: the time budget ({request.max_seconds:g} s) ran out; cells not run are marked.")
    return [*lines, ""]


def rate_lines(result: PlanResult) -> list[str]:
    request = result.request
    rate = request.traffic.rate_rps
    lines = [f"## How many cores for {rate:.1f} req/s", ""]
    for hardware in request.hardware:
        fewest = result.fewest_cores(hardware, ROUTER)
        if fewest is None:
            lines.append(f"- **{hardware}**: the router meets the target at none of {list(request.cores)} cores.")
        else:
            cell = result.at_rate(hardware, fewest, ROUTER)
            assert cell is not None
            pinned = [p for p in result.policies(hardware)[1:]
                      if (c := result.at_rate(hardware, fewest, p)) and c.meets(request.target_accuracy,
                                                                                request.target_slo)]  # fmt: skip
            lines.append(
                f"- **{hardware}: {fewest} core(s)**; the router carries it with {_shares_text(cell.shares)} "
                f"(effective accuracy {cell.effective_accuracy.points()}, SLO attainment "
                f"{cell.slo_attainment.mean:.1%}); pinned variants that also meet it there: "
                f"{', '.join(pinned) or 'none'}."
            )
    for hardware in request.hardware:
        alone = [f"{p} {n}" for p in result.policies(hardware)[1:] if (n := result.fewest_cores(hardware, p))]
        lines.append(f"- {hardware}, the fewest cores for each pinned variant alone: {', '.join(alone) or 'none'}"
                     f"{'' if alone else ' meets the target'}.")  # fmt: skip
    lines += ["", "| cores | " + " | ".join(f"{h}: {ROUTER} accuracy / SLO | {h}: router's shares"
                                            for h in request.hardware) + " |",
              "|---|" + "---|---|" * len(request.hardware)]  # fmt: skip
    for cores in sorted(request.cores):
        row = [str(cores)]
        for hardware in request.hardware:
            cell = result.at_rate(hardware, cores, ROUTER)
            if cell is None:
                row += ["not run", ""]
                continue
            mark = "✓" if cell.meets(request.target_accuracy, request.target_slo) else "✗"
            row += [f"{cell.effective_accuracy.mean:.1%} / {cell.slo_attainment.mean:.1%} {mark}",
                    _shares_text(cell.shares)]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def sustained_lines(result: PlanResult) -> list[str]:
    request = result.request
    setups = [(h, n) for n in sorted(request.cores) for h in request.hardware]
    lines = [
        "## Sustainable load per policy: req/s (× fp32's capacity there)",
        "",
        "fp32's simulated capacity: "
        + "; ".join(f"{h} {n} core(s) {result.capacity_rps[(h, n)]:.1f} req/s" for h, n in setups)
        + ". Where a policy stops meeting the target, interpolated between the grid's loads "
        + f"({', '.join(f'{x:g}' for x in sorted(request.loads_x))}× fp32's capacity).",
        "",
        "| policy | " + " | ".join(f"{h}, {n} core(s)" for h, n in setups) + " |",
        "|---|" + "---|" * len(setups),
    ]
    names = list(dict.fromkeys(p for h in request.hardware for p in result.policies(h)))
    for policy in names:
        cells = [_sustained_text(result, h, n, policy) if policy in result.policies(h) else "—" for h, n in setups]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def curve_lines(result: PlanResult) -> list[str]:
    request = result.request
    cores = min(request.cores)
    lines = [f"## Effective accuracy by load, {cores} core(s) (SLO attainment in brackets; the plot)", ""]
    loads = sorted(request.loads_x)
    for hardware in request.hardware:
        lines += [f"{hardware}:", "", "| policy | " + " | ".join(f"{x:g}×" for x in loads) + " |",
                  "|---|" + "---|" * len(loads)]  # fmt: skip
        for policy in result.policies(hardware):
            by_load = {c.load_x: c for c in result.sweep(hardware, cores, policy)}
            row = []
            for x in loads:
                cell = next((c for lx, c in by_load.items() if math.isclose(lx, x, rel_tol=1e-6)), None)
                row.append("" if cell is None else
                           f"{cell.effective_accuracy.mean:.1%} ({cell.slo_attainment.mean:.0%})")  # fmt: skip
            lines.append(f"| {policy} | " + " | ".join(row) + " |")
        lines.append("")
    return lines


def render_markdown(result: PlanResult) -> str:
    footer = f"{result.simulations} replays in {result.elapsed_s:.0f} s."
    return "\n".join([*header_lines(result), *rate_lines(result), *sustained_lines(result), *curve_lines(result),
                      footer]) + "\n"  # fmt: skip


def render_json(result: PlanResult) -> str:
    request = result.request

    def number(x: float) -> float | None:
        return x if math.isfinite(x) else None  # one window has no interval: null, not Infinity

    def interval(i: Interval) -> dict[str, float | None]:
        return {"mean": number(i.mean), "ci95": number(i.half_width)}

    setups = [(h, n) for h in request.hardware for n in sorted(request.cores)]
    document = {
        "model": request.model,
        "simulated": True,
        "calibration": {"speed": request.calibration.speed, "loop_cpu_ms": request.calibration.loop_cpu_ms,
                        "calibrated_defaults": request.calibration.is_default, "source": SOURCE},
        "traffic": {"source": request.traffic.source, "rate_rps": request.traffic.rate_rps,
                    "arrivals": len(request.traffic.trace),
                    "attribution": ATTRIBUTION if request.traffic.azure else None},
        "slo_mix": [{"slo_ms": s, "share": w} for s, w in request.slo.classes] if request.slo else None,
        "target": {"effective_accuracy": request.target_accuracy, "slo_attainment": request.target_slo},
        "windows": request.windows,
        "complete": result.complete,
        "capacity_rps": [{"hardware": h, "cores": n, "fp32_rps": result.capacity_rps[(h, n)]} for h, n in setups],
        "notes": {h: list(m.notes) for h, m in result.models.items()},
        "sustained": [
            {"hardware": h, "cores": n, "policy": p, "rate_rps": s.rate_rps, "load_x": s.load_x, "bound": s.bound}
            for h, n in setups for p in result.policies(h) if (s := result.sustained(h, n, p)) is not None
        ],
        "fewest_cores": {h: {p: result.fewest_cores(h, p) for p in result.policies(h)} for h in request.hardware},
        "cells": [
            {"kind": c.kind, "hardware": c.hardware, "cores": c.cores, "policy": c.policy, "rate_rps": c.rate_rps,
             "load_x": c.load_x, "effective_accuracy": interval(c.effective_accuracy),
             "slo_attainment": interval(c.slo_attainment), "shares": c.shares,
             "meets_target": c.meets(request.target_accuracy, request.target_slo)}
            for c in result.cells
        ],
        "replays": result.simulations,
        "elapsed_s": number(result.elapsed_s),
    }  # fmt: skip
    return json.dumps(document, indent=2, allow_nan=False, default=lambda x: None)


def plot(result: PlanResult, path: Path) -> None:
    """Effective accuracy against load per policy, one panel per hardware profile, at the
    first core count; filled markers where a policy meets both targets (style: tradeoff.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    request = result.request
    cores = min(request.cores)
    figure, axes = plt.subplots(1, len(request.hardware), figsize=(6.5 * len(request.hardware), 5), squeeze=False)
    for axis, hardware in zip(axes[0], request.hardware, strict=True):
        for index, policy in enumerate(result.policies(hardware)):
            cells = result.sweep(hardware, cores, policy)
            if not cells:
                continue
            color = f"C{index}"
            router = policy == ROUTER
            axis.plot([c.load_x for c in cells], [c.effective_accuracy.mean for c in cells], color=color,
                      linewidth=2.5 if router else 1, label=policy)  # fmt: skip
            meets = [c.meets(request.target_accuracy, request.target_slo) for c in cells]
            axis.scatter([c.load_x for c in cells], [c.effective_accuracy.mean for c in cells], s=30,
                         color=[color if m else "none" for m in meets], edgecolors=color, zorder=3)  # fmt: skip
        if request.target_accuracy > 0:
            axis.axhline(request.target_accuracy, color="grey", linestyle=":", linewidth=1)
            axis.annotate(f"target {request.target_accuracy:.0%}", (axis.get_xlim()[0], request.target_accuracy),
                          fontsize=7, color="grey", xytext=(4, 2), textcoords="offset points")  # fmt: skip
        axis.set_xlabel(f"load (× fp32's capacity, {result.capacity_rps[(hardware, cores)]:.1f} req/s)")
        axis.set_ylabel("effective accuracy (quality of in-time answers / calls)")
        axis.set_title(f"{request.model} on {hardware}, {cores} core(s): simulated\n"
                       f"(filled: meets SLO attainment ≥ {request.target_slo:.0%} and the accuracy target)",
                       fontsize=10)  # fmt: skip
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
