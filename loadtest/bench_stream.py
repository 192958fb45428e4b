"""`python -m loadtest.bench_stream`: server CPU per request beyond the session call, unary vs
streamed vs streamed with system shared memory, with perf_analyzer as the client.

Triton's own client drives the three ways a Triton client can call: `ModelInfer` (unary),
`ModelStreamInfer` (`--streaming`: one stream per concurrent caller, gRPC's per-call setup
paid once) and the stream with tensors in system shared memory (`--streaming
--shared-memory system`: no tensor bytes in the messages). The server (`--workers 1
--hardware-profile edge`: one process, one ONNX Runtime thread) runs on the first core under
`taskset`, perf_analyzer on the second. One server per round; within a round the modes are
alternated (forward, then backward) so that drift in the machine's load falls on each alike.

Per mode and concurrency: the server's process-tree CPU (utime + stime from /proc) over the
perf_analyzer run divided by the requests it answered in that span (`slimserve_requests_total`
before and after), minus the session's own CPU per request (in-process ONNX Runtime on the
server's core with the server stopped, at the average batch the server ran:
`bench_overhead.session_cpu_ms`). Reported as mean ± 95 % CI over rounds, with perf_analyzer's
throughput. The pinned variant is given by its Triton version number (`-x`).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from loadtest.bench_overhead import Tree, batch_totals, mean_ci, serving, session_cpu_ms, session_ms_per_request
from loadtest.interference import tree_cpu_s
from slimserve.repository.format import load_model
from slimserve.server.core.versions import version_numbers

PERF_ANALYZER = Path(os.environ.get("SLIMSERVE_PERF_ANALYZER", Path(__file__).resolve().parents[2] / "shared" /
                                    "tools" / "perf-analyzer"))  # fmt: skip
MODES = {
    "unary": [],
    "stream": ["--streaming"],
    "stream+shm": ["--streaming", "--shared-memory", "system"],
}
CONCURRENCIES = (1, 32)
MEASUREMENT_MS = 3000  # perf_analyzer's window
PERF_TIMEOUT_S = 600


@dataclass(frozen=True)
class Run:
    mode: str
    round: int
    callers: int
    answered: float
    server_cpu_s: float
    batch: float
    per_s: float  # perf_analyzer's throughput

    @property
    def cpu_ms(self) -> float:
        return self.server_cpu_s * 1e3 / max(self.answered, 1.0)


def answered_total(metrics_url: str, model: str) -> float:
    """Requests of `model` answered OK so far (`slimserve_requests_total{code="OK"}`)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "slimserve_requests"
        for sample in family.samples
        if sample.name == "slimserve_requests_total" and sample.labels.get("model") == model
        and sample.labels.get("code") == "OK"
    )  # fmt: skip


def perf_analyzer(address: str, model: str, version: int, mode: str, callers: int, core: int, report: Path) -> float:
    """perf_analyzer's throughput (inferences/s) for one mode and concurrency."""
    command = ["taskset", "-c", str(core), str(PERF_ANALYZER), "-m", model, "-x", str(version), "-i", "grpc",
               "-u", address, "--concurrency-range", f"{callers}:{callers}", "-p", str(MEASUREMENT_MS),
               "--stability-percentage", "100", "--max-trials", "3", "-f", str(report), *MODES[mode]]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=PERF_TIMEOUT_S)
    if finished.returncode != 0:
        raise SystemExit(
            f"perf_analyzer {mode} c={callers} failed:\n{finished.stdout[-2000:]}{finished.stderr[-2000:]}"
        )
    (row,) = list(csv.DictReader(report.open()))
    return float(row["Inferences/Second"])


