"""`--workers 2`: RepositoryModelLoad and RepositoryModelUnload reach every worker, and a
worker restarted after an unload agrees with the others (issue 23, M5; process.peers).

ModelReady is asked over FRESH_CONNECTIONS new connections: the kernel spreads connections
over the workers, so all of them landing on one worker has probability 2⁻¹¹. Before, an
unload reached the one worker holding the caller's connection, and the others went on
serving the model.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtest.serving import RunningServer, wait_until

FRESH_CONNECTIONS = 12
RESTART_TIMEOUT_S = 300.0
CALL_TIMEOUT_S = 30.0


def _ready_on_fresh_connections(address: str, model: str) -> list[bool]:
    answers = []
    for _ in range(FRESH_CONNECTIONS):
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                answers.append(stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=CALL_TIMEOUT_S).ready)
            except grpc.RpcError as unknown:  # a model not hosted is NOT_FOUND: not ready
                assert unknown.code() == grpc.StatusCode.NOT_FOUND, unknown  # type: ignore[attr-defined]
                answers.append(False)
    return answers


def _workers(supervisor: int) -> list[int]:
    path = Path(f"/proc/{supervisor}/task/{supervisor}/children")
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


def test_load_and_unload_reach_every_worker_and_a_restarted_one(repository: Path, tmp_path: Path) -> None:
    running = RunningServer(repository, tmp_path, "--workers", "2")
    try:
        client = triton.InferenceServerClient(running.address)
        assert _ready_on_fresh_connections(running.address, "minilm") == [True] * FRESH_CONNECTIONS
        client.unload_model("minilm")  # answered once every worker has unloaded it
        assert _ready_on_fresh_connections(running.address, "minilm") == [False] * FRESH_CONNECTIONS
        assert _ready_on_fresh_connections(running.address, "digits") == [True] * FRESH_CONNECTIONS

        # A worker that dies now is started again from the repository, which still holds
        # minilm: it leaves out what a call unloaded during the run.
        log = running.log_path
        victim = _workers(running.process.pid)[1]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in _workers(running.process.pid) and log.read_text().count(" serving (pid ") >= 3,
                   RESTART_TIMEOUT_S, lambda: f"the restarted worker to serve:\n{running.log_tail()}")  # fmt: skip
        assert _ready_on_fresh_connections(running.address, "minilm") == [False] * FRESH_CONNECTIONS

        client.load_model("minilm")  # the restarted worker is reached at its new peer port
        assert _ready_on_fresh_connections(running.address, "minilm") == [True] * FRESH_CONNECTIONS
        client.close()
    finally:
        assert running.stop() == 0, running.log_tail()
