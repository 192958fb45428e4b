"""Triton's system shared memory on a real server, called as Triton's users call it.

Regions are made with `tritonclient.utils.shared_memory` and registered with tritonclient's
`register_system_shared_memory`; inputs and outputs name them with `set_shared_memory`. Every
answer equals the one the same request gets over the wire; Status lists the caller's regions
and Unregister unmaps them (read back from the server's /proc maps and open files); every bad
key, offset, size or region is INVALID_ARGUMENT naming what is wrong; another token can neither
use, see nor unregister a region; unregistering while requests use a region breaks nothing
(each request is answered or refused INVALID_ARGUMENT); random shared memory parameters never
get INTERNAL. Raw requests use tritonclient's own messages, as tests/server/test_generic_onnx.py
does.
"""

from __future__ import annotations

import os
import queue
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from loadtest.messages import infer_request, triton_inputs
from loadtest.serving import RunningServer
from slimserve.repository.format import ModelEntry
from slimserve.server.core.versions import version_numbers
from slimserve.server.errors import InvalidInputError
from slimserve.server.transport.shared_memory import MAX_MAPPED_BYTES, MAX_REGIONS, SharedMemory
from slimserve.variants.data import load_digits_split
from tests.server.test_triton_config import PERF_ANALYZER

TIMEOUT_S = 30
TOKEN_A = "shm-token-a-0123456789"
TOKEN_B = "shm-token-b-0123456789"
FUZZ_CASES = 200
IMAGE_BYTES = 28 * 28 * 4  # one digits row, FP32
LOGITS_BYTES = 10 * 4  # one digits answer, FP32


@dataclass
class Region:
    """A shared memory object this test made: its POSIX key and tritonclient's handle."""

    key: str
    handle: Any
    byte_size: int


@contextmanager
def made(name: str, byte_size: int) -> Iterator[Region]:
    """A fresh shared memory object of `byte_size` bytes, removed afterwards."""
    key = f"/slimserve-test-{os.getpid()}-{name}"
    handle = shm.create_shared_memory_region(name, key, byte_size)
    try:
        yield Region(key, handle, byte_size)
    finally:
        shm.destroy_shared_memory_region(handle)


def _images(rows: int) -> np.ndarray:
    return np.ascontiguousarray(load_digits_split()[1].inputs["images"][:rows])


def _shm_input(name: str, array: np.ndarray, datatype: str, region: str, offset: int = 0) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_shared_memory(region, array.nbytes, offset)
    return tensor


def _shm_output(name: str, region: str, byte_size: int, offset: int = 0) -> triton.InferRequestedOutput:
    output = triton.InferRequestedOutput(name)
    output.set_shared_memory(region, byte_size, offset)
    return output


def _refused(call: Callable[[], object], *phrases: str, code: str = "INVALID_ARGUMENT") -> str:
    """Assert that `call` fails with `code` and a message holding every phrase; the message."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == f"StatusCode.{code}", caught.value.message()
    message = str(caught.value.message())
    for phrase in phrases:
        assert phrase in message, message
    return message


def _mapped(server: RunningServer, key: str) -> bool:
    """Whether the server process maps the object `key` or holds it open."""
    path = f"/dev/shm{key}"
    pid = server.process.pid
    fds = Path(f"/proc/{pid}/fd")
    open_files = {os.readlink(fd) for fd in fds.iterdir() if fd.exists()}
    return path in Path(f"/proc/{pid}/maps").read_text() or any(f.startswith(path) for f in open_files)


def test_a_slot_whose_region_was_unregistered_touches_nothing(tmp_path: Path) -> None:
    """The step the races above hit now and then, made certain: a request decoded with a
    region that is unregistered before its answer is written (module docstring of
    server/transport/shared_memory.py)."""
    (tmp_path / "obj").write_bytes(bytes(4096))
    memory = SharedMemory(per_caller=False, directory=tmp_path)
    memory.register("", "r", "/obj", 100, 1000)
    slot = memory.slot("", "r", 8, 16, "output 'y'")
    slot.write(b"x" * 16)
    assert (tmp_path / "obj").read_bytes()[108:124] == b"x" * 16
    memory.unregister("", "r")
    memory.register("", "r", "/obj", 0, 4096)  # the same name again: another region
    with pytest.raises(InvalidInputError, match="output 'y': shared memory region 'r' was unregistered while"):
        slot.write(b"z" * 16)
    with pytest.raises(InvalidInputError, match="was unregistered while the request ran"):
        slot.read()
    assert (tmp_path / "obj").read_bytes()[108:124] == b"x" * 16
    memory.close()
    assert memory.status("") == [] and memory.mapped_bytes == 0


def test_a_file_shrunk_under_its_region_is_refused_not_read(tmp_path: Path) -> None:
    (tmp_path / "obj").write_bytes(bytes(8192))
    memory = SharedMemory(per_caller=False, directory=tmp_path)
    memory.register("", "r", "/obj", 4096, 4096)
    slot = memory.slot("", "r", 0, 4096, "input 'x'")
    os.truncate(tmp_path / "obj", 5000)  # reading the mapping past 5000 now would be SIGBUS
    with pytest.raises(InvalidInputError, match="input 'x': shared memory '/obj' was made shorter than region 'r'"):
        slot.read()
    memory.close()


@pytest.fixture
def client(server: RunningServer) -> Iterator[triton.InferenceServerClient]:
    """A client of the session's server; every region it registered is gone afterwards."""
    with triton.InferenceServerClient(server.address) as connected:
        connected.unregister_system_shared_memory()
        yield connected
        connected.unregister_system_shared_memory()


