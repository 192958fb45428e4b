"""`make bench-peers`: slimserve against MLServer 1.7.1 and KServe 0.21 on the same ONNX files.

Every server serves the same graphs (`digits` and `minilm` fp32 from the repository) with
ONNX Runtime on one thread, pinned to the first core; the client (this process, grpc.aio,
requests serialised once) runs on the second. The servers are alternated within one run and
every measurement is side by side, beside in-process ONNX Runtime on the server's core, the
physical limit no server beats, and a bare grpc.aio echo server, the floor of what a Python
gRPC server spends per call. Peers run from their own venvs under `.bench-peers/` (ignored
by git), created on first use with the same ONNX Runtime version as slimserve's.

Per server and model: batch-1 latency p50/p99 and throughput at 1, 8 and 32 concurrent
callers, the server's CPU per request (its whole process tree, from /proc), and whether its
answer equals in-process ONNX Runtime's bit for bit. Markdown and CSV go to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

from loadtest.interference import pin_every_thread, tree_cpu_s
from loadtest.messages import infer_request
from loadtest.serving import free_port, serve_command
from slimserve.repository.sessions import make_session

PEERS = Path(__file__).resolve().parent / "peers"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
MLSERVER = ["mlserver==1.7.1", "uvloop==0.21.0"]  # uvloop 0.23 crashes MLServer's worker pool (SeldonIO/MLServer#2286)
KSERVE = ["kserve==0.21.0"]
CONCURRENCIES = (1, 8, 32)
CALLERS_PER_CHANNEL = 8  # one HTTP/2 connection carries this many callers
SEQ_LEN = 32  # minilm tokens per request
START_TIMEOUT_S = 300.0
WARMUP_S = 1.0


@dataclass(frozen=True)
class Workload:
    """One model: its graph, one batch-1 request's inputs, and in-process ORT's answer."""

    model: str
    graph: Path
    inputs: dict[str, np.ndarray]
    reference: np.ndarray

    def request(self, variant: str) -> bytes:
        return infer_request(self.model, self.inputs, variant=variant).SerializeToString()


@dataclass
class Measured:
    """One server, model and concurrency."""

    server: str
    model: str
    callers: int
    p50_ms: float
    p99_ms: float
    per_s: float
    cpu_ms_per_request: float
    equal: str = ""  # "bit-identical", or the largest difference from in-process ORT
    run: int = 0


@dataclass(frozen=True)
class Server:
    """How to start one server configuration, and the version string its requests carry."""

    name: str
    command: Callable[[int, Path], list[str]]  # (gRPC port, scratch folder) -> argv
    variant: str = ""
    env: dict[str, str] = field(default_factory=dict)


def workloads(repository: Path) -> list[Workload]:
    from slimserve.variants.data import load_digits_split, minilm_tokenizer

    images = load_digits_split()[1].inputs["images"][:1]
    tokens = minilm_tokenizer()(["Serving compressed models side by side with their peers."], pad_to=SEQ_LEN)
    found = []
    for model, inputs in (("digits", {"images": images}), ("minilm", dict(tokens))):
        graph = repository / model / "fp32" / "model.onnx"
        inputs = {name: np.ascontiguousarray(value) for name, value in inputs.items()}
        found.append(Workload(model, graph, inputs, make_session(str(graph), 1).run(None, inputs)[0]))
    return found


def ensure_venv(folder: Path, packages: list[str]) -> Path:
    """A venv with `packages` and slimserve's ONNX Runtime version; made once, kept."""
    wanted = [*packages, f"onnxruntime=={version('onnxruntime')}"]
    stamp = folder / ".installed"
    if not stamp.exists() or stamp.read_text() != " ".join(wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
        pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, *wanted], check=True)
        stamp.write_text(" ".join(wanted))
    return folder / "bin"


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1e3


