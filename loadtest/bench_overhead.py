"""`python -m loadtest.bench_overhead`: the server's CPU per request beyond its session call, two source trees.

A refactor must not cost CPU, and the figure that shows it is what the server spends per
answered request *besides* ONNX Runtime: decoding, routing, batching, metrics, gRPC and
encoding. Two source trees (say the old main in a `git worktree` and the working tree) serve
the same repository from the same interpreter, one at a time, alternated A B A B over the
rounds so that drift in the machine's load falls on both.

Each tree's server runs with `PYTHONPATH=<tree>`, its working directory in the tree and
`python -P` (no script directory or current directory put first on sys.path), so that the
tree wins over the venv's editable install; the start checks that `slimserve` imports from
the tree. Either CLI layout works: `slimserve.cli` (new) or `slimserve.server.cli` (before).

Placement: the server (`--workers 1 --hardware-profile edge`: one process, one ONNX Runtime
thread) under `taskset` on the first core, the client (this process, grpc.aio, one
pre-serialised batch-1 request pinned to the variant) on the second. Per tree, round and
number of callers (1 and 32): answered requests per second, and the server's whole process
tree's CPU seconds (utime + stime from /proc) per answered request over the window. From
that is subtracted the session's own CPU per request: in-process ONNX Runtime on the
server's core (server stopped), one thread, at the average batch the server ran in that
window (`slimserve_batch_size` sum / count, scraped before and after it), interpolated
linearly between the two whole batch sizes around it, divided by that batch. The report
gives each figure's mean and 95 % confidence interval over the rounds (Student's t), and
the ratio B / A per round.

`--stream-a` / `--stream-b` make a tree's callers use Triton's ModelStreamInfer instead of
unary ModelInfer (give the same tree twice to compare the two on one server build): each
caller holds one stream and sends its next request when the last is answered, as
perf_analyzer --streaming does, so the per-call setup of gRPC is paid once per caller.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import t as student_t
from tritonclient.grpc import service_pb2 as pb

from loadtest.bench_peers import CALLERS_PER_CHANNEL, METHOD
from loadtest.interference import tree_cpu_s
from loadtest.messages import infer_request
from slimserve.repository.sessions import make_session

CONCURRENCIES = (1, 32)
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
SERVER_WARMUP_S = 3.0  # load at the highest concurrency once per start: sessions, caches, allocator
WINDOW_WARMUP_S = 1.0  # load before each window: the batcher reaches its steady state
SESSION_WARMUP_CALLS = 50
SEQ_LEN = 32  # any non-batch dynamic dimension (token models)


@dataclass(frozen=True)
class Tree:
    """One source tree and the module its CLI lives in."""

    label: str
    root: Path
    stream: bool = False  # callers use ModelStreamInfer (module docstring)

    @property
    def cli_module(self) -> str:
        return "slimserve.cli" if (self.root / "slimserve" / "cli.py").exists() else "slimserve.server.cli"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.root), "OMP_NUM_THREADS": "1"}

    def imported_from(self) -> Path:
        """Where `slimserve` comes from when run as the server is; refuses another tree."""
        found = subprocess.run(
            [sys.executable, "-P", "-c", "import slimserve; print(slimserve.__file__)"],
            cwd=self.root, env=self.env(), capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if not Path(found).resolve().is_relative_to(self.root.resolve()):
            raise SystemExit(f"tree {self.label}: slimserve imports from {found}, not from {self.root}")
        return Path(found)


@dataclass(frozen=True)
class Window:
    """One measurement window against one server."""

    tree: str
    round: int
    callers: int
    answered: int
    elapsed_s: float
    server_cpu_s: float
    batch: float  # average rows per session call the server ran

    @property
    def per_s(self) -> float:
        return self.answered / self.elapsed_s

    @property
    def cpu_ms(self) -> float:
        return self.server_cpu_s * 1e3 / max(self.answered, 1)


@dataclass(frozen=True)
class Started:
    address: str
    metrics_url: str
    pid: int


def model_inputs(model: str, graph: Path, batch: int) -> dict[str, np.ndarray]:
    """`batch` rows for the graph: held-out images for digits, fixed values from the graph's
    input declarations otherwise."""
    if model == "digits":
        from slimserve.variants.data import load_digits_split

        images = load_digits_split()[1].inputs["images"]
        return {"images": np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))}
    inputs = {}
    for spec in make_session(str(graph), 1).get_inputs():
        shape = [batch if i == 0 else d if isinstance(d, int) else SEQ_LEN for i, d in enumerate(spec.shape)]
        dtype = np.float32 if "float" in spec.type else np.int64
        inputs[spec.name] = np.ones(shape, dtype=dtype)
    return inputs


def check_answer(response: bytes, variant: str, reference: np.ndarray) -> None:
    """The server ran the pinned variant and answered as in-process ONNX Runtime does."""
    answer = pb.ModelInferResponse.FromString(response)
    if answer.model_version != variant:
        raise SystemExit(f"the server answered with variant {answer.model_version!r}, not {variant!r}")
    values = np.frombuffer(answer.raw_output_contents[0], dtype=reference.dtype).reshape(reference.shape)
    if not np.allclose(values, reference, rtol=1e-4, atol=1e-5):
        difference = float(np.abs(values - reference).max())
        raise SystemExit(f"the server's answer differs from in-process ONNX Runtime by {difference:.2e}")


def batch_totals(metrics_url: str, model: str, variant: str) -> tuple[float, float]:
    """(rows, session calls) so far for the variant, from the `slimserve_batch_size` histogram."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    rows = calls = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "slimserve_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("model") == model and sample.labels.get("variant") == variant:
                if sample.name.endswith("_sum"):
                    rows += sample.value
                elif sample.name.endswith("_count"):
                    calls += sample.value
    return rows, calls


