"""Triton's ModelStreamInfer against a real server, through the stock clients: tritonclient's
sync stream (`start_stream`, `async_stream_infer` with a callback), its aio `stream_infer`,
raw stubs for what those clients hide (the id and `code` of a failed request), and
perf_analyzer `--streaming`.

The module has a server of its own without the shadow sampler, so that statistics count
exactly. Messages are tritonclient's (`service_pb2`): slimserve's generated `inference`
stubs cannot share a process with them, so the constants of modules that import those stubs
are restated here.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from loadtest.messages import digits_request, minilm_request, triton_inputs
from loadtest.serving import RunningServer, wait_until
from slimserve.repository.format import ModelEntry
from slimserve.repository.sessions import make_session
from slimserve.server.core.versions import version_numbers
from slimserve.server.transport.auth import INFERENCE, group_of
from slimserve.variants.data import load_digits_split
from tests.server.scrape import scrape, value
from tests.server.test_triton_config import PERF_ANALYZER, _perf_analyzer

MAX_ID_CHARS = 256  # transport.codec.MAX_ID_CHARS: a longer id is refused and not echoed
MAX_STREAM_IN_FLIGHT_REQUESTS = 64  # transport.stream's bound on one stream's requests in flight
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
CALL_TIMEOUT_S = 30.0
TOLERANCE = 1e-4
Answer = tuple[triton.InferResult | None, InferenceServerException | None]


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A fresh server for the module, no shadow comparisons: statistics count only the calls."""
    running = RunningServer(repository, tmp_path_factory.mktemp("streaming"), env={"SLIMSERVE_SHADOW_FRACTION": "0"})
    yield running
    assert running.stop() == 0, running.log_tail()


def _images(rows: int) -> np.ndarray:
    return load_digits_split()[1].inputs["images"][:rows]


def _code(answer: pb.ModelStreamInferResponse) -> str:
    """The status a streamed request ended with: OK, or the `code` its failure carries."""
    return answer.infer_response.parameters["code"].string_param if answer.error_message else "OK"


def _stream(server: RunningServer, messages: list[pb.ModelInferRequest]) -> list[pb.ModelStreamInferResponse]:
    """`messages` in one stream through a raw stub; every answer, once the stream ended OK."""
    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return list(stub.ModelStreamInfer(iter(messages), timeout=CALL_TIMEOUT_S))


def _aio_stream(server: RunningServer, requests: list[dict[str, Any]]) -> list[Answer]:
    """`requests` (keyword arguments of `async_stream_infer`) through tritonclient.grpc.aio's
    `stream_infer`: its (result, error) pairs, in the order they came."""

    async def scenario() -> list[Answer]:
        async with triton_aio.InferenceServerClient(server.address) as client:

            async def messages() -> AsyncIterator[dict[str, Any]]:
                for request in requests:
                    yield request

            return [answer async for answer in client.stream_infer(messages(), stream_timeout=CALL_TIMEOUT_S)]

    return asyncio.run(scenario())


def test_the_stream_is_in_the_inference_token_group() -> None:
    assert group_of(STREAM) == INFERENCE


def test_sync_stream_answers_equal_unary_answers_with_their_ids_in_order(server: RunningServer) -> None:
    images = _images(12)
    chunks = [images[row : row + 2] for row in range(0, 12, 2)]
    answers: queue.Queue[Answer] = queue.Queue()
    with triton.InferenceServerClient(server.address) as client:
        unary = [client.infer("digits", triton_inputs({"images": chunk}), model_version="int8") for chunk in chunks]
        client.start_stream(callback=lambda result, error: answers.put((result, error)), stream_timeout=CALL_TIMEOUT_S)
        for number, chunk in enumerate(chunks):
            inputs = triton_inputs({"images": chunk})
            client.async_stream_infer("digits", inputs, model_version="int8", request_id=f"s{number}")
        client.stop_stream()  # half-closes, then waits for the server to end the stream
    streamed = [answers.get_nowait() for _ in range(answers.qsize())]
    assert [error for _, error in streamed] == [None] * len(chunks)
    results = [result for result, _ in streamed if result is not None]
    assert [result.get_response().id for result in results] == [f"s{n}" for n in range(len(chunks))]
    for result, expected in zip(results, unary, strict=True):
        np.testing.assert_allclose(result.as_numpy("logits"), expected.as_numpy("logits"), atol=TOLERANCE)
        assert result.get_response().parameters["variant"].string_param == "int8"