async def drive(address: str, payload: bytes, callers: int, seconds: float, pid: int) -> tuple[Measured, bytes]:
    # One connection per channel (a local subchannel pool): gRPC would otherwise share one
    # connection between channels to the same address, and a server with several worker
    # processes (SO_REUSEPORT) is spread over connections.
    options = [("grpc.use_local_subchannel_pool", 1)]
    count = math.ceil(callers / CALLERS_PER_CHANNEL)
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(count)]
    calls = [channel.unary_unary(METHOD) for channel in channels]
    latencies: list[float] = []
    recording = False
    stop = False
    last = b""

    async def caller(index: int) -> None:
        nonlocal last
        call = calls[index % len(calls)]
        while not stop:
            started = time.perf_counter()
            last = await call(payload, timeout=60)
            if recording:
                latencies.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(caller(i)) for i in range(callers)]
    await asyncio.sleep(WARMUP_S)
    recording, began, cpu_before = True, time.perf_counter(), tree_cpu_s([pid])
    await asyncio.sleep(seconds)
    recording, elapsed, cpu_used = False, time.perf_counter() - began, tree_cpu_s([pid]) - cpu_before
    stop = True
    await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close()
    count = len(latencies)
    measured = Measured(
        "", "", callers, _percentile(latencies, 0.5), _percentile(latencies, 0.99), count / elapsed,
        cpu_used * 1e3 / max(count, 1),
    )  # fmt: skip
    return measured, last


def _compare(response: bytes, reference: np.ndarray) -> str:
    answer = pb.ModelInferResponse.FromString(response)
    if answer.raw_output_contents:
        values = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
    else:
        values = np.asarray(answer.outputs[0].contents.fp32_contents, dtype=np.float32)
    values = values.reshape(reference.shape)
    if np.array_equal(values, reference):
        return "bit-identical"
    return f"max diff {float(np.max(np.abs(values - reference))):.2e}"


def in_process(work: Workload, seconds: float, core: int) -> Measured:
    """Sequential session calls on the server's core: the latency and rate no server beats."""
    os.sched_setaffinity(0, {core})
    session = make_session(str(work.graph), 1)
    for _ in range(20):
        session.run(None, work.inputs)
    latencies = []
    began, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - began < seconds:
        started = time.perf_counter()
        session.run(None, work.inputs)
        latencies.append(time.perf_counter() - started)
    elapsed, cpu_used = time.perf_counter() - began, time.process_time() - cpu
    return Measured(
        "in-process ORT", work.model, 1, _percentile(latencies, 0.5), _percentile(latencies, 0.99),
        len(latencies) / elapsed, cpu_used * 1e3 / len(latencies), "bit-identical",
    )  # fmt: skip


@contextmanager
def started(server: Server, scratch: Path, core: int | None, probe: bytes) -> Iterator[tuple[str, int]]:
    """The server running on `core` (None: every core), answering `probe`; stopped (SIGTERM,
    then SIGKILL) after."""
    port = free_port()
    log = scratch / f"{server.name.replace(' ', '_')}.log"
    process = subprocess.Popen(
        server.command(port, scratch), stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, **server.env, "OMP_NUM_THREADS": "1"}, start_new_session=True,
        preexec_fn=None if core is None else lambda: os.sched_setaffinity(0, {core}),
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary(METHOD)
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{server.name} did not start; its log:\n{log.read_text()[-3000:]}")
                try:
                    call(probe, timeout=5)
                    break
                except grpc.RpcError:
                    time.sleep(0.5)
        yield address, process.pid
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _mlserver(bin_dir: Path, works: list[Workload], *, debug: bool, batching: bool, workers: int) -> Server:
    def command(port: int, scratch: Path) -> list[str]:
        folder = Path(tempfile.mkdtemp(dir=scratch, prefix="mlserver-"))
        settings = {"debug": debug, "parallel_workers": workers, "host": "127.0.0.1", "grpc_port": port,
                    "http_port": free_port(), "metrics_port": free_port()}  # fmt: skip
        (folder / "settings.json").write_text(json.dumps(settings, indent=2))
        for work in works:
            model = folder / work.model
            model.mkdir()
            shutil.copy(PEERS / "mlserver_onnx.py", model / "mlserver_onnx.py")
            spec: dict[str, object] = {"name": work.model, "implementation": "mlserver_onnx.OnnxModel",
                                       "parameters": {"uri": str(work.graph.resolve())}}  # fmt: skip
            if batching:  # MLServer's adaptive batching: merge up to 32 calls, waiting at most 1 ms
                spec.update(max_batch_size=32, max_batch_time=0.001)
            (model / "model-settings.json").write_text(json.dumps(spec, indent=2))
        return [str(bin_dir / "mlserver"), "start", str(folder)]

    parts = ["access log on" if debug else "access log off", "adaptive batching" if batching else "no batching"]
    if workers == 0:
        parts.append("no worker pool")
    return Server(f"MLServer ({', '.join(parts)})", command)


