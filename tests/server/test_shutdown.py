"""SIGTERM under load: in-flight requests finish, new ones are refused, the process exits 0.

A call in transit at the instant gRPC's shutdown begins is dropped by gRPC before any
handler sees it, and its client sees CANCELLED; the client cannot tell that from an
admitted call cut off, but the server can (it counts every admitted call cancelled while it
drains, and logs the count), so the server's own account decides.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from loadtest.messages import minilm_request
from loadtest.serving import RunningServer, wait_until

CALLERS = 8
LOAD_TIMEOUT_S = 60.0


def _request() -> pb.ModelInferRequest:
    return minilm_request(np.full((4, 24), 1500, dtype=np.int64), variant="fp32")


def test_sigterm_under_load_loses_no_admitted_request(repository: Path, tmp_path: Path) -> None:
    server = RunningServer(repository, tmp_path)
    outcomes: Counter[str] = Counter()
    lost: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def caller() -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.ModelInfer(_request(), timeout=60)
                    outcome = "ok"
                except grpc.RpcError as error:
                    details = error.details() or ""
                    refused = error.code() == grpc.StatusCode.UNAVAILABLE and (
                        "not accepting" in details or "connect" in details.lower()
                    )
                    outcome = "refused" if refused else f"{error.code().name}: {details}"
                    if error.code() == grpc.StatusCode.CANCELLED:
                        outcome = "cancelled"  # judged below by the server's account
                with lock:
                    outcomes[outcome if outcome in ("ok", "refused", "cancelled") else "lost"] += 1
                    if outcome not in ("ok", "refused", "cancelled"):
                        lost.append(outcome)
                if outcome != "ok":
                    time.sleep(0.05)

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for thread in threads:
        thread.start()
    # The load runs (answers come back, the closed-loop callers keep calls in flight) before the signal.
    wait_until(lambda: outcomes["ok"] >= 4 * CALLERS, LOAD_TIMEOUT_S, "answers to the load")
    served_before = outcomes["ok"]
    exit_code = server.stop(timeout_s=60)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    print(f"SIGTERM under load: {dict(outcomes)} (served before the signal: {served_before})")
    log = server.log_path.read_text()
    assert served_before > 0
    assert exit_code == 0, log
    assert lost == [], lost
    assert "drained: every admitted call was answered" in log, log[-3000:]
    assert outcomes["cancelled"] <= CALLERS  # at most the calls in transit at that instant
    assert outcomes["ok"] >= served_before
