"""`make bench-router-sim`: the router against the best static variant, the hindsight-best mix and
the fluid bound, in the trace-driven simulator (slimserve.simulate), with 95 % intervals.

1. **Calibration.** Every minilm cell `make bench-router` measured (`--measured`; by default
   docs/bench/bench_router_clean_core.csv: the default build's variants, the check windows 1,
   3, 5, 7, 9 of 50, 600 arrivals each, 2026-12-06, the load generator off the servers' core;
   `--measured-set 4 --measured-windows --measured-scales 0.5 1 1.5 2` for
   docs/bench/bench_router.csv, one window from arrival 2000; edge profile, each run's own
   SLOs, fp32 capacity and kind draws) is simulated
   (`--calibrate-only`: and nothing else); two physical parameters are fitted on
   the pinned cells by grid search — the machine's speed against the one that measured the
   service curves, and the per-call CPU of the event loop — and the router cells (the router
   and its ablations) are the check. Printed: simulated vs measured effective accuracy
   and SLO attainment per cell, mean and max |difference|.
2. **Ceiling.** For each variant set (`--sets`: the 4 the bench served, the 7 of the build
   before int8mixed, the 7 the default build serves now), with `--workers` serving processes on
   as many cores (default 1, as the bench), load
   (× fp32's simulated capacity) and window (`--windows` spread over the whole trace, the
   same windows and seeds for every policy): every static variant, the router, the
   hindsight-best fixed mix (`ceiling.best_mix`) and the fluid bound (`ceiling.fluid_bound`).
   Reported: means with 95 % t-intervals, router − best static (paired), gap closed =
   (router − static) / (mix − static).

Physics: `--service-curves` (docs/bench/router_sim_service.json: minilm's edge service
times at 128 tokens, the bench's length, and 32, the length the server profiles at start
and the router's starting belief, measured on the AVX-512 VNNI EPYC;
docs/bench/router_sim_service_avx2.json: the same on an AVX2-only EPYC, where the same speed
fits with 3.0 ms of loop CPU a call; docs/bench/router_sim_service_avx2_rounds.json: that CPU
again, the median of five sweeps, fit 1.15 / 4.5 ms; docs/routing.md, eighth and ninth parts).
With `--skip-calibration` on another CPU's curves, name that CPU's bench in `--measured` too:
the report's calibration table compares with it. Writes router_sim.md / .csv under `--out`.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing import Pool
from multiprocessing.pool import Pool as PoolType
from pathlib import Path

import numpy as np

from loadtest.trace import ATTRIBUTION, DEFAULT_TRACE
from slimserve.repository.hardware import cpu_description
from slimserve.router.config import RouterConfig
from slimserve.simulate.calibration import (
    CALIBRATED_LOOP_CPU_MS,
    CALIBRATED_SPEED,
    LOOP_CPU_MS_GRID,
    SERVICE_CURVES,
    SPEEDS_GRID,
    params_for,
    read_service_curves,
)
from slimserve.simulate.ceiling import best_mix, efficient, fluid_bound
from slimserve.simulate.engine import Arrival, Mix, Pinned, Policy, Result, Routed, simulate
from slimserve.simulate.server import ServerParams, VariantSpec, variants_from_repository, with_physics
from slimserve.simulate.stats import Interval
from slimserve.simulate.trace import Trace
from slimserve.simulate.workload import MAX_TOKENS, SloClasses, capacity_rps, replay, round_trip_ms

FOUR = ("fp32", "int8", "pruned", "distilled")
SEVEN = ("fp32", "int8", "pruned", "distilled", "int4", "pruned-int8", "distilled-int8")
# What the default minilm recipe serves since int8mixed joined it and int4 became opt-in.
SERVED = ("fp32", "int8", "int8mixed", "pruned", "distilled", "pruned-int8", "distilled-int8")
# Variant sets by the name `--sets` takes: the bench's 4, the 7 of the build before int8mixed,
# and the default build's 7.
SETS: dict[str, tuple[str, ...]] = {"4": FOUR, "7": SEVEN, "served": SERVED}
BENCH_START, BENCH_ARRIVALS = 2000, 600
BENCH_SCALES = (0.5, 1.0, 1.5, 2.0)
# The two calibrated parameters, their grid and the fit last reported live in
# slimserve.simulate.calibration, which `slimserve plan` reads too.
DEFAULT_SLO_MS = 100.0  # minilm's model.yaml default_slo_ms


def load_specs(repository: Path, curves_path: Path, served: Sequence[str]) -> list[VariantSpec]:
    curves = read_service_curves(curves_path)
    measured = {v: curves[v] for v in served}
    belief = {v: curves[v][32] for v in served}
    return with_physics(variants_from_repository(repository / "minilm", "cloud-cpu", served), measured, belief)


def policy_of(name: str) -> tuple[Policy, RouterConfig]:
    """A static variant by its name, or a router: `router`, `router-no-A[-no-B…]` (mechanisms
    off, MECHANISMS) and `@field=value,…` for RouterConfig fields, e.g. `router@price_wait_share=0.3`."""
    base, _, fields = name.partition("@")
    if not base.startswith("router"):
        return Pinned(name), RouterConfig()
    overrides = {k: float(v) for k, v in (f.split("=") for f in fields.split(",") if f)}
    return Routed(), RouterConfig.without(base.split("-no-")[1:], **overrides)


# -- 1. calibration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    run: int
    scale: float
    policy: str
    capacity_rps: float
    slo: SloClasses
    effective_accuracy: float
    slo_attainment: float


def measured_cells(path: Path) -> list[Cell]:
    cells = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["workload"] != "minilm":
                continue
            scale, n = float(row["scale"]), int(row["requests"])
            cells.append(Cell(
                int(row["run"]), scale, row["policy"], float(row["offered_rps"]) / scale * (n - 1) / n,
                SloClasses(float(row["interactive_slo_ms"]), float(row["background_slo_ms"])),
                float(row["effective_accuracy"]), float(row["slo_attainment"]),
            ))  # fmt: skip
    return cells


@dataclass(frozen=True)
class BenchRuns:
    """Where the measured cells came from: the variants served, each run's trace window, and
    the bench's scales (its seeds count them)."""

    specs: list[VariantSpec]
    windows: dict[int, Trace]  # run → its window
    scales: tuple[float, ...]