def test_aio_stream_pins_a_version_by_name_or_number_and_routes_without_one(
    server: RunningServer, digits: ModelEntry
) -> None:
    inputs = triton_inputs({"images": _images(1)})
    number = str(version_numbers(digits)["pruned"])
    asked = [("fp32", "by-name"), (number, "by-number"), ("", "routed")]
    answers = _aio_stream(
        server, [{"model_name": "digits", "inputs": inputs, "model_version": v, "request_id": i} for v, i in asked]
    )
    assert [error for _, error in answers] == [None] * len(asked)
    responses = [result.get_response() for result, _ in answers if result is not None]
    assert [response.id for response in responses] == [request_id for _, request_id in asked]
    chosen = [(r.parameters["variant"].string_param, r.parameters["reason"].string_param) for r in responses]
    assert chosen[:2] == [("fp32", "pinned"), ("pruned", "pinned")]
    variant, reason = chosen[2]
    assert variant in digits.variants and reason != "pinned"


def test_a_bad_request_mid_stream_gets_the_unary_error_and_the_later_ones_are_answered(
    server: RunningServer,
) -> None:
    wrong_datatype = digits_request(request_id="wrong-datatype")
    wrong_datatype.inputs[0].datatype = "INT64"
    unknown_model = digits_request(request_id="unknown-model")
    unknown_model.model_name = "nope"
    messages = [
        digits_request(request_id="first"),
        wrong_datatype,
        unknown_model,
        digits_request(variant="fp8", request_id="unknown-variant"),
        digits_request(request_id="i" * (MAX_ID_CHARS + 1)),
        digits_request(rows=2, slo_ms=-1.0, request_id="bad-slo"),
        digits_request(request_id="last"),
    ]
    answers = _stream(server, messages)
    assert [a.infer_response.id for a in answers] == [m.id if len(m.id) <= MAX_ID_CHARS else "" for m in messages]
    assert [_code(a) for a in answers] == [
        "OK", "INVALID_ARGUMENT", "NOT_FOUND", "NOT_FOUND", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "OK",
    ]  # fmt: skip
    # Each failure says what the same request alone says as ModelInfer's status.
    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for message, answer in zip(messages, answers, strict=True):
            if answer.error_message:
                with pytest.raises(grpc.RpcError) as unary:
                    stub.ModelInfer(message, timeout=CALL_TIMEOUT_S)
                assert (unary.value.code().name, unary.value.details()) == (_code(answer), answer.error_message)
                assert not answer.infer_response.outputs and not answer.infer_response.raw_output_contents


def test_bytes_that_are_no_request_are_refused_in_the_stream_and_it_goes_on(server: RunningServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stream = channel.stream_stream(STREAM)  # bytes in, bytes out
        sent = [digits_request(request_id="a").SerializeToString(), b"\xff\xff\xff", b"\x0a", b""]
        sent.append(digits_request(request_id="z").SerializeToString())
        answers = [pb.ModelStreamInferResponse.FromString(raw) for raw in stream(iter(sent), timeout=CALL_TIMEOUT_S)]
    assert [_code(a) for a in answers] == ["OK", *["INVALID_ARGUMENT"] * 3, "OK"]
    assert [a.infer_response.id for a in answers] == ["a", "", "", "", "z"]
    assert "not a ModelInferRequest" in answers[1].error_message


def test_tritonclient_hands_a_failure_to_the_callback_and_the_stream_goes_on(server: RunningServer) -> None:
    inputs = triton_inputs({"images": _images(1)})
    answers: queue.Queue[Answer] = queue.Queue()
    with triton.InferenceServerClient(server.address) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)), stream_timeout=CALL_TIMEOUT_S)
        for model, request_id in [("digits", "before"), ("nope", "refused"), ("digits", "after")]:
            client.async_stream_infer(model, inputs, request_id=request_id)
        client.stop_stream()
    (before, none_before), (nothing, refused), (after, none_after) = [answers.get_nowait() for _ in range(3)]
    assert none_before is None and none_after is None and nothing is None
    assert before is not None and before.get_response().id == "before"
    assert after is not None and after.get_response().id == "after"
    assert refused is not None and "'nope'" in refused.message()


def test_many_requests_in_one_stream_are_each_answered_with_their_own_rows(
    server: RunningServer, digits: ModelEntry
) -> None:
    count = 4 * MAX_STREAM_IN_FLIGHT_REQUESTS  # past the bound: the server reads on as it answers
    images = _images(count)
    requests = [
        {"model_name": "digits", "inputs": triton_inputs({"images": images[row : row + 1]}),
         "model_version": "int8", "request_id": f"m{row}"}
        for row in range(count)
    ]  # fmt: skip
    answers = _aio_stream(server, requests)
    assert [error for _, error in answers] == [None] * count
    results = [result for result, _ in answers if result is not None]
    assert [result.get_response().id for result in results] == [f"m{row}" for row in range(count)]
    expected = make_session(str(digits.variants["int8"].onnx_path), 1).run(None, {"images": images})[0]
    logits = np.concatenate([result.as_numpy("logits") for result in results])
    np.testing.assert_allclose(logits, expected, atol=TOLERANCE)


