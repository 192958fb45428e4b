"""Hot reload over gRPC on a real server: tritonclient's load_model/unload_model behind the
management token, under load from other callers, and the repository poller."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from loadtest.messages import digits_request
from loadtest.serving import RunningServer, copy_model, rewrite_description, wait_until

MANAGEMENT_TOKEN = "management-token-for-reloads"
INFERENCE_TOKEN = "inference-token-for-reloads"
TIMEOUT_S = 30
POLLER_TIMEOUT_S = 60
CALLERS = 8


@pytest.fixture
def served(repository: Path, tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    repo = tmp_path / "repo"
    copy_model(repository, "digits", repo)
    running = RunningServer(
        repo, tmp_path, "--repository-poll-s", "0.2",
        env={"SLIMSERVE_MANAGEMENT_TOKEN": MANAGEMENT_TOKEN, "SLIMSERVE_INFERENCE_TOKEN": INFERENCE_TOKEN},
    )  # fmt: skip
    yield running, repo
    assert running.stop() == 0


class Callers:
    """Closed-loop callers that count every outcome, until stopped."""

    def __init__(self, address: str, count: int) -> None:
        self.outcomes: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._call, args=(address,)) for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def _call(self, address: str) -> None:
        metadata = (("authorization", f"Bearer {INFERENCE_TOKEN}"),)
        with grpc.insecure_channel(address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                try:
                    stub.ModelInfer(digits_request(), timeout=TIMEOUT_S, metadata=metadata)  # routed: any variant
                    outcome = "OK"
                except grpc.RpcError as exc:
                    outcome = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
                with self._lock:
                    self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def stop(self) -> dict[str, int]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self.outcomes


def test_reloads_under_load_fail_no_call(served: tuple[RunningServer, Path]) -> None:
    server, repo = served
    admin = triton.InferenceServerClient(server.address)
    headers = {"authorization": f"Bearer {MANAGEMENT_TOKEN}"}
    inference = {"authorization": f"Bearer {INFERENCE_TOKEN}"}
    with pytest.raises(InferenceServerException, match=r"UNAUTHENTICATED.*no bearer token"):
        admin.load_model("digits")  # model control needs the management token
    with pytest.raises(InferenceServerException, match=r"PERMISSION_DENIED.*not the management group"):
        admin.load_model("digits", headers={"authorization": f"Bearer {INFERENCE_TOKEN}"})
    callers = Callers(server.address, CALLERS)
    try:
        for round_ in range(3):
            rewrite_description(repo / "digits", f"round {round_}")
            admin.load_model("digits", headers=headers)  # every variant reloaded
        stash = repo / "digits" / ".stash-pruned"
        for _ in range(2):
            shutil.move(repo / "digits" / "pruned", stash)
            admin.load_model("digits", headers=headers)
            assert "pruned" not in admin.get_model_metadata("digits", headers=inference).versions
            shutil.move(stash, repo / "digits" / "pruned")
            admin.load_model("digits", headers=headers)
            assert "pruned" in admin.get_model_metadata("digits", headers=inference).versions
        graph = repo / "digits" / "int8" / "model.onnx"
        graph.unlink()  # a hard link: the shared file is left alone
        graph.write_bytes(b"corrupt")
        with pytest.raises(InferenceServerException, match=r"variant 'int8'.*does not match the onnx_sha256"):
            admin.load_model("digits", headers=headers)
        index = admin.get_model_repository_index(headers=headers)
        assert {m.version for m in index.models if m.name == "digits"} >= {"fp32", "int8"}  # still serving
    finally:
        outcomes = callers.stop()
    assert outcomes.get("OK", 0) > 0 and set(outcomes) == {"OK"}, outcomes
    log = server.log_path.read_text()
    assert log.count("reloaded digits") >= 3 + 4 and "removed pruned" in log and "added pruned" in log  # the poller too


def test_unload_then_load_and_the_poller(served: tuple[RunningServer, Path]) -> None:
    server, repo = served
    admin = triton.InferenceServerClient(server.address)
    headers = {"authorization": f"Bearer {MANAGEMENT_TOKEN}"}
    admin.unload_model("digits", headers=headers)
    tensor = triton.InferInput("images", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    inference = {"authorization": f"Bearer {INFERENCE_TOKEN}"}
    with pytest.raises(InferenceServerException, match="unknown model 'digits'"):
        admin.infer("digits", [tensor], headers=inference)
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as elsewhere:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(repository_name="other", model_name="digits"), timeout=TIMEOUT_S,
            metadata=tuple(headers.items()),
        )  # fmt: skip
    assert elsewhere.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "repository_name must be empty" in elsewhere.value.details()  # type: ignore[attr-defined]
    admin.load_model("digits", headers=headers)
    assert admin.infer("digits", [tensor], headers=inference).as_numpy("logits").shape == (1, 10)

    # The poller: a variant folder that goes away is unloaded, one that comes back is loaded.
    def versions() -> list[str]:
        return list(admin.get_model_metadata("digits", headers=inference).versions)

    shutil.move(repo / "digits" / "distilled", repo / "digits" / ".away")
    wait_until(lambda: "distilled" not in versions(), POLLER_TIMEOUT_S, "the poller to unload the removed variant")
    shutil.move(repo / "digits" / ".away", repo / "digits" / "distilled")
    wait_until(lambda: "distilled" in versions(), POLLER_TIMEOUT_S, "the poller to load the variant back")
    assert admin.infer("digits", [tensor], model_version="distilled", headers=inference).as_numpy("logits") is not None

    # The whole repository emptied (an unmounted volume looks so): the model stays served.
    shutil.move(repo / "digits", repo.parent / "unmounted")
    wait_until(lambda: "shows no model now" in server.log_path.read_text(), POLLER_TIMEOUT_S, "the empty scan")
    assert admin.is_model_ready("digits", headers=inference)
    # A publish that died between its two renames left the model aside: the next scan puts it back.
    shutil.move(repo.parent / "unmounted", repo / ".old-digits-4242")
    wait_until(lambda: (repo / "digits").is_dir(), POLLER_TIMEOUT_S, "the interrupted publish to be restored")
    assert not list(repo.glob(".old-*"))
    assert admin.infer("digits", [tensor], headers=inference).as_numpy("logits").shape == (1, 10)
