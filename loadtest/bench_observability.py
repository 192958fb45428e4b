"""`make bench-observability`: throughput at saturation with /metrics + shadow sampling on vs off.

One run, alternating: a server with the defaults (/metrics served, shadow fraction 0.05), then
one with `SLIMSERVE_METRICS=false` and `SLIMSERVE_SHADOW_FRACTION=0` (no endpoint, no
shadowing; every series is still recorded, since the data plane always records), then again, so that drift on
a shared machine hits both alike. Each server runs `--hardware-profile edge` on the first
core; this closed-loop client (many concurrent callers, `digits`, batch 1, pinned to int8 so
that every answer is eligible for shadowing) runs on the others. Prints requests/s per
window and the ratio on / off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtest.interference import pin_every_thread
from loadtest.messages import digits_request
from loadtest.serving import one_model_repository, server_process
from slimserve.server.transport.tls import ClientSecurity
from slimserve.variants.data import load_digits_split


async def saturate(address: str, request: pb.ModelInferRequest, callers: int, seconds: float) -> float:
    """Requests/s served with `callers` closed-loop callers, after a 2 s warm-up."""
    done = 0
    measuring = False
    stop_at = time.perf_counter() + 2.0 + seconds
    async with ClientSecurity.from_environment().aio_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await stub.ModelInfer(request, timeout=30)
                if measuring:
                    done += 1

        tasks = [asyncio.create_task(caller()) for _ in range(callers)]
        await asyncio.sleep(2.0)
        measuring, started = True, time.perf_counter()
        await asyncio.gather(*tasks)
        return done / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--variant", default="int8")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    request = digits_request(load_digits_split()[1].inputs["images"][:1], variant=args.variant)
    results: dict[str, list[float]] = {"on": [], "off": []}
    with one_model_repository(args.repository, "digits") as repo:
        for _ in range(args.rounds):
            for mode in ("on", "off"):
                os.environ["SLIMSERVE_METRICS"] = "true" if mode == "on" else "false"
                os.environ["SLIMSERVE_SHADOW_FRACTION"] = "0.05" if mode == "on" else "0"
                pin_every_thread(set(cores))  # the server pins itself to the first core
                with server_process(repo, "--hardware-profile", "edge") as server:
                    if len(cores) > 1:
                        pin_every_thread(set(cores[1:]))  # gRPC's threads too, started before
                    rate = asyncio.run(saturate(server.address, request, args.callers, args.seconds))
                results[mode].append(rate)
                print(f"metrics + shadow {mode:>3}: {rate:7.1f} requests/s", flush=True)
    on, off = float(np.mean(results["on"])), float(np.mean(results["off"]))
    print(f"\nsaturation throughput, digits/{args.variant} batch 1, {args.callers} callers, {args.rounds} rounds:")
    print(f"  on  {on:.1f} req/s  {[round(r, 1) for r in results['on']]}")
    print(f"  off {off:.1f} req/s  {[round(r, 1) for r in results['off']]}")
    print(f"  ratio on/off = {on / off:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