def test_digits_answers_through_shared_memory_as_over_the_wire(
    server: RunningServer, client: triton.InferenceServerClient
) -> None:
    images = _images(3)
    # The region starts 100 bytes into its object (not on a page), the tensor 8 bytes into it.
    with made("in", 100 + 8 + images.nbytes) as inputs, made("out", 3 * LOGITS_BYTES) as outputs:
        shm.set_shared_memory_region(inputs.handle, [images], offset=100 + 8)
        client.register_system_shared_memory("in", inputs.key, 8 + images.nbytes, offset=100)
        client.register_system_shared_memory("out", outputs.key, outputs.byte_size)
        assert _mapped(server, inputs.key) and _mapped(server, outputs.key)
        result = client.infer(
            "digits",
            [_shm_input("images", images, "FP32", "in", offset=8)],
            outputs=[_shm_output("logits", "out", outputs.byte_size)],
            model_version="fp32",
        )
        answer = result.get_output("logits")
        logits = shm.get_contents_as_numpy(outputs.handle, np.float32, list(answer.shape))
        wire = client.infer("digits", triton_inputs({"images": images}), model_version="fp32").as_numpy("logits")
        assert result.get_response().raw_output_contents == [b""]  # as Triton: the bytes are in the region
        assert list(answer.shape) == [3, 10] and answer.datatype == "FP32"
        assert np.array_equal(logits, wire)


def test_one_input_in_shared_memory_beside_one_on_the_wire(
    client: triton.InferenceServerClient, minilm: ModelEntry
) -> None:
    ids = np.random.default_rng(3).integers(100, 3000, (2, 9), dtype=np.int64)
    mask = np.ones_like(ids)
    output = minilm.config.outputs[0].name
    with made("ids", ids.nbytes) as region:
        shm.set_shared_memory_region(region.handle, [ids])
        client.register_system_shared_memory("ids", region.key, ids.nbytes)
        # raw_input_contents then holds attention_mask alone (as tritonclient sends it)
        inputs = [_shm_input("input_ids", ids, "INT64", "ids"), *triton_inputs({"attention_mask": mask})]
        mixed = client.infer("minilm", inputs, model_version="fp32").as_numpy(output)
    wire = client.infer("minilm", triton_inputs({"input_ids": ids, "attention_mask": mask}), model_version="fp32")
    assert np.array_equal(mixed, wire.as_numpy(output))


def test_a_stream_request_reads_and_writes_shared_memory(client: triton.InferenceServerClient) -> None:
    images = _images(2)
    answers: queue.Queue[Any] = queue.Queue()
    with made("stream-in", images.nbytes) as inputs, made("stream-out", 2 * LOGITS_BYTES) as outputs:
        shm.set_shared_memory_region(inputs.handle, [images])
        client.register_system_shared_memory("stream-in", inputs.key, images.nbytes)
        client.register_system_shared_memory("stream-out", outputs.key, outputs.byte_size)
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            client.async_stream_infer(
                "digits",
                [_shm_input("images", images, "FP32", "stream-in")],
                outputs=[_shm_output("logits", "stream-out", outputs.byte_size)],
                model_version="fp32",
            )
            result, error = answers.get(timeout=TIMEOUT_S)
        finally:
            client.stop_stream()
        assert error is None, error
        assert result.get_response().raw_output_contents == [b""]
        # a view of this process's mapping, which the region's removal unmaps: copied out
        logits = shm.get_contents_as_numpy(outputs.handle, np.float32, [2, 10]).copy()
    wire = client.infer("digits", triton_inputs({"images": images}), model_version="fp32").as_numpy("logits")
    assert np.array_equal(logits, wire)