def simulate_cell(cell: Cell, params: ServerParams, runs: BenchRuns) -> Result:
    seed = 1000 * cell.run + runs.scales.index(cell.scale)  # bench_router.trace_workload's seed
    window = runs.windows[cell.run]
    arrivals = replay(window, cell.scale * cell.capacity_rps, cell.slo, seed, warm_rate_rps=cell.capacity_rps)
    policy, config = policy_of(cell.policy)
    return simulate(runs.specs, params, policy, arrivals, DEFAULT_SLO_MS, config, seed)


def _cell_job(job: tuple[Cell, ServerParams, BenchRuns]) -> tuple[float, float]:
    result = simulate_cell(*job)
    return result.effective_accuracy, result.slo_attainment


def calibrate(
    cells: list[Cell],
    runs: BenchRuns,
    pool: PoolType,
    grid: tuple[Sequence[float], Sequence[float]],  # type: ignore[type-arg]
) -> tuple[ServerParams, list]:  # type: ignore[type-arg]
    pinned = [c for c in cells if not c.policy.startswith("router")]
    best: tuple[float, ServerParams] | None = None
    for speed in grid[0]:
        for overhead in grid[1]:
            params = params_for(speed, overhead)
            sims = pool.map(_cell_job, [(c, params, runs) for c in pinned])
            error = float(np.mean([abs(s[0] - c.effective_accuracy) + abs(s[1] - c.slo_attainment)
                                   for s, c in zip(sims, pinned, strict=True)]))  # fmt: skip
            print(f"  calibration: speed {speed:.2f}, loop CPU {overhead:.1f} ms/call: "
                  f"mean |diff| {error / 2 * 100:.2f} points",
                  flush=True)  # fmt: skip
            if best is None or error < best[0]:
                best = (error, params)
    assert best is not None
    params = best[1]
    sims = pool.map(_cell_job, [(c, params, runs) for c in cells])
    return params, list(zip(cells, sims, strict=True))


