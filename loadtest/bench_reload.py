"""Reload under load: does swapping models while serving fail any call, or leak memory?

The server (`digits` only, `--hardware-profile edge`: one core) runs on the first core and
this client on the second. 16 closed-loop callers send routed batch-1 requests (no SLO of
their own, a 30-s deadline) the whole time, while the model is
1. reloaded --reloads times, each with a changed `model.yaml` (every variant reloaded);
2. changed --variant-swaps times by one variant: `pruned` removed, loaded; put back, loaded;
3. given a corrupt new version (a garbage `int8` graph): the load must be refused and the
   old version keep answering; then the good graph is restored and loaded.
Reported: calls answered and failed (by status), each load's duration, the server's RSS
before the first reload and after the last (after the same settling time), the CPU.
The model folder is a copy beside the repository (graphs hard-linked and never written, the
rest copied), so the repository itself is never touched. `make bench-reload` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtest.interference import pin_every_thread
from loadtest.messages import digits_request
from loadtest.serving import copy_model, replace_file, rewrite_description, rss_mib, server_process
from slimserve.repository.hardware import cpu_description
from slimserve.server.transport.tls import ClientSecurity

MODEL = "digits"
CALLERS = 16
CHANNELS = 4
SETTLE_S = 5.0  # load before each RSS reading, so that both are taken in the same state
DEADLINE_S = 30.0


class Load:
    """CALLERS closed-loop callers over CHANNELS channels, counting every outcome."""

    def __init__(self, address: str) -> None:
        security = ClientSecurity.from_environment()
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [security.aio_channel(address, options=options) for _ in range(CHANNELS)]
        self.outcomes: Counter[str] = Counter()
        self._running = True
        request = digits_request(np.random.default_rng(0).random((1, 1, 28, 28), np.float32))
        stubs = [service_pb2_grpc.GRPCInferenceServiceStub(channel) for channel in self.channels]
        self._tasks = [asyncio.create_task(self._caller(stubs[i % CHANNELS], request)) for i in range(CALLERS)]

    async def _caller(self, stub: service_pb2_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> None:
        while self._running:
            try:
                await stub.ModelInfer(request, timeout=DEADLINE_S)
                self.outcomes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                self.outcomes[f"{exc.code().name}: {exc.details()}"] += 1

    async def stop(self) -> Counter[str]:
        self._running = False
        await asyncio.gather(*self._tasks)
        for channel in self.channels:
            await channel.close()
        return self.outcomes


async def _load(stub: service_pb2_grpc.GRPCInferenceServiceStub, durations: list[float]) -> str:
    started = time.perf_counter()
    try:
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=120)
        outcome = "OK"
    except grpc.aio.AioRpcError as exc:
        outcome = f"{exc.code().name}: {exc.details()}"
    durations.append(time.perf_counter() - started)
    return outcome


async def run(address: str, pid: int, model_dir: Path, args: argparse.Namespace) -> dict[str, object]:
    load = Load(address)
    admin_channel = ClientSecurity.from_environment().aio_channel(address)
    admin = service_pb2_grpc.GRPCInferenceServiceStub(admin_channel)
    await asyncio.sleep(SETTLE_S)
    rss_before = rss_mib(pid)
    reload_s: list[float] = []
    swap_s: list[float] = []
    refused: list[float] = []  # durations of the refused load and of the restoring one
    for round_ in range(args.reloads):
        rewrite_description(model_dir, f"reload {round_}")
        assert (await _load(admin, reload_s)) == "OK"
    stash = model_dir / ".stash-pruned"
    for _ in range(args.variant_swaps):
        shutil.move(model_dir / "pruned", stash)
        assert (await _load(admin, swap_s)) == "OK"
        shutil.move(stash, model_dir / "pruned")
        assert (await _load(admin, swap_s)) == "OK"
    graph = model_dir / "int8" / "model.onnx"
    good = graph.read_bytes()
    replace_file(graph, b"corrupt graph")
    corrupt_outcome = await _load(admin, refused)
    served_after_refusal = load.outcomes["OK"]
    await asyncio.sleep(1.0)
    served_after_refusal = load.outcomes["OK"] - served_after_refusal
    replace_file(graph, good)
    assert (await _load(admin, refused)) == "OK"
    await asyncio.sleep(SETTLE_S)
    rss_after = rss_mib(pid)
    outcomes = await load.stop()
    await admin_channel.close()
    failed = sum(n for outcome, n in outcomes.items() if outcome != "OK")
    return {
        "cpu": cpu_description(),
        "callers": CALLERS,
        "reloads": args.reloads,
        "variant_swaps": args.variant_swaps,
        "calls_answered": outcomes["OK"],
        "calls_failed": failed,
        "failures": {k: v for k, v in outcomes.items() if k != "OK"},
        "reload_s_p50": float(np.median(reload_s)) if reload_s else None,
        "reload_s_max": max(reload_s, default=None),
        "variant_swap_s_p50": float(np.median(swap_s)) if swap_s else None,
        "corrupt_version": corrupt_outcome,
        "answered_in_the_second_after_the_refusal": served_after_refusal,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
        "rss_change": rss_after / rss_before - 1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--variant-swaps", type=int, default=10)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(dir=args.repository.resolve().parent, prefix=".bench-reload-") as tmp:
        repo = Path(tmp)
        copy_model(args.repository, MODEL, repo)
        log = args.out / "bench_reload_server.log"
        with server_process(repo, "--hardware-profile", "edge", log=log) as server:
            if len(cores) >= 2:
                pin_every_thread(set(cores[1:]))  # the server pinned itself to cores[0]; gRPC's threads too
            else:
                print("warning: one core; server and load generator share it", file=sys.stderr)
            report = asyncio.run(run(server.address, server.process.pid, repo / MODEL, args))
    text = json.dumps(report, indent=2)
    (args.out / "bench_reload.json").write_text(text + "\n")
    print(text)
    return 0 if report["calls_failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
