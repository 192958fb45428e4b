"""Run by test_faults in a process of its own: batchers die, health and ModelReady follow.

Usage: python -m tests.server.health_scenario REPOSITORY — exits 0 and prints the states seen.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slimserve.protos import inference_pb2 as pb
from slimserve.protos import inference_pb2_grpc
from slimserve.server.process.app import App
from slimserve.server.process.settings import Settings

TIMEOUT_S = 60.0


async def scenario(repository: Path) -> str:
    settings = Settings(repository=repository, host="127.0.0.1", grpc_port=0, metrics=False, warmup_calls=0)
    app = App(settings)
    await app.start()
    # By default every variant's batch runs beside the others (no turns), and each router knows it.
    assert all(h.turns is None and h.router.side_by_side for h in app.registry.models.values())

    async def kill(model: str) -> None:
        for batcher in app.registry.models[model].batchers.values():
            while not batcher.failed:  # past its restarts
                task = batcher.loop_task
                assert task is not None
                task.cancel()
                await asyncio.wait({task})  # done: supervision (its first callback) has restarted or failed it

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        inference = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == serving
        await kill("digits")
        assert not (await inference.ModelReady(pb.ModelReadyRequest(name="digits"))).ready
        assert (await inference.ModelReady(pb.ModelReadyRequest(name="minilm"))).ready
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == serving  # minilm can serve
        request = pb.ModelInferRequest(model_name="digits")
        request.inputs.add(name="images", datatype="FP32", shape=[1, 1, 28, 28])
        request.raw_input_contents.append(bytes(28 * 28 * 4))
        try:
            await inference.ModelInfer(request, timeout=TIMEOUT_S)
            raise AssertionError("a dead variant answered")
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
        await kill("minilm")
        await asyncio.sleep(0.05)
        status = (await health.Check(health_pb2.HealthCheckRequest())).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING, status
    await app.stop()
    return "digits not ready, minilm ready, SERVING; both dead: NOT_SERVING"


if __name__ == "__main__":
    print(asyncio.run(scenario(Path(sys.argv[1]))))