# -- 2. ceiling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowJob:
    served: tuple[str, ...]
    scale: float
    window_index: int
    start: int
    specs: list[VariantSpec]
    params: ServerParams
    trace: Trace
    arrivals: int


def window_job(job: WindowJob) -> dict[str, object]:
    """Every policy on one window at one load: effective accuracy and attainment of each."""
    fp32 = next(s for s in job.specs if s.name == "fp32")
    capacity = capacity_rps(fp32, job.params)
    slo = SloClasses.from_round_trip(round_trip_ms(fp32, job.params))
    window = job.trace.window(job.start, job.arrivals)
    seed = 10_000 + job.window_index
    arrivals = replay(window, job.scale * capacity, slo, seed, warm_rate_rps=capacity)
    out: dict[str, object] = {"served": set_name(job.served), "scale": job.scale, "window": job.window_index}
    timing: dict[str, tuple[float, float]] = {}

    def run(name: str, policy: Policy, config: RouterConfig) -> Result:
        started = time.perf_counter()
        result = simulate(job.specs, job.params, policy, arrivals, DEFAULT_SLO_MS, config, seed)
        timing[name] = (result.sim_s, time.perf_counter() - started)
        return result

    for name in job.served:
        r = run(name, Pinned(name), RouterConfig())
        out[name] = (r.effective_accuracy, r.slo_attainment)
    r = run("router", Routed(), RouterConfig())
    out["router"] = (r.effective_accuracy, r.slo_attainment)
    out["router_shares"] = r.shares()
    draws = np.random.default_rng(seed + 1).random(len(window))
    names = [s.name for s in efficient(job.specs, MAX_TOKENS)]
    cache: dict[str, Result] = {}

    def evaluate(weights: dict[str, float]) -> float:
        result = run("mix", Mix(weights, draws), RouterConfig())
        cache[repr(sorted(weights.items()))] = result
        return result.effective_accuracy

    mix = best_mix(names, evaluate)
    best = cache[repr(sorted(mix.weights.items()))]
    out["mix"] = (best.effective_accuracy, best.slo_attainment)
    out["mix_weights"] = mix.weights
    out["bound"] = (fluid_bound(job.specs, job.params, arrivals).effective_accuracy, float("nan"))
    out["timing"] = timing
    return out


def set_name(served: tuple[str, ...]) -> str:
    return next(name for name, members in SETS.items() if members == served)


def ceiling_table(rows: list[dict[str, object]], served: tuple[str, ...], scales: Sequence[float]) -> list[dict]:  # type: ignore[type-arg]
    table = []
    for scale in scales:
        mine = [r for r in rows if r["scale"] == scale and r["served"] == set_name(served)]

        def ea(key: str, mine: list[dict[str, object]] = mine) -> list[float]:
            return [r[key][0] for r in mine]  # type: ignore[index]

        static = max(served, key=lambda v: float(np.mean(ea(v))))
        router, mix, bound, best = ea("router"), ea("mix"), ea("bound"), ea(static)
        gained = Interval.paired(router, best).mean
        headroom = Interval.paired(mix, best).mean
        shares: dict[str, float] = {}
        for r in mine:
            for v, s in r["router_shares"].items():  # type: ignore[attr-defined]
                shares[v] = shares.get(v, 0.0) + s / len(mine)
        weights: dict[str, float] = {}
        for r in mine:
            for v, w in r["mix_weights"].items():  # type: ignore[attr-defined]
                weights[v] = weights.get(v, 0.0) + w / len(mine)
        table.append({
            "served": set_name(served), "scale": scale, "windows": len(mine), "best_static": static,
            "static": Interval.of(best), "router": Interval.of(router), "mix": Interval.of(mix),
            "bound": Interval.of(bound), "router_minus_static": Interval.paired(router, best),
            "mix_minus_router": Interval.paired(mix, router),
            "gap_closed": gained / headroom if headroom > 1e-9 else float("nan"),
            "router_attainment": Interval.of([r["router"][1] for r in mine]),  # type: ignore[index]
            "static_attainment": Interval.of([r[static][1] for r in mine]),  # type: ignore[index]
            "router_shares": shares, "mix_weights": weights,
        })  # fmt: skip
    return table