def test_status_lists_the_regions_and_unregister_unmaps_them(
    server: RunningServer, client: triton.InferenceServerClient
) -> None:
    with made("a", 4096) as first, made("b", 8192) as second:
        client.register_system_shared_memory("a", first.key, 1000, offset=96)
        client.register_system_shared_memory("b", second.key, 8192)
        status = client.get_system_shared_memory_status(as_json=True)["regions"]
        assert status["a"] == {"name": "a", "key": first.key, "offset": "96", "byte_size": "1000"}
        assert set(status) == {"a", "b"}
        assert set(client.get_system_shared_memory_status("b", as_json=True)["regions"]) == {"b"}
        client.unregister_system_shared_memory("a")
        assert set(client.get_system_shared_memory_status(as_json=True)["regions"]) == {"b"}
        assert not _mapped(server, first.key) and _mapped(server, second.key)
        _refused(lambda: client.get_system_shared_memory_status("a"), "no system shared memory region 'a'",
                 code="NOT_FOUND")  # fmt: skip
        client.unregister_system_shared_memory("a")  # again: not an error, as in Triton
        client.unregister_system_shared_memory()  # every region
        assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
        assert not _mapped(server, second.key)
    metadata = client.get_server_metadata()
    assert "system_shared_memory" in metadata.extensions


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("/../etc/passwd", "a POSIX shared memory name"),
        ("/..", "a POSIX shared memory name"),
        ("/.", "a POSIX shared memory name"),
        ("../etc/passwd", "a POSIX shared memory name"),
        ("relative", "a POSIX shared memory name"),
        ("/a/b", "a POSIX shared memory name"),
        ("/", "a POSIX shared memory name"),
        ("", "a POSIX shared memory name"),
        ("/x\x00y", "a POSIX shared memory name"),
        ("/" + "x" * 300, "a POSIX shared memory name"),
        # The same name in every test process (pytest-xdist checks that they collected the same tests).
        ("/slimserve-test-absent-never-made", "cannot open key"),
    ],
)
def test_a_key_outside_dev_shm_or_absent_is_refused(client: triton.InferenceServerClient, key: str, why: str) -> None:
    _refused(lambda: client.register_system_shared_memory("r", key, 8), why)
    assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}


