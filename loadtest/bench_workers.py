"""`python -m loadtest.bench_workers`: `serve --workers 2` against `--workers 1`, side by side.

`distilled` digits at batch 1 (overhead dominates: the model is ~0.05 ms), the server on
every core, each worker count started in turn and alternated over the runs. Two clients:
(a) this process, grpc.aio with pre-serialised requests over 16 connections (so that the
kernel spreads them over the workers); (b) Triton's perf_analyzer, a C++ client that costs
less CPU per request (`../shared/tools/perf-analyzer`, skipped where it is absent). For
each: requests/s, the server's CPU seconds (supervisor and workers, from /proc), requests
per server CPU-second, and the client's own CPU, since on a 2-core machine the client
competes with the server for the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.bench_peers import Server, drive, started, workloads
from loadtest.interference import tree_cpu_s
from loadtest.serving import serve_command
from slimserve.repository.format import load_model

VARIANT = "distilled"
CALLERS = 64
PERF_ANALYZER = Path(__file__).resolve().parents[3] / "shared" / "tools" / "perf-analyzer"


@dataclass
class Row:
    """One worker count and client: the rate, and CPU per request on each side."""

    workers: int
    client: str
    per_s: float
    per_server_cpu_s: float  # requests per CPU-second of the server (supervisor and workers)
    client_cpu_ms: float  # the client's CPU per request


def _server(repository: Path, workers: int) -> Server:
    def command(port: int, scratch: Path) -> list[str]:
        return serve_command(repository, "--workers", str(workers), grpc_port=port)

    return Server(f"--workers {workers}", command, variant=VARIANT)


def _perf_analyzer(address: str, version: str, pid: int, seconds: float) -> Row:
    """perf_analyzer at CALLERS concurrent requests; CPU counted over its whole run (it measures
    windows until they agree), requests estimated as its last window's rate × that run."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "pa.csv"
        before, cpu, began = resource.getrusage(resource.RUSAGE_CHILDREN), tree_cpu_s([pid]), time.perf_counter()
        subprocess.run(
            [str(PERF_ANALYZER), "-m", "digits", "-x", version, "-i", "grpc", "-u", address,
             "--concurrency-range", f"{CALLERS}:{CALLERS}", "-p", str(int(seconds * 1000)), "-f", str(report)],
            check=True, capture_output=True,
        )  # fmt: skip
        server_cpu, elapsed = tree_cpu_s([pid]) - cpu, time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        per_s = float(list(csv.DictReader(report.open()))[-1]["Inferences/Second"])
    client_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    requests = per_s * elapsed
    return Row(0, "perf_analyzer (C++)", per_s, requests / server_cpu, client_cpu * 1e3 / requests)


def measure(repository: Path, workers: int, seconds: float, use_perf_analyzer: bool) -> list[Row]:
    work = next(w for w in workloads(repository) if w.model == "digits")
    payload = work.request(VARIANT)
    server = _server(repository, workers)
    with tempfile.TemporaryDirectory() as scratch, started(server, Path(scratch), None, payload) as (address, pid):
        client_cpu, began = time.process_time(), time.perf_counter()
        measured, _ = asyncio.run(drive(address, payload, CALLERS, seconds, pid))
        # The client's CPU spans drive's warm-up too: scale it to the measured window.
        client_ms = (time.process_time() - client_cpu) * 1e3 / (measured.per_s * (time.perf_counter() - began))
        rows = [Row(workers, "grpc.aio (Python)", measured.per_s, 1e3 / measured.cpu_ms_per_request, client_ms)]
        if use_perf_analyzer:
            from slimserve.server.core.versions import version_numbers

            version = str(version_numbers(load_model(repository / "digits"))[VARIANT])
            row = _perf_analyzer(address, version, pid, seconds)
            row.workers = workers
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    use_pa = PERF_ANALYZER.exists()
    rows: list[Row] = []
    for run in range(args.runs):
        for workers in (1, 2) if run % 2 == 0 else (2, 1):
            found = measure(args.repository, workers, args.seconds, use_pa)
            for row in found:
                print(f"run {run + 1} workers {row.workers} {row.client:<20} {row.per_s:8.0f}/s "
                      f"{row.per_server_cpu_s:7.0f} req/server-CPU-s, client {row.client_cpu_ms:.3f} ms CPU/req",
                      flush=True)  # fmt: skip
            rows += found
    from slimserve.repository.hardware import fingerprint

    fp = fingerprint(1)
    title = "# `--workers 2` vs `--workers 1` — `python -m loadtest.bench_workers`"
    lines = [f"{title}\n\nMachine: {fp.cpu_model} "
             f"({', '.join(fp.isa)}), {os.cpu_count()} cores shared by server and client. digits `{VARIANT}`, "
             f"batch 1, {CALLERS} callers.\n",
             "| run | client | workers | requests/s | requests per server CPU-second | client CPU per request (ms) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for index, row in enumerate(rows):
        lines.append(f"| {index // (2 * (1 + use_pa)) + 1} | {row.client} | {row.workers} | {row.per_s:.0f} | "
                     f"{row.per_server_cpu_s:.0f} | {row.client_cpu_ms:.3f} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