def _gap_text(t: dict) -> str:  # type: ignore[type-arg]
    """Gap closed, where the mix beats the best static by more than its interval: else n/a."""
    headroom = t["mix"].mean - t["static"].mean
    return f"{t['gap_closed'] * 100:.0f}%" if headroom > t["static"].half_width else "n/a (no headroom)"


def _mix_text(weights: dict[str, float]) -> str:
    return ", ".join(f"{v} {w * 100:.0f}%" for v, w in sorted(weights.items(), key=lambda kv: -kv[1]) if w >= 0.01)


# -- 3. ablation ----------------------------------------------------------------------------


def _window_arrivals(job: WindowJob) -> tuple[list[Arrival], int]:
    fp32 = next(s for s in job.specs if s.name == "fp32")
    capacity = capacity_rps(fp32, job.params)
    slo = SloClasses.from_round_trip(round_trip_ms(fp32, job.params))
    seed = 10_000 + job.window_index
    return replay(job.trace.window(job.start, job.arrivals), job.scale * capacity, slo, seed, capacity), seed


def ablation_job(job: tuple[WindowJob, tuple[str, ...]]) -> list[dict[str, object]]:
    """The named policies (`policy_of`) on one window at one load, on the same arrivals and
    seed as `window_job`; a static variant the set does not serve is skipped."""
    window, names = job
    arrivals, seed = _window_arrivals(window)
    rows: list[dict[str, object]] = []
    for name in names:
        policy, config = policy_of(name)
        if isinstance(policy, Pinned) and name not in window.served:
            continue
        r = simulate(window.specs, window.params, policy, arrivals, DEFAULT_SLO_MS, config, seed)
        rows.append({"served": set_name(window.served), "workers": window.params.workers, "scale": window.scale,
                     "window": window.window_index,
                     "policy": name, "effective_accuracy": r.effective_accuracy,
                     "slo_attainment": r.slo_attainment, "refused": r.outcomes.count("REFUSED") / len(r.outcomes),
                     "shares": " ".join(f"{v}={s:.4f}" for v, s in r.shares().items())})  # fmt: skip
    return rows


Values = dict[int, tuple[float, float, float]]  # window → (effective accuracy, attainment, refused)
Group = tuple[str, int, float]  # variant set, workers, load


def _paired(mine: Values, theirs: Values) -> str:
    common = sorted(set(mine) & set(theirs))
    return Interval.paired([mine[w][0] for w in common], [theirs[w][0] for w in common]).points(True) if common else ""