def test_a_symbolic_link_in_dev_shm_is_not_followed(client: triton.InferenceServerClient, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for callers" * 100)
    link = Path(f"/dev/shm/slimserve-test-{os.getpid()}-link")
    link.symlink_to(secret)
    try:
        _refused(lambda: client.register_system_shared_memory("r", f"/{link.name}", 8), "cannot open key")
    finally:
        link.unlink()


def test_bad_registrations_are_invalid_argument(client: triton.InferenceServerClient) -> None:
    with made("small", 1024) as region:
        _refused(lambda: client.register_system_shared_memory("r", region.key, 1000, offset=100),
                 "offset 100 + byte_size 1000 runs past the end of key", "(1024 bytes)")  # fmt: skip
        _refused(lambda: client.register_system_shared_memory("r", region.key, 0), "byte_size must be above 0")
        client.register_system_shared_memory("r", region.key, 1024)
        _refused(lambda: client.register_system_shared_memory("r", region.key, 8), "'r' is already registered")


def test_bad_offsets_sizes_and_regions_name_the_tensor(client: triton.InferenceServerClient) -> None:
    images = _images(1)
    with made("bounds", 2 * IMAGE_BYTES) as region:
        client.register_system_shared_memory("bounds", region.key, region.byte_size)
        wire = triton_inputs({"images": images})

        def infer(inputs: list[triton.InferInput], outputs: list[triton.InferRequestedOutput] | None = None) -> object:
            return client.infer("digits", inputs, outputs=outputs)

        _refused(lambda: infer([_shm_input("images", images, "FP32", "nope")]),
                 "input 'images': no system shared memory region 'nope' is registered")  # fmt: skip
        _refused(lambda: infer([_shm_input("images", images, "FP32", "bounds", offset=IMAGE_BYTES + 1)]),
                 f"input 'images': shared_memory_offset {IMAGE_BYTES + 1} + shared_memory_byte_size "
                 f"{IMAGE_BYTES} runs past the {2 * IMAGE_BYTES} bytes of region 'bounds'")  # fmt: skip
        _refused(lambda: infer([_shm_input("images", images, "FP32", "bounds", offset=3 * IMAGE_BYTES)]),
                 "runs past")  # fmt: skip
        too_big = triton.InferInput("images", [1, 1, 28, 28], "FP32")
        too_big.set_shared_memory("bounds", 3 * IMAGE_BYTES)
        _refused(lambda: infer([too_big]), "input 'images'", "runs past")
        short = triton.InferInput("images", [1, 1, 28, 28], "FP32")
        short.set_shared_memory("bounds", IMAGE_BYTES - 4)
        _refused(lambda: infer([short]),
                 f"input 'images': shared_memory_byte_size {IMAGE_BYTES - 4}, expected {IMAGE_BYTES}")  # fmt: skip
        _refused(lambda: infer(wire, [_shm_output("logits", "nope", LOGITS_BYTES)]),
                 "output 'logits': no system shared memory region 'nope' is registered")  # fmt: skip
        _refused(lambda: infer(wire, [_shm_output("logits", "bounds", LOGITS_BYTES, offset=2 * IMAGE_BYTES)]),
                 "output 'logits'", "runs past")  # fmt: skip
        _refused(lambda: infer(wire, [_shm_output("logits", "bounds", LOGITS_BYTES - 1)]),
                 f"output 'logits': {LOGITS_BYTES} bytes do not fit the {LOGITS_BYTES - 1} bytes")  # fmt: skip


def test_malformed_shared_memory_parameters_are_invalid_argument(server: RunningServer) -> None:
    def refused(edit: Callable[[service_pb2.ModelInferRequest], None], *phrases: str) -> None:
        request = infer_request("digits", {"images": _images(1)})
        edit(request)
        with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        for phrase in phrases:
            assert phrase in caught.value.details(), caught.value.details()  # type: ignore[attr-defined]

    def in_memory(request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferRequest.InferInputTensor:
        del request.raw_input_contents[:]  # an input in shared memory has no raw entry
        return request.inputs[0]

    def without_byte_size(request: service_pb2.ModelInferRequest) -> None:
        in_memory(request).parameters["shared_memory_region"].string_param = "r"

    def negative_offset(request: service_pb2.ModelInferRequest) -> None:
        tensor = in_memory(request)
        tensor.parameters["shared_memory_region"].string_param = "r"
        tensor.parameters["shared_memory_byte_size"].int64_param = IMAGE_BYTES
        tensor.parameters["shared_memory_offset"].int64_param = -8

    def text_size(request: service_pb2.ModelInferRequest) -> None:
        request.outputs.add(name="logits").parameters["shared_memory_region"].string_param = "r"
        request.outputs[0].parameters["shared_memory_byte_size"].string_param = "forty"

    def size_without_region(request: service_pb2.ModelInferRequest) -> None:
        in_memory(request).parameters["shared_memory_byte_size"].int64_param = IMAGE_BYTES

    def raw_for_an_input_in_memory(request: service_pb2.ModelInferRequest) -> None:
        request.inputs[0].parameters["shared_memory_region"].string_param = "r"

    def contents_for_an_input_in_memory(request: service_pb2.ModelInferRequest) -> None:
        in_memory(request).parameters["shared_memory_region"].string_param = "r"
        request.inputs[0].contents.fp32_contents.extend([0.0] * 784)

    refused(without_byte_size, "input 'images': shared_memory_region given without shared_memory_byte_size")
    refused(negative_offset, "input 'images': shared_memory_offset must be a whole number of bytes, 0 or more")
    refused(text_size, "output 'logits': shared_memory_byte_size must be a whole number of bytes")
    refused(size_without_region, "input 'images': ['shared_memory_byte_size'] given without a shared_memory_region")
    refused(raw_for_an_input_in_memory, "1 raw_input_contents for 0 inputs (1 more in shared memory)")
    refused(contents_for_an_input_in_memory, "input 'images': both shared_memory_region and contents given")


def test_the_server_caps_regions_and_mapped_bytes(client: triton.InferenceServerClient) -> None:
    with made("many", 4096) as region:
        for index in range(MAX_REGIONS):
            client.register_system_shared_memory(f"r{index}", region.key, 64)
        _refused(lambda: client.register_system_shared_memory("one-more", region.key, 64),
                 f"{MAX_REGIONS} shared memory regions are registered")  # fmt: skip
        client.unregister_system_shared_memory()
    # A sparse object: its size is only a promise, so the test allocates nothing.
    path = Path(f"/dev/shm/slimserve-test-{os.getpid()}-huge")
    with path.open("wb") as file:
        file.truncate(MAX_MAPPED_BYTES + 4096)
    try:
        _refused(lambda: client.register_system_shared_memory("huge", f"/{path.name}", MAX_MAPPED_BYTES + 1),
                 f"the {MAX_MAPPED_BYTES} bytes this server maps at most")  # fmt: skip
    finally:
        path.unlink()


@pytest.fixture(scope="module")
def token_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Two callers, each with its own inference token (and so its own regions)."""
    workdir = tmp_path_factory.mktemp("shm-tokens")
    tokens = workdir / "tokens"
    tokens.write_text(f"inference {TOKEN_A}\ninference {TOKEN_B}\n")
    running = RunningServer(repository, workdir, "--auth-tokens-file", str(tokens))
    yield running
    assert running.stop() == 0


def test_a_region_belongs_to_the_token_that_registered_it(token_server: RunningServer) -> None:
    a, b = ({"authorization": f"Bearer {token}"} for token in (TOKEN_A, TOKEN_B))
    images = _images(1)
    with (
        triton.InferenceServerClient(token_server.address) as client,
        made("owned-a", IMAGE_BYTES) as region_a,
        made("owned-b", IMAGE_BYTES) as region_b,
    ):
        shm.set_shared_memory_region(region_a.handle, [images])
        shm.set_shared_memory_region(region_b.handle, [np.zeros_like(images)])
        _refused(lambda: client.register_system_shared_memory("mine", region_a.key, IMAGE_BYTES),
                 "no bearer token", code="UNAUTHENTICATED")  # fmt: skip
        client.register_system_shared_memory("mine", region_a.key, IMAGE_BYTES, headers=a)
        # B neither sees it, nor reads it, nor unregisters it ...
        assert client.get_system_shared_memory_status(headers=b, as_json=True).get("regions", {}) == {}
        _refused(lambda: client.get_system_shared_memory_status("mine", headers=b), code="NOT_FOUND")
        tensor = [_shm_input("images", images, "FP32", "mine")]
        _refused(lambda: client.infer("digits", tensor, headers=b), "no system shared memory region 'mine'")
        client.unregister_system_shared_memory("mine", headers=b)
        client.unregister_system_shared_memory(headers=b)
        assert set(client.get_system_shared_memory_status(headers=a, as_json=True)["regions"]) == {"mine"}
        # ... and may have its own under the same name.
        client.register_system_shared_memory("mine", region_b.key, IMAGE_BYTES, headers=b)
        from_a = client.infer("digits", tensor, headers=a, model_version="fp32").as_numpy("logits")
        from_b = client.infer("digits", tensor, headers=b, model_version="fp32").as_numpy("logits")
        wire = client.infer("digits", triton_inputs({"images": images}), headers=a, model_version="fp32")
        zeros = client.infer("digits", triton_inputs({"images": np.zeros_like(images)}), headers=b,
                             model_version="fp32")  # fmt: skip
        assert np.array_equal(from_a, wire.as_numpy("logits"))
        assert np.array_equal(from_b, zeros.as_numpy("logits"))
        client.unregister_system_shared_memory(headers=a)
        client.unregister_system_shared_memory(headers=b)
        assert not _mapped(token_server, region_a.key) and not _mapped(token_server, region_b.key)


def test_unregistering_regions_in_use_breaks_no_request(
    server: RunningServer, client: triton.InferenceServerClient
) -> None:
    rows = 8
    images = _images(rows)
    outcomes: Counter[str] = Counter()

    def use(worker: int) -> None:
        with triton.InferenceServerClient(server.address) as own:
            for _ in range(15):
                try:
                    own.infer("digits", [_shm_input("images", images, "FP32", "busy-in")],
                              outputs=[_shm_output("logits", "busy-out", rows * LOGITS_BYTES)])  # fmt: skip
                    outcomes["OK"] += 1
                except InferenceServerException as error:
                    outcomes[f"{error.status()}: {str(error.message())[:70]}"] += 1

    with made("busy-in", images.nbytes) as inputs, made("busy-out", rows * LOGITS_BYTES) as outputs:
        shm.set_shared_memory_region(inputs.handle, [images])
        with ThreadPoolExecutor(6) as pool:
            users = [pool.submit(use, worker) for worker in range(6)]
            while not all(user.done() for user in users):  # registered most of the time, gone now and then
                client.register_system_shared_memory("busy-in", inputs.key, inputs.byte_size)
                client.register_system_shared_memory("busy-out", outputs.key, outputs.byte_size)
                time.sleep(0.005)
                client.unregister_system_shared_memory()
            for user in users:
                user.result()
    print(f"\noutcomes while unregistering: {dict(outcomes)}")
    assert sum(outcomes.values()) == 6 * 15 and outcomes["OK"] > 0
    assert all(outcome == "OK" or outcome.startswith("StatusCode.INVALID_ARGUMENT") for outcome in outcomes)
    assert server.process.poll() is None
    assert client.is_server_live()
    assert "unexpected error" not in server.log_tail(100_000)


def test_random_shared_memory_parameters_never_get_internal(
    server: RunningServer, client: triton.InferenceServerClient
) -> None:
    rng = random.Random(20261205)
    codes: Counter[str] = Counter()
    with made("fuzz", 4 * IMAGE_BYTES) as region, grpc.insecure_channel(server.address) as channel:
        client.register_system_shared_memory("fuzz", region.key, region.byte_size)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(FUZZ_CASES):
            rows = rng.choice([1, 2, 3])
            request = infer_request("digits", {"images": _images(rows)})
            targets = [request.inputs[0]] if rng.random() < 0.7 else []
            if rng.random() < 0.5:
                targets.append(request.outputs.add(name=rng.choice(["logits", "logits", "nope"])))
            for target in targets:
                for key in rng.sample(["shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"],
                                      rng.randint(1, 3)):  # fmt: skip
                    _random_parameter(rng, target.parameters[key], key)
            if request.inputs[0].parameters and rng.random() < 0.8:
                del request.raw_input_contents[:]  # the input is in memory: no raw entry for it
            try:
                stub.ModelInfer(request, timeout=TIMEOUT_S)
                codes["OK"] += 1
            except grpc.RpcError as error:
                codes[error.code().name] += 1  # type: ignore[attr-defined]
    print(f"\nshared memory fuzz: {dict(codes)}")
    assert set(codes) <= {"OK", "INVALID_ARGUMENT"} and codes["INVALID_ARGUMENT"] > 0
    assert server.process.poll() is None


def _random_parameter(rng: random.Random, parameter: Any, key: str) -> None:
    """A value for one shared memory parameter: mostly plausible, sometimes hostile."""
    roll = rng.random()
    if key == "shared_memory_region" and roll < 0.8:
        parameter.string_param = rng.choice(["fuzz", "fuzz", "fuzz", "nope", "", "../fuzz"])
    elif roll < 0.85:
        edges = [0, 1, IMAGE_BYTES, 2 * IMAGE_BYTES, 4 * IMAGE_BYTES, 4 * IMAGE_BYTES + 1, 2**63 - 1, -1, -(2**63)]
        parameter.int64_param = rng.choice([*edges, rng.randint(0, 5 * IMAGE_BYTES)])
    elif roll < 0.9:
        parameter.uint64_param = rng.choice([2**64 - 1, 2**63, 8])
    elif roll < 0.95:
        parameter.bool_param = True
    else:
        parameter.double_param = rng.choice([float("nan"), 8.0, -1.0])


@pytest.mark.slow
@pytest.mark.skipif(not PERF_ANALYZER.exists(), reason=f"Triton's perf_analyzer wrapper not found at {PERF_ANALYZER}")
def test_perf_analyzer_measures_with_system_shared_memory(
    server: RunningServer, digits: ModelEntry, tmp_path: Path
) -> None:
    report = tmp_path / "perf.csv"
    finished = subprocess.run(
        [str(PERF_ANALYZER), "-m", "digits", "-x", str(version_numbers(digits)["fp32"]), "-i", "grpc",
         "-u", server.address, "--shared-memory", "system", "--output-shared-memory-size", str(LOGITS_BYTES),
         "--concurrency-range", "1:2", "-p", "1000", "-f", str(report),
         "--stability-percentage", "100", "--max-trials", "20"],  # as tests/server/test_triton_config.py
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    rows = report.read_text().splitlines()
    assert len(rows) == 3  # the header and concurrency 1 and 2
    with triton.InferenceServerClient(server.address) as client:  # perf_analyzer unregistered what it made
        assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
