"""`--workers 2` acts as one server (issue 23, M4 and M5; process.peers): ModelStatistics
counts every worker's calls and Feedback scores an answer whichever worker gets it;
RepositoryModelLoad and RepositoryModelUnload reach every worker, and a worker restarted
after an unload agrees with the others; no worker's repository poller loads back what a call
unloaded.

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

from loadtest.messages import digits_request
from loadtest.serving import RunningServer, copy_model, rewrite_description, wait_until
from slimserve.protos import slimserve_pb2, slimserve_pb2_grpc
from slimserve.server.observe.feedback import ticket_holder

FRESH_CONNECTIONS = 12
RESTART_TIMEOUT_S = 300.0
CALL_TIMEOUT_S = 30.0
POLL_S = 0.2


def _fresh_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def _ready_on_fresh_connections(address: str, model: str) -> list[bool]:
    answers = []
    for _ in range(FRESH_CONNECTIONS):
        with _fresh_channel(address) as channel:
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


def _statistics_and_feedback_on_fresh_connections(address: str) -> None:
    """Answers given by both workers; every connection counts them all and scores any of them."""
    tickets = []
    for n in range(2 * FRESH_CONNECTIONS):  # all on one worker: probability 2⁻²³
        with _fresh_channel(address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answer = stub.ModelInfer(digits_request(variant="int8", request_id=f"r{n}"), timeout=CALL_TIMEOUT_S)
            tickets.append(answer.parameters["feedback_ticket"].string_param)
    assert {ticket_holder(ticket) for ticket in tickets} == {"w0", "w1"}  # both answered: the test means something
    for _ in range(FRESH_CONNECTIONS):
        with _fresh_channel(address) as channel:
            stats = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                pb.ModelStatisticsRequest(name="digits", version="int8"), timeout=CALL_TIMEOUT_S
            )
            (entry,) = stats.model_stats
            assert entry.inference_stats.success.count == len(tickets)  # not one worker's share
            assert sum(batch.compute_infer.count for batch in entry.batch_stats) == entry.execution_count
    for ticket in tickets:  # each scored on a fresh connection: half land on the other worker
        with _fresh_channel(address) as channel:
            scored = slimserve_pb2_grpc.ManagementStub(channel).Feedback(
                slimserve_pb2.FeedbackRequest(model="digits", ticket=ticket, labels=[0]), timeout=CALL_TIMEOUT_S
            )
            assert scored.variant == "int8" and len(scored.predicted) == 1


def test_workers_act_as_one_server_and_a_restarted_one_agrees(repository: Path, tmp_path: Path) -> None:
    # Two session threads each, as the tiny build profiled: the workers measure no profile at
    # start (minilm's takes each worker ~10 s), which is not what this test is about.
    repo = tmp_path / "repo"
    for model in ("digits", "minilm"):
        copy_model(repository, model, repo)
    running = RunningServer(repo, tmp_path, "--workers", "2", "--repository-poll-s", str(POLL_S),
                            env={"SLIMSERVE_SESSION_THREADS": "2"})  # fmt: skip
    try:
        _statistics_and_feedback_on_fresh_connections(running.address)
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

        # Every worker's poller passes minilm at each scan, its files unchanged since the call
        # unloaded it: none loads it back, the restarted one included. Two changes of digits,
        # each reloaded by both workers: the scans that reloaded the first were over by then.
        for change in ("once", "twice"):
            reloads = log.read_text().count("reloaded digits in")
            rewrite_description(repo / "digits", f"changed {change}")
            wait_until(lambda: log.read_text().count("reloaded digits in") >= reloads + 2,  # noqa: B023 - awaited here
                       RESTART_TIMEOUT_S, lambda: f"both pollers to reload digits:\n{running.log_tail()}")  # fmt: skip
        assert _ready_on_fresh_connections(running.address, "minilm") == [False] * FRESH_CONNECTIONS

        client.load_model("minilm")  # the restarted worker is reached at its new peer port
        assert _ready_on_fresh_connections(running.address, "minilm") == [True] * FRESH_CONNECTIONS
        client.close()
    finally:
        assert running.stop() == 0, running.log_tail()