def ablation_report(paths: Sequence[Path | str], baseline: str) -> list[str]:
    """Per set and load, every policy in the per-window CSVs `paths`: effective accuracy and
    SLO attainment (mean ± 95 % CI over windows), and paired differences against the best
    static variant and against `baseline`, on the windows both ran."""
    by: dict[tuple[str, int, float, str], Values] = {}
    for spec in paths:
        tag, _, path = str(spec).rpartition("=")  # TAG=PATH: its policies are named "policy [TAG]"
        with open(path, newline="") as handle:
            for r in csv.DictReader(handle):
                measured = (float(r["effective_accuracy"]), float(r["slo_attainment"]), float(r["refused"]))
                policy = f"{r['policy']} [{tag}]" if tag else r["policy"]
                group = (r["served"], int(r.get("workers") or 1), float(r["scale"]))
                by.setdefault((*group, policy), {})[int(r["window"])] = measured
    lines: list[str] = []
    for served, workers, scale in sorted({k[:3] for k in by}):
        key = (served, workers, scale)
        policies = sorted((k[3] for k in by if k[:3] == key), key=lambda p: (not p.startswith("router"), p))
        statics = [p for p in policies if not p.startswith("router") and "[" not in p]  # untagged ones
        best = max(statics, default="no static", key=lambda p: float(np.mean([v[0] for v in by[(*key, p)].values()])))
        members = ", ".join(SETS.get(served, ()))
        lines += [f"### set {served} ({members}), {workers} worker(s), {scale:g}× fp32's capacity "
                  f"(best static: {best})", "",
                  f"| policy | effective accuracy | SLO attainment | refused | − {best} (paired) "
                  f"| − {baseline} (paired) |", "|---|---|---|---|---|---|"]  # fmt: skip
        for p in policies:
            mine = by[(*key, p)]
            values = list(mine.values())
            vs_best = _paired(mine, by.get((*key, best), {})) if p != best else ""
            vs_base = _paired(mine, by.get((*key, baseline), {})) if p != baseline else ""
            refused = float(np.mean([v[2] for v in values])) * 100
            lines.append(f"| {p} | {Interval.of([v[0] for v in values]).points()} (n={len(values)}) | "
                         f"{Interval.of([v[1] for v in values]).points()} | {refused:.1f}% | {vs_best} | "
                         f"{vs_base} |")  # fmt: skip
        lines.append("")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--service-curves", type=Path, default=SERVICE_CURVES)
    # The bench the calibration fits (slimserve.simulate.calibration): five check windows of the default build.
    parser.add_argument("--measured", type=Path, default=Path("docs/bench/bench_router_clean_core.csv"))
    parser.add_argument("--measured-set", choices=sorted(SETS), default="served", help="the variants the bench served")
    parser.add_argument("--measured-windows", type=int, nargs="*", default=[1, 3, 5, 7, 9],
                        help="the bench's --window-indices (of --windows), one per run; none given: its one window "
                             f"from arrival {BENCH_START} (docs/bench/bench_router.csv, --measured-set 4)")  # fmt: skip
    parser.add_argument("--measured-scales", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0],
                        help=f"the bench's --scales, in its order (its seeds count them; {list(BENCH_SCALES)} for "
                             "docs/bench/bench_router.csv)")  # fmt: skip
    parser.add_argument("--speed-grid", type=float, nargs="+", default=list(SPEEDS_GRID))
    parser.add_argument("--loop-grid", type=float, nargs="+", default=list(LOOP_CPU_MS_GRID), metavar="LOOP_MS")
    parser.add_argument("--calibrate-only", action="store_true", help="stop after the calibration")
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--windows", type=int, default=50)
    parser.add_argument("--arrivals", type=int, default=BENCH_ARRIVALS,
                        help="arrivals per window (for the calibration: the bench's --arrivals)")  # fmt: skip
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--skip-calibration", nargs=2, type=float, metavar=("SPEED", "LOOP_MS"),
                        help="use these calibrated parameters instead of fitting them (the last fit: "
                             "slimserve.simulate.calibration)")  # fmt: skip
    parser.add_argument("--policies", nargs="+", metavar="POLICY",
                        help="ablation: only these policies (static variants, `router`, `router-no-MECHANISM`, "
                             "`router@field=value`) per window, no calibration or mix; per-window rows to "
                             "--windows-csv")  # fmt: skip
    parser.add_argument(
        "--sets",
        nargs="+",
        default=["4", "served"],
        choices=sorted(SETS),
        help="variant sets: 4 (the bench's), 7 (before int8mixed), served (the default build's)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="serving processes, one core each (the server's default), routing on their own views",
    )
    parser.add_argument(
        "--compute-workers",
        type=int,
        help="threads running each worker's session calls (SLIMSERVE_COMPUTE_WORKERS; default: one per variant)",
    )
    parser.add_argument(
        "--half",
        choices=["tune", "check"],
        help="ablation: only the even (tune) or odd (check) windows, so that a setting chosen on one half "
        "is judged on windows it was not chosen on",
    )
    parser.add_argument("--windows-csv", type=Path, default=Path("router_sim_windows.csv"))
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        metavar="[TAG=]CSV",
        help="ablation tables from per-window CSVs (written to --out/router_sim_ablation.md); a TAG names "
        "that file's policies 'policy [TAG]', and its static variants are not candidates for the best static",
    )
    parser.add_argument("--baseline", default="router", help="the policy --report pairs every other one with")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        text = "\n".join(ablation_report(args.report, args.baseline)) + "\n"
        (args.out / "router_sim_ablation.md").write_text(text)
        print(text)
        return 0
    trace = Trace.load(args.trace)
    cpu = f"{cpu_description()}; {args.processes} processes"
    print(f"CPU: {cpu}\n{ATTRIBUTION}", flush=True)
    specs = {name: load_specs(args.repository, args.service_curves, SETS[name]) for name in args.sets}
    workers = {"cores": float(args.workers), "workers": args.workers, "compute_workers": args.compute_workers}
    lines = ["# Router simulator (`make bench-router-sim`)", "", f"Machine: {cpu}.", ATTRIBUTION, ""]
    csv_rows: list[dict[str, object]] = []
    with Pool(args.processes) as pool:
        if args.policies:  # the ablation (section 3) instead of the calibration and the ceiling
            params = replace(
                params_for(*(args.skip_calibration or (CALIBRATED_SPEED, CALIBRATED_LOOP_CPU_MS))), **workers
            )
            numbered = list(enumerate(trace.window_starts(args.arrivals, args.windows)))
            if args.half:
                numbered = [(i, start) for i, start in numbered if i % 2 == (args.half == "check")]
            jobs_a = [(WindowJob(SETS[n], scale, i, start, specs[n], params, trace, args.arrivals),
                       tuple(args.policies)) for n in args.sets for scale in args.scales
                      for i, start in numbered]  # fmt: skip
            found: list[dict[str, object]] = []
            for done, rows_a in enumerate(pool.imap(ablation_job, jobs_a, chunksize=1), 1):
                found += rows_a
                if done % 50 == 0:
                    print(f"  {done}/{len(jobs_a)} window jobs", flush=True)
            with open(args.windows_csv, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(found[0]))
                writer.writeheader()
                writer.writerows(found)
            print("\n".join(ablation_report([args.windows_csv], args.baseline)))
            return 0
        cells = measured_cells(args.measured)
        runs = bench_runs(args, trace, cells)
        if args.skip_calibration:
            params = params_for(*args.skip_calibration)
            sims = pool.map(_cell_job, [(c, params, runs) for c in cells])
            calibrated = list(zip(cells, sims, strict=True))
        else:
            params, calibrated = calibrate(cells, runs, pool, (args.speed_grid, args.loop_grid))
        lines += calibration_lines(params, calibrated, runs, csv_rows, args)
        print("\n".join(lines[-40:]), flush=True)
        if args.calibrate_only:
            (args.out / "router_sim_calibration.md").write_text("\n".join(lines) + "\n")
            return 0
        params = replace(params, **workers)
        starts = trace.window_starts(args.arrivals, args.windows)
        jobs = [WindowJob(SETS[name], scale, i, start, specs[name], params, trace, args.arrivals)
                for name in args.sets for scale in args.scales
                for i, start in enumerate(starts)]  # fmt: skip
        started = time.perf_counter()
        rows = pool.map(window_job, jobs, chunksize=1)
        wall_s = time.perf_counter() - started
    lines += ceiling_lines(rows, args, csv_rows, wall_s)
    lines += speed_lines(rows, cpu)
    text = "\n".join(lines) + "\n"
    (args.out / "router_sim.md").write_text(text)
    with open(args.out / "router_sim.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in csv_rows for k in r)))
        writer.writeheader()
        writer.writerows(csv_rows)
    print(text)
    return 0


def bench_runs(args: argparse.Namespace, trace: Trace, cells: list[Cell]) -> BenchRuns:
    """The bench's variants, each run's window and its scales, from the arguments."""
    specs = load_specs(args.repository, args.service_curves, SETS[args.measured_set])
    numbers = sorted({c.run for c in cells})
    if args.measured_windows:
        if len(args.measured_windows) < len(numbers):
            raise SystemExit(f"--measured-windows names {len(args.measured_windows)} windows for {len(numbers)} runs")
        starts = trace.window_starts(args.arrivals, args.windows)
        windows = {run: trace.window(starts[args.measured_windows[run - 1]], args.arrivals) for run in numbers}
    else:
        windows = {run: trace.window(BENCH_START, args.arrivals) for run in numbers}
    return BenchRuns(specs, windows, tuple(args.measured_scales))


def calibration_lines(params: ServerParams, calibrated: list, runs: BenchRuns, csv_rows: list,  # type: ignore[type-arg]
                      args: argparse.Namespace) -> list[str]:  # fmt: skip
    fp32 = runs.specs[0]
    where = (f"windows {', '.join(map(str, args.measured_windows))} of {args.windows}" if args.measured_windows
             else f"{args.arrivals} arrivals from the {BENCH_START}th")  # fmt: skip
    capacities = sorted({round(c.capacity_rps, 1) for c, _ in calibrated})
    lines = [
        f"## Calibration against `make bench-router` ({args.measured}: minilm, {len(runs.specs)} variants, "
        f"{where}, edge)",
        "",
        f"Calibrated: speed **{params.speed:.2f}** × the service curves of {args.service_curves}; "
        f"event-loop CPU **{params.overhead_ms:.1f} ms** per call ({params.pre_ms:.2f} before the session call, "
        f"{params.post_ms:.2f} after); fixed: 1 core shared by processor sharing, one thread per session, "
        f"refusal {params.refuse_ms} ms, outside {params.outside_ms} ms. Simulated fp32 round trip "
        f"{round_trip_ms(fp32, params):.1f} ms and capacity {capacity_rps(fp32, params):.1f} calls/s "
        f"(the bench measured fp32 capacities of {' / '.join(map(str, capacities))} calls/s in its runs). "
        "Fitted on the pinned cells; the router cells are the check.",
        "",
        "| load | policy | effective accuracy: simulated / measured (runs) | diff "
        "| SLO attainment: simulated / measured | diff |",
        "|---|---|---|---|---|---|",
    ]
    keyed: dict[tuple[float, str], list] = {}  # type: ignore[type-arg]
    for cell, sim in calibrated:
        keyed.setdefault((cell.scale, cell.policy), []).append((cell, sim))
    diffs: dict[str, list[float]] = {"pinned": [], "router": []}
    for (scale, policy), pairs in sorted(keyed.items()):
        sim_ea = float(np.mean([s[0] for _, s in pairs]))
        sim_at = float(np.mean([s[1] for _, s in pairs]))
        meas_ea = float(np.mean([c.effective_accuracy for c, _ in pairs]))
        meas_at = float(np.mean([c.slo_attainment for c, _ in pairs]))
        each = " / ".join(f"{c.effective_accuracy * 100:.1f}" for c, _ in sorted(pairs, key=lambda p: p[0].run))
        kind = "router" if policy.startswith("router") else "pinned"
        diffs[kind] += [abs(sim_ea - meas_ea), abs(sim_at - meas_at)]
        lines.append(f"| {scale:.2f} | {policy} | {sim_ea * 100:.1f}% / {meas_ea * 100:.1f}% ({each}) | "
                     f"{(sim_ea - meas_ea) * 100:+.1f} | {sim_at * 100:.1f}% / {meas_at * 100:.1f}% | "
                     f"{(sim_at - meas_at) * 100:+.1f} |")  # fmt: skip
        csv_rows.append({"table": "calibration", "scale": scale, "policy": policy,
                         "simulated_effective_accuracy": sim_ea,
                         "measured_effective_accuracy": meas_ea, "simulated_slo_attainment": sim_at,
                         "measured_slo_attainment": meas_at})  # fmt: skip
    every = diffs["pinned"] + diffs["router"]
    lines += [
        "",
        f"Mean |diff| over every cell and both measures: **{np.mean(every) * 100:.1f} points** (max "
        f"{max(every) * 100:.1f}); pinned cells (fitted) {np.mean(diffs['pinned']) * 100:.1f} (max "
        f"{max(diffs['pinned']) * 100:.1f}); router cells (not fitted) {np.mean(diffs['router']) * 100:.1f} (max "
        f"{max(diffs['router']) * 100:.1f}).",
        "",
    ]
    return lines


def ceiling_lines(rows: list, args: argparse.Namespace, csv_rows: list, wall_s: float) -> list[str]:  # type: ignore[type-arg]
    lines = []
    for name in args.sets:
        served = SETS[name]
        table = ceiling_table(rows, served, args.scales)
        lines += [
            f"## {len(served)} variants ({', '.join(served)}), {args.workers} worker(s) on as many cores: "
            f"effective accuracy, mean ± 95 % CI over "
            f"{table[0]['windows']} windows of {args.arrivals} arrivals",
            "",
            "| load × fp32 | best static | router | hindsight mix | fluid bound | router − static (paired) | "
            "mix − router (paired) | gap closed | SLO attainment static / router | router's shares "
            "| mix (mean weights) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for t in table:
            lines.append(
                f"| {t['scale']:.1f} | {t['best_static']} {t['static'].points()} | {t['router'].points()} | "
                f"{t['mix'].points()} | {t['bound'].points()} | {t['router_minus_static'].points(True)} | "
                f"{t['mix_minus_router'].points(True)} | {_gap_text(t)} | "
                f"{t['static_attainment'].mean * 100:.1f}% / {t['router_attainment'].mean * 100:.1f}% | "
                f"{_mix_text(t['router_shares'])} | {_mix_text(t['mix_weights'])} |"
            )
            row = {"table": f"ceiling_{name}_w{args.workers}", "scale": t["scale"], "policy": t["best_static"]}
            for key in ("static", "router", "mix", "bound", "router_minus_static", "mix_minus_router"):
                row[f"{key}_mean"], row[f"{key}_ci95"] = t[key].mean, t[key].half_width
            row["gap_closed"] = t["gap_closed"]
            csv_rows.append(row)
        lines.append("")
    lines += [
        f"Ceiling runs: {len(rows)} window × load × set jobs in {wall_s:.0f} s wall on {args.processes} processes.",
        "",
    ]
    return lines


def speed_lines(rows: list, cpu: str) -> list[str]:  # type: ignore[type-arg]
    totals: dict[str, list[float]] = {}
    for r in rows:
        for name, (sim_s, wall_s) in r["timing"].items():
            kind = name if name in ("router", "mix") else "static"
            t = totals.setdefault(kind, [0.0, 0.0])
            t[0] += sim_s
            t[1] += wall_s
    parts = [
        f"{kind} {sim / wall:.0f}× ({sim:.0f} simulated s in {wall:.1f} s)" for kind, (sim, wall) in totals.items()
    ]
    return [f"Speed against real time, one process each on {cpu}: " + "; ".join(parts) + ".", ""]


if __name__ == "__main__":
    sys.exit(main())