def measure_round(args: argparse.Namespace, round_: int, scratch: Path) -> list[Run]:
    modes = list(MODES) if round_ % 2 == 0 else list(MODES)[::-1]
    runs = []
    with serving(Tree("slimserve", Path.cwd()), args.repository, args.cores[0], scratch) as server:
        for mode in modes:
            for callers in CONCURRENCIES:
                rows_0, calls_0 = batch_totals(server.metrics_url, args.model, args.variant)
                done_0, cpu_0 = answered_total(server.metrics_url, args.model), tree_cpu_s([server.pid])
                per_s = perf_analyzer(server.address, args.model, args.version, mode, callers, args.cores[1],
                                      scratch / "perf.csv")  # fmt: skip
                cpu, done = tree_cpu_s([server.pid]) - cpu_0, answered_total(server.metrics_url, args.model) - done_0
                rows_1, calls_1 = batch_totals(server.metrics_url, args.model, args.variant)
                batch = (rows_1 - rows_0) / (calls_1 - calls_0) if calls_1 > calls_0 else 1.0
                run = Run(mode, round_, callers, done, cpu, batch, per_s)
                runs.append(run)
                print(f"  round {round_ + 1} {mode:<10} c={callers:<3} {per_s:8.1f}/s server cpu {run.cpu_ms:.3f} "
                      f"ms/req batch {batch:.2f}", flush=True)  # fmt: skip
    return runs


def report(runs: list[tuple[Run, dict[int, float]]], args: argparse.Namespace) -> str:
    out = [f"# Server CPU per request beyond the session call: unary vs streamed ({args.model} {args.variant})\n",
           f"- perf_analyzer as the client on core {args.cores[1]}; server on core {args.cores[0]} (--workers 1 "
           f"--hardware-profile edge); {args.rounds} round(s), modes alternated; {MEASUREMENT_MS} ms windows\n",
           "| mode | in flight | server CPU / req (ms) | session CPU / req | beyond session / req | requests/s "
           "| batch |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    beyond: dict[tuple[str, int], list[float]] = {}
    for mode in MODES:
        for callers in CONCURRENCIES:
            part = [(r, per_call) for r, per_call in runs if r.mode == mode and r.callers == callers]
            session = [session_ms_per_request(per_call, r.batch) for r, per_call in part]
            beyond[(mode, callers)] = [r.cpu_ms - s for (r, _), s in zip(part, session, strict=True)]
            out.append(f"| {mode} | {callers} | {mean_ci([r.cpu_ms for r, _ in part])} | {mean_ci(session)} | "
                       f"{mean_ci(beyond[(mode, callers)])} | {mean_ci([r.per_s for r, _ in part], 1)} | "
                       f"{mean_ci([r.batch for r, _ in part], 2)} |")  # fmt: skip
    out += ["\n## Beyond-session CPU per request, relative to unary (per round, then mean ± 95 % CI)\n",
            "| mode | in flight | ratio to unary |", "|---|---|---|"]  # fmt: skip
    for mode in list(MODES)[1:]:
        for callers in CONCURRENCIES:
            ratios = [m / u for m, u in zip(beyond[(mode, callers)], beyond[("unary", callers)], strict=True)]
            out.append(f"| {mode} | {callers} | {mean_ci(ratios)} |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args()
    if not PERF_ANALYZER.exists():
        raise SystemExit(f"perf_analyzer not found at {PERF_ANALYZER} (SLIMSERVE_PERF_ANALYZER)")
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise SystemExit("bench_stream needs two cores: one for the server, one for perf_analyzer")
    args.cores = (allowed[0], allowed[1])
    os.sched_setaffinity(0, {args.cores[1]})
    args.version = version_numbers(load_model(args.repository / args.model))[args.variant]
    graph = args.repository / args.model / args.variant / "model.onnx"
    runs: list[tuple[Run, dict[int, float]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            measured = measure_round(args, round_, Path(scratch))
            sizes = {1} | {size for r in measured for size in (math.floor(r.batch), math.ceil(r.batch))}
            per_call = {b: session_cpu_ms(graph, args.model, b, 2.0, *args.cores) for b in sorted(sizes)}
            runs += [(r, per_call) for r in measured]
    text = report(runs, args)
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