def servers(repository: Path, works: list[Workload], peers: Path, only: set[str] | None) -> list[Server]:
    def slimserve(port: int, scratch: Path) -> list[str]:
        return serve_command(repository, "--hardware-profile", "edge", grpc_port=port)

    found = [Server("slimserve", slimserve, variant="fp32")]
    if only is None or "mlserver" in only:
        ml = ensure_venv(peers / "mlserver", MLSERVER)
        found += [
            _mlserver(ml, works, debug=True, batching=False, workers=1),  # MLServer's defaults
            _mlserver(ml, works, debug=False, batching=False, workers=1),
            _mlserver(ml, works, debug=False, batching=True, workers=1),
            _mlserver(ml, works, debug=False, batching=False, workers=0),
        ]
    if only is None or "kserve" in only:
        ks = ensure_venv(peers / "kserve", KSERVE)

        def kserve(port: int, scratch: Path) -> list[str]:
            graphs = [f"{w.model}={w.graph.resolve()}" for w in works]
            return [str(ks / "python"), str(PEERS / "kserve_onnx.py"), "--grpc-port", str(port),
                    "--http-port", str(free_port()), *graphs]  # fmt: skip

        found.append(Server("KServe ModelServer", kserve))
    return [s for s in found if only is None or s.name.split()[0].lower() in only]


def measure_server(server: Server, works: list[Workload], seconds: float, cores: tuple[int, int]) -> list[Measured]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        probe = works[0].request(server.variant)
        with started(server, Path(scratch), cores[0], probe) as (address, pid):
            pin_every_thread({cores[1]})  # gRPC's threads too, started by the probe
            for work in works:
                payload = work.request(server.variant)
                for callers in CONCURRENCIES:
                    measured, last = asyncio.run(drive(address, payload, callers, seconds, pid))
                    measured.server, measured.model, measured.equal = (
                        server.name,
                        work.model,
                        _compare(last, work.reference),
                    )
                    rows.append(measured)
                    print(f"  {server.name:<52} {work.model:<7} c={callers:<3} {measured.per_s:8.1f}/s "
                          f"p50 {measured.p50_ms:6.2f} p99 {measured.p99_ms:6.2f} ms "
                          f"cpu {measured.cpu_ms_per_request:.3f} ms/req  {measured.equal}", flush=True)  # fmt: skip
    return rows


def measure_echo(work: Workload, seconds: float, cores: tuple[int, int]) -> list[Measured]:
    """The bare grpc.aio server answering with slimserve's own answer bytes for `work`."""
    answer = pb.ModelInferResponse(model_name=work.model, model_version="fp32")
    answer.outputs.add(name="out", datatype="FP32", shape=list(work.reference.shape))
    answer.raw_output_contents.append(work.reference.tobytes())
    with tempfile.TemporaryDirectory() as scratch:
        stored = Path(scratch) / "response.bin"
        stored.write_bytes(answer.SerializeToString())
        echo = Server("grpc.aio echo", lambda port, _: [sys.executable, str(PEERS / "echo_server.py"), str(port),
                                                          str(stored)])  # fmt: skip
        rows = []
        payload = work.request("fp32")
        with started(echo, Path(scratch), cores[0], payload) as (address, pid):
            pin_every_thread({cores[1]})
            for callers in CONCURRENCIES:
                measured, _ = asyncio.run(drive(address, payload, callers, seconds, pid))
                measured.server, measured.model, measured.equal = echo.name, work.model, "(stored bytes)"
                rows.append(measured)
    return rows


def _row(m: Measured) -> list[object]:
    return [m.server, m.model, m.callers, f"{m.p50_ms:.3f}", f"{m.p99_ms:.3f}", f"{m.per_s:.1f}",
            f"{m.cpu_ms_per_request:.3f}", m.equal]  # fmt: skip