def test_streamed_requests_count_in_model_statistics_as_unary_calls_do(server: RunningServer) -> None:
    wrong_datatype = digits_request(variant="distilled")
    wrong_datatype.inputs[0].datatype = "INT64"
    messages = [digits_request(_images(3), variant="distilled") for _ in range(4)] + [wrong_datatype]

    def counts(client: triton.InferenceServerClient) -> np.ndarray:
        stats = client.get_inference_statistics("digits", "distilled").model_stats[0]
        inference = stats.inference_stats
        return np.array([stats.inference_count, inference.success.count, inference.fail.count])

    with triton.InferenceServerClient(server.address) as client, grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        before = counts(client)
        for message in messages:
            try:
                stub.ModelInfer(message, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        after_unary = counts(client)
        assert [_code(answer) for answer in _stream(server, messages)] == ["OK"] * 4 + ["INVALID_ARGUMENT"]
        after_stream = counts(client)
    # Rows, calls answered, calls failed once routed (a refused input is charged to no variant).
    assert list(after_unary - before) == [12, 4, 0]
    assert list(after_stream - after_unary) == list(after_unary - before)


def test_a_cancelled_stream_stops_its_queued_requests_and_leaves_nothing_behind(server: RunningServer) -> None:
    # Each request fills a whole session call of minilm (its max_batch_size rows, 128 tokens):
    # the first answer comes when the others are still queued behind it.
    sent = 8
    request = minilm_request(np.ones((16, 128), np.int64), variant="fp32")
    url = server.metrics_url
    assert url is not None
    labels = {"model": "minilm", "variant": "fp32"}
    before = scrape(url)

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
            for _ in range(sent):
                await stream.write(request)
            first = await stream.read()
            assert isinstance(first, pb.ModelStreamInferResponse) and not first.error_message
            stream.cancel()
            assert await stream.code() == grpc.StatusCode.CANCELLED

    asyncio.run(scenario())

    def settled() -> dict[str, float] | None:
        now = scrape(url)
        held = value(now, "slimserve_inflight_requests", **labels) + value(now, "slimserve_queue_depth", **labels)
        codes = {
            code: value(now, "slimserve_requests", "slimserve_requests_total", code=code, **labels)
            - value(before, "slimserve_requests", "slimserve_requests_total", code=code, **labels)
            for code in ("OK", "CANCELLED")
        }
        return codes if held == 0 and sum(codes.values()) >= 2 else None

    codes = wait_until(settled, CALL_TIMEOUT_S, "the cancelled stream's requests to leave the variant")
    assert codes["OK"] >= 1 and codes["CANCELLED"] >= 1 and sum(codes.values()) <= sent, codes
    assert [_code(answer) for answer in _stream(server, [request])] == ["OK"]
    log = server.log_path.read_text().splitlines()
    assert not [line for line in log if line.startswith(("Traceback", "ERROR", "CRITICAL"))], log[-40:]


def test_server_metadata_lists_extensions_whose_calls_answer(server: RunningServer) -> None:
    with triton.InferenceServerClient(server.address) as client:
        extensions = list(client.get_server_metadata().extensions)
        assert extensions == [
            "model_configuration", "model_repository", "parameters", "statistics", "system_shared_memory"
        ]  # fmt: skip
        assert len(client.get_system_shared_memory_status().regions) == 0  # system_shared_memory
        assert client.get_model_config("digits").config.name == "digits"  # model_configuration
        assert {m.name for m in client.get_model_repository_index().models} == {"digits", "minilm"}
        assert client.get_inference_statistics("digits").model_stats  # statistics
        inputs = triton_inputs({"images": _images(1)})
        result = client.infer("digits", inputs, parameters={"policy": "fastest", "anything": 1})  # parameters
        assert result.get_response().parameters["reason"].string_param == "fastest"


@pytest.mark.slow
@pytest.mark.skipif(not PERF_ANALYZER.exists(), reason=f"Triton's perf_analyzer wrapper not found at {PERF_ANALYZER}")
def test_perf_analyzer_measures_slimserve_over_the_stream(
    server: RunningServer, digits: ModelEntry, tmp_path: Path
) -> None:
    # Extra arguments go where the version does; --streaming sends every request on one stream.
    version = str(version_numbers(digits)["distilled"])
    rows = _perf_analyzer(server, tmp_path / "perf.csv", "-x", version, "--streaming")
    for row in rows:
        assert int(row["Server Compute Infer"]) > 0  # it read slimserve's own statistics, per window