@contextmanager
def serving(tree: Tree, repository: Path, core: int, scratch: Path) -> Iterator[Started]:
    """The tree's server on `core`, once it has written its port file; SIGTERM (then SIGKILL) after."""
    port_file = scratch / f"port-{tree.label}-{time.monotonic_ns()}"
    log = scratch / f"server-{tree.label}.log"
    pin = ["taskset", "-c", str(core)] if shutil.which("taskset") else []
    command = [*pin, sys.executable, "-P", "-m", tree.cli_module, "serve", "--repository", str(repository.resolve()),
               "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--port-file", str(port_file),
               "--workers", "1", "--hardware-profile", "edge"]  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=tree.root, env=tree.env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=None if pin else lambda: os.sched_setaffinity(0, {core}),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not port_file.exists() or not port_file.read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-3000:]
                    raise SystemExit(f"tree {tree.label}: the server did not start; its log:\n{tail}")
                time.sleep(0.1)
            grpc_port, metrics_port, _ = port_file.read_text().split()
            yield Started(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics", process.pid)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


async def load(
    server: Started,
    payload: bytes,
    callers: int,
    warmup_s: float,
    seconds: float,
    batch_of: tuple[str, str],
    stream: bool = False,
) -> tuple[int, float, float, float, bytes]:
    """`callers` concurrent callers, each sending its next request when the last is answered.
    Returns (answered, elapsed s, server CPU s, average batch, last answer) over the window
    that follows `warmup_s`; `seconds` 0 only warms."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [grpc.aio.insecure_channel(server.address, options=options)
                for _ in range(math.ceil(callers / CALLERS_PER_CHANNEL))]  # fmt: skip
    calls = [channel.unary_unary(METHOD) for channel in channels]
    answered, stop, last = 0, False, b""

    async def caller(index: int) -> None:
        nonlocal answered, last
        call = calls[index % len(calls)]
        while not stop:
            last = await call(payload, timeout=60)
            answered += 1

    async def stream_caller(index: int) -> None:
        nonlocal answered, last
        call = channels[index % len(channels)].stream_stream(STREAM_METHOD)()
        while not stop:
            await call.write(payload)
            answer = pb.ModelStreamInferResponse.FromString(await call.read())
            if answer.error_message:
                raise RuntimeError(f"stream answered an error: {answer.error_message}")
            last = answer.infer_response.SerializeToString()
            answered += 1
        await call.done_writing()
        await call.code()

    tasks = [asyncio.create_task((stream_caller if stream else caller)(i)) for i in range(callers)]
    await asyncio.sleep(warmup_s)
    # The scrapes cost the server CPU: they stay outside the CPU window, around it.
    rows_0, calls_0 = await asyncio.to_thread(batch_totals, server.metrics_url, *batch_of)
    began, cpu_0, answered_0 = time.perf_counter(), tree_cpu_s([server.pid]), answered
    await asyncio.sleep(seconds)
    elapsed, cpu, count = time.perf_counter() - began, tree_cpu_s([server.pid]) - cpu_0, answered - answered_0
    rows_1, calls_1 = await asyncio.to_thread(batch_totals, server.metrics_url, *batch_of)
    stop = True
    await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close()
    batch = (rows_1 - rows_0) / (calls_1 - calls_0) if calls_1 > calls_0 else 1.0
    return count, elapsed, cpu, batch, last


def measure_tree(tree: Tree, args: argparse.Namespace, cores: tuple[int, int], round_: int) -> list[Window]:
    graph = args.repository / args.model / args.variant / "model.onnx"
    one = model_inputs(args.model, graph, 1)
    payload = infer_request(args.model, one, variant=args.variant).SerializeToString()
    reference = make_session(str(graph), 1).run(None, one)[0]
    windows = []
    with tempfile.TemporaryDirectory() as scratch, serving(tree, args.repository, cores[0], Path(scratch)) as server:
        batch_of = (args.model, args.variant)
        *_, last = asyncio.run(load(server, payload, max(CONCURRENCIES), SERVER_WARMUP_S, 0.0, batch_of, tree.stream))
        check_answer(last, args.variant, reference)
        for callers in CONCURRENCIES:
            answered, elapsed, cpu, batch, last = asyncio.run(
                load(server, payload, callers, WINDOW_WARMUP_S, args.seconds, batch_of, tree.stream)
            )
            check_answer(last, args.variant, reference)
            window = Window(tree.label, round_, callers, answered, elapsed, cpu, batch)
            windows.append(window)
            print(f"  round {round_ + 1} tree {tree.label} c={callers:<3} {window.per_s:8.1f}/s "
                  f"server cpu {window.cpu_ms:.3f} ms/req  batch {batch:.2f}", flush=True)  # fmt: skip
    return windows


def session_cpu_ms(graph: Path, model: str, batch: int, seconds: float, core: int, back: int) -> float:
    """In-process ONNX Runtime CPU ms per session call at `batch` rows, one thread on `core`
    (the server's, with no server running); this thread goes back to core `back` after."""
    os.sched_setaffinity(0, {core})
    try:
        session = make_session(str(graph), 1)
        inputs = model_inputs(model, graph, batch)
        for _ in range(SESSION_WARMUP_CALLS):
            session.run(None, inputs)
        calls, began, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - began < seconds:
            session.run(None, inputs)
            calls += 1
        return (time.process_time() - cpu) * 1e3 / calls
    finally:
        os.sched_setaffinity(0, {back})


def session_ms_per_request(per_call_ms: dict[int, float], batch: float) -> float:
    """Session CPU per request at a (fractional) average batch: per-call CPU interpolated
    linearly between the whole batch sizes around it, divided by the batch."""
    low, high = math.floor(batch), math.ceil(batch)
    per_call = per_call_ms[low] + (batch - low) * (per_call_ms[high] - per_call_ms[low])
    return per_call / batch


def mean_ci(values: list[float], digits: int = 3) -> str:
    """Mean ± the half-width of its 95 % confidence interval (Student's t over the rounds)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    half = float(student_t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


FIGURES = {"cpu_ms": "server CPU / req", "session_ms": "session CPU / req", "beyond_ms": "beyond session / req",
           "per_s": "requests/s", "batch": "batch"}  # fmt: skip
DIGITS = {"per_s": 1, "batch": 2}  # the CPU figures (ms) and the ratios: 3
RATIOS = ("cpu_ms", "beyond_ms", "per_s")


def _figure(window: Window, per_call_ms: dict[int, float], key: str) -> float:
    session_ms = session_ms_per_request(per_call_ms, window.batch)
    derived = {"session_ms": session_ms, "beyond_ms": window.cpu_ms - session_ms}
    return derived[key] if key in derived else float(getattr(window, key))


def report(measured: list[tuple[Window, dict[int, float]]], trees: list[Tree], args: argparse.Namespace) -> str:
    """Markdown: per tree and callers, each figure's mean ± 95 % CI; then B / A per round."""
    at = {(w.tree, w.callers, w.round): (w, per_call) for w, per_call in measured}
    out = [f"# Server CPU per request beyond the session call: {args.model} {args.variant}\n"]
    out += [f"- tree {t.label}: `{t.root}` (`python -m {t.cli_module}`){', ModelStreamInfer' if t.stream else ''}"
            for t in trees]  # fmt: skip
    out += [
        f"- {args.rounds} round(s), {args.seconds:g} s windows; server on core {args.cores[0]} "
        f"(--workers 1 --hardware-profile edge), client on core {args.cores[1]}\n",
        "## Mean ± 95 % CI over rounds (CPU in ms per answered request)\n",
        "| tree | callers | " + " | ".join(FIGURES.values()) + " |",
        "|---|---|" + "---|" * len(FIGURES),
    ]
    for tree in trees:
        for callers in CONCURRENCIES:
            part = [at[(tree.label, callers, r)] for r in range(args.rounds)]
            values = {key: [_figure(w, per_call, key) for w, per_call in part] for key in FIGURES}
            cells = [mean_ci(values[key], DIGITS.get(key, 3)) for key in FIGURES]
            out.append(f"| {tree.label} | {callers} | " + " | ".join(cells) + " |")
    out += ["\n## Ratio B / A per round\n", "| round | callers | " + " | ".join(FIGURES[k] for k in RATIOS) + " |",
            "|---|---|" + "---|" * len(RATIOS)]  # fmt: skip
    ratios: dict[tuple[int, str], list[float]] = {}
    for round_ in range(args.rounds):
        for callers in CONCURRENCIES:
            a, b = (at[(t.label, callers, round_)] for t in trees)
            for key in RATIOS:
                ratios.setdefault((callers, key), []).append(_figure(*b, key) / _figure(*a, key))
            cells = [f"{ratios[(callers, key)][-1]:.3f}" for key in RATIOS]
            out.append(f"| {round_ + 1} | {callers} | " + " | ".join(cells) + " |")
    for callers in CONCURRENCIES:
        out.append(f"| mean | {callers} | " + " | ".join(mean_ci(ratios[(callers, key)]) for key in RATIOS) + " |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree-a", type=Path, required=True, help="source tree A (e.g. a worktree of the old main)")
    parser.add_argument("--tree-b", type=Path, default=Path("."), help="source tree B (default: this one)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window per figure")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--stream-a", action="store_true", help="tree A's callers use ModelStreamInfer")
    parser.add_argument("--stream-b", action="store_true", help="tree B's callers use ModelStreamInfer")
    args = parser.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise SystemExit("bench_overhead needs two cores: one for the server, one for the client")
    args.cores = (allowed[0], allowed[1])
    # Before any gRPC object exists: the threads it starts inherit this core.
    os.sched_setaffinity(0, {args.cores[1]})
    trees = [Tree("A", args.tree_a.resolve(), args.stream_a), Tree("B", args.tree_b.resolve(), args.stream_b)]
    for tree in trees:
        if not (tree.root / "slimserve").is_dir():
            raise SystemExit(f"tree {tree.label}: {tree.root} holds no slimserve package")
    sources = [tree.imported_from() for tree in trees]
    for tree, source in zip(trees, sources, strict=True):
        print(f"tree {tree.label}: {tree.root} (python -m {tree.cli_module}; slimserve from {source})", flush=True)
    graph = args.repository / args.model / args.variant / "model.onnx"
    measured: list[tuple[Window, dict[int, float]]] = []
    for round_ in range(args.rounds):
        order = trees if round_ % 2 == 0 else trees[::-1]  # A B, then B A: drift hits both alike
        windows = [w for tree in order for w in measure_tree(tree, args, args.cores, round_)]
        # The session's CPU per call, measured afresh each round at every batch size needed.
        sizes = {1} | {size for w in windows for size in (math.floor(w.batch), math.ceil(w.batch))}
        per_call_ms = {b: session_cpu_ms(graph, args.model, b, args.seconds, *args.cores) for b in sorted(sizes)}
        print(f"  round {round_ + 1} in-process ORT cpu ms per call: "
              + ", ".join(f"batch {b}: {ms:.4f}" for b, ms in per_call_ms.items()), flush=True)  # fmt: skip
        measured += [(w, per_call_ms) for w in windows]
    text = report(measured, trees, args)
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
