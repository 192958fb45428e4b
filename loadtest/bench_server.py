"""`make bench-server`: the server against in-process ONNX Runtime on the same variant, one run.

(a) in-process: the variant's ONNX graph in an ONNX Runtime session with the server's
thread count and core; (b) through a real `slimserve serve` subprocess from this client process.
Measured side by side, as ratios: sequential batch-1 latency (added p50/p99 = server −
in-process) and throughput at saturation (many concurrent batch-1 callers against the
server, whose dynamic batcher merges them; in-process at the model's max_batch_size).
Tests never assert on these numbers; this prints them.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from tritonclient.grpc import service_pb2_grpc

from loadtest.interference import pin_every_thread
from loadtest.messages import infer_request
from loadtest.serving import server_process
from slimserve.repository.sessions import make_session
from slimserve.server.transport.tls import ClientSecurity

SEQ_LEN = 32


def _tokens(batch: int) -> dict[str, np.ndarray]:
    return {
        "input_ids": np.full((batch, SEQ_LEN), 2000, dtype=np.int64),
        "attention_mask": np.ones((batch, SEQ_LEN), dtype=np.int64),
    }


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = np.array(samples_s) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def in_process(path: Path, threads: int, calls: int, max_batch: int, seconds: float) -> dict[str, float]:
    session = make_session(str(path), threads)
    one, full = _tokens(1), _tokens(max_batch)
    for _ in range(5):
        session.run(None, one)
    latencies = []
    for _ in range(calls):
        start = time.perf_counter()
        session.run(None, one)
        latencies.append(time.perf_counter() - start)
    items, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, full)
        items += max_batch
    p50, p99 = _percentiles(latencies)
    return {"p50_ms": p50, "p99_ms": p99, "items_per_s": items / (time.perf_counter() - start)}


def through_server(
    address: str, model: str, variant: str, calls: int, callers: int, seconds: float
) -> dict[str, float]:
    request = infer_request(model, _tokens(1), variant=variant)
    with ClientSecurity.from_environment().channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(5):
            stub.ModelInfer(request)
        latencies = []
        for _ in range(calls):
            start = time.perf_counter()
            stub.ModelInfer(request)
            latencies.append(time.perf_counter() - start)
    done = [0] * callers
    stop = threading.Event()

    def caller(index: int) -> None:
        with ClientSecurity.from_environment().channel(address) as own:
            own_stub = service_pb2_grpc.GRPCInferenceServiceStub(own)
            while not stop.is_set():
                own_stub.ModelInfer(request, timeout=60)
                done[index] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # let the batcher reach its steady state
    before, start = sum(done), time.perf_counter()
    time.sleep(seconds)
    served = sum(done) - before
    elapsed = time.perf_counter() - start
    stop.set()
    for thread in threads:
        thread.join()
    p50, p99 = _percentiles(latencies)
    return {"p50_ms": p50, "p99_ms": p99, "items_per_s": served / elapsed}


def run_layout(args: argparse.Namespace, cores: list[int], pinned: bool, max_batch: int) -> str:
    """One server start, in-process and server measured back to back; a Markdown table."""
    threads = 1 if pinned else len(cores)
    pin_every_thread({cores[0]} if pinned else set(cores))  # threads of the layout before too
    with server_process(args.repository, *(["--hardware-profile", "edge"] if pinned else [])) as server:
        path = args.repository / args.model / args.variant / "model.onnx"
        local = in_process(path, threads, args.calls, max_batch, args.seconds)
        if pinned:
            pin_every_thread(set(cores[1:]))  # gRPC's threads too, started while the server came up
        remote = through_server(server.address, args.model, args.variant, args.calls, args.callers, args.seconds)
    placement = f"server and in-process on core {cores[0]}, client on {cores[1:]}" if pinned else "all cores shared"
    return "\n".join([
        f"\n{args.model}/{args.variant}, {SEQ_LEN} tokens, {threads} ONNX Runtime thread(s), {placement}\n",
        "| measure | in-process ORT | server (gRPC) | ratio / added |",
        "|---|---|---|---|",
        f"| batch-1 sequential p50 | {local['p50_ms']:.2f} ms | {remote['p50_ms']:.2f} ms | "
        f"+{remote['p50_ms'] - local['p50_ms']:.2f} ms |",
        f"| batch-1 sequential p99 | {local['p99_ms']:.2f} ms | {remote['p99_ms']:.2f} ms | "
        f"+{remote['p99_ms'] - local['p99_ms']:.2f} ms |",
        f"| saturation throughput | {local['items_per_s']:.1f} items/s (batch {max_batch}) | "
        f"{remote['items_per_s']:.1f} items/s ({args.callers} callers) | "
        f"{remote['items_per_s'] / local['items_per_s']:.2f}x |",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--calls", type=int, default=300, help="sequential batch-1 calls")
    parser.add_argument("--callers", type=int, default=24, help="concurrent callers at saturation")
    parser.add_argument("--seconds", type=float, default=10.0, help="saturation window")
    args = parser.parse_args()
    import yaml

    max_batch = int(yaml.safe_load((args.repository / args.model / "model.yaml").read_text())["max_batch_size"])
    cores = sorted(os.sched_getaffinity(0))
    # Two layouts: every core shared by server, client and in-process runs; and (with two or
    # more cores) the server and in-process ONNX Runtime on the first core with one thread,
    # the client on the rest, so that the load generator does not steal the server's CPU.
    layouts = [False, True] if len(cores) >= 2 else [False]
    print("\n".join(run_layout(args, cores, pinned, max_batch) for pinned in layouts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