HEADER = ["server", "model", "callers", "p50_ms", "p99_ms", "requests_per_s", "server_cpu_ms_per_request", "output"]


def summary(rows: list[Measured], model: str) -> list[str]:
    """slimserve against each peer family (its best configuration per figure), and the goals."""
    at = {(m.server, m.callers): m for m in rows if m.model == model}
    ort_row = at[("in-process ORT", 1)]
    slim = {c: at[("slimserve", c)] for c in CONCURRENCIES}
    lines = [f"\n**{model}**: in-process ORT {ort_row.p50_ms:.3f} ms p50, {ort_row.per_s:.0f}/s on one core\n",
             "| against | throughput ×, 1 caller | throughput ×, 32 | p99 at 8: slimserve / peer (ms) | "
             "added p50 at 1: slimserve / peer (ms) | throughput lost at 32: slimserve / peer |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for family in ("MLServer", "KServe"):
        names = {s for s, _ in at if s.startswith(family)}
        if not names:
            continue
        best = {c: max((at[(s, c)] for s in names), key=lambda m: m.per_s) for c in CONCURRENCIES}
        best_p99 = min(at[(s, 8)].p99_ms for s in names)
        best_p50 = min(at[(s, 1)].p50_ms for s in names)
        lost = [max(0.0, 1 - m.per_s / ort_row.per_s) for m in (slim[32], best[32])]
        lines.append(
            f"| {family} (best setting per figure) | {slim[1].per_s / best[1].per_s:.2f}× | "
            f"{slim[32].per_s / best[32].per_s:.2f}× | {slim[8].p99_ms:.2f} / {best_p99:.2f} | "
            f"{slim[1].p50_ms - ort_row.p50_ms:.3f} / {best_p50 - ort_row.p50_ms:.3f} | "
            f"{lost[0]:.0%} / {lost[1]:.0%} |"
        )
    return lines


def markdown(rows: list[Measured], runs: int, cpu: str) -> str:
    out = [f"# slimserve vs MLServer and KServe — `make bench-peers`\n\nMachine: {cpu}. Server pinned to one core, "
           "client (grpc.aio, pre-serialised batch-1 requests) to the other, ONNX Runtime with one thread everywhere; "
           f"{runs} run(s), servers alternated within each. `server_cpu` is the server's whole process tree per "
           "request (from /proc).\n"]  # fmt: skip
    for run in range(runs):
        part = [m for m in rows if m.run == run]
        out.append(f"\n## Run {run + 1}\n")
        for model in sorted({m.model for m in part}):
            out += summary(part, model)
        out.append("\n| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER))
        out += ["| " + " | ".join(str(v) for v in _row(m)) + " |" for m in part]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--peers", type=Path, default=Path(".bench-peers"), help="where the peers' venvs live")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0, help="measurement window per figure")
    parser.add_argument("--only", nargs="+", help="server families to run (slimserve, mlserver, kserve)")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("bench-peers needs two cores: one for the server, one for the client")
    pair = (cores[0], cores[1])
    works = workloads(args.repository)
    only = {name.lower() for name in args.only} | {"slimserve"} if args.only else None
    configs = servers(args.repository, works, args.peers, only)
    from slimserve.repository.hardware import fingerprint

    cpu = fingerprint(1).cpu_model + " (" + ", ".join(fingerprint(1).isa) + ")"
    rows: list[Measured] = []
    for run in range(args.runs):
        order = configs if run % 2 == 0 else configs[::-1]  # alternate: no server always goes first
        print(f"run {run + 1}: " + ", ".join(s.name for s in order), flush=True)
        found = [in_process(w, args.seconds, pair[0]) for w in works]
        for server in order:
            found += measure_server(server, works, args.seconds, pair)
        found += measure_echo(works[0], args.seconds, pair)
        for m in found:
            m.run = run
        rows += found
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "peers.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", *HEADER])
        writer.writerows([m.run + 1, *_row(m)] for m in rows)
    report = markdown(rows, args.runs, cpu)
    (args.out / "peers.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
