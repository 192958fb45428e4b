"""Metrics after real requests: names, labels, buckets; shadow sampling; the Feedback RPC."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from loadtest.messages import MINILM_INPUTS, triton_inputs
from loadtest.serving import RunningServer, wait_until
from slimserve.protos import slimserve_pb2, slimserve_pb2_grpc
from slimserve.router.cpu import TARGET_UTILIZATION
from slimserve.server.observe.metrics import BATCH_BUCKETS, LATENCY_BUCKETS_S
from slimserve.variants.data import load_digits_split, minilm_tokenizer
from tests.server.scrape import scrape, value

SHADOW_ATTEMPTS = 5
SHADOW_RETRY_S = 1.5  # longer than the load monitor's idle period (1 s)


@pytest.fixture(scope="module")
def shadowing_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Every answer of a compressed variant is shadowed (when the server is idle)."""
    running = RunningServer(repository, tmp_path_factory.mktemp("metrics"), env={"SLIMSERVE_SHADOW_FRACTION": "1"})
    yield running
    assert running.stop() == 0


def _digits(client: triton.InferenceServerClient, rows: int, variant: str = "", request_id: str = "") -> np.ndarray:
    images = load_digits_split()[1].inputs["images"][:rows]
    tensor = triton.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    result = client.infer("digits", [tensor], model_version=variant, request_id=request_id)
    return result.as_numpy("logits")


def test_request_metrics_have_model_variant_labels_and_second_buckets(shadowing_server: RunningServer) -> None:
    assert shadowing_server.metrics_url
    with triton.InferenceServerClient(shadowing_server.address) as client:
        for _ in range(3):
            _digits(client, 2, "int8")
        with pytest.raises(InferenceServerException):
            client.infer("no-such-model", [])
    samples = scrape(shadowing_server.metrics_url)
    ok = dict(model="digits", variant="int8")
    assert value(samples, "slimserve_requests", "slimserve_requests_total", **ok, code="OK") == 3
    # A caller cannot grow the label set: an unknown model is counted as "unknown".
    assert value(samples, "slimserve_requests", "slimserve_requests_total", model="unknown", code="NOT_FOUND") == 1
    for family in ("slimserve_request_duration_seconds", "slimserve_queue_duration_seconds"):
        buckets = [s for s in samples[family] if s.name.endswith("_bucket") and s.labels.items() >= ok.items()]
        assert [float(s.labels["le"]) for s in buckets] == [*LATENCY_BUCKETS_S, float("inf")]
        assert value(samples, family, f"{family}_count", **ok) == 3
    assert value(samples, "slimserve_compute_duration_seconds", "slimserve_compute_duration_seconds_count",
                 **ok, device="cpu") == 3  # fmt: skip
    batch = [
        s for s in samples["slimserve_batch_size"] if s.name.endswith("_bucket") and s.labels.items() >= ok.items()
    ]
    assert [float(s.labels["le"]) for s in batch] == [*map(float, BATCH_BUCKETS), float("inf")]
    assert value(samples, "slimserve_batch_size", "slimserve_batch_size_sum", **ok) == 6  # 3 calls of 2 rows
    decisions = "slimserve_routing_decisions"
    assert value(samples, decisions, f"{decisions}_total", **ok, reason="pinned") == 3
    assert value(samples, "slimserve_slo_requests", "slimserve_slo_requests_total", **ok) == 3
    assert value(samples, "slimserve_inflight_requests", **ok) == 0
    assert "slimserve_queue_depth" in samples and "slimserve_router_predicted_latency_seconds" in samples
    assert 0.0 <= value(samples, "slimserve_cpu_utilization") <= 1.0
    assert value(samples, "slimserve_event_loop_lag_seconds") >= 0.0
    assert value(samples, "slimserve_cpu_target") == TARGET_UTILIZATION
    assert value(samples, "slimserve_cpu_overhead_seconds") >= 0.0
    assert value(samples, "slimserve_router_cpu_price", model="digits") == 0.0  # three calls: the CPU has room


def test_static_facts_of_every_variant_are_exported(shadowing_server: RunningServer) -> None:
    assert shadowing_server.metrics_url
    samples = scrape(shadowing_server.metrics_url)
    for model, metric in (("digits", "accuracy"), ("minilm", "cosine")):
        for variant in ("fp32", "int8", "pruned", "distilled"):
            labels = dict(model=model, variant=variant)
            assert 0 < value(samples, "slimserve_variant_quality", **labels, metric=metric) <= 1.0 + 1e-9
            assert value(samples, "slimserve_variant_size_bytes", **labels) > 0
            assert value(samples, "slimserve_variant_parameters", **labels) > 0
            assert value(samples, "slimserve_variant_compression_rate", **labels) >= 1.0 or variant == "pruned"
            assert value(samples, "slimserve_variant_speedup", **labels, hardware="cloud-cpu") > 0


def test_shadow_comparison_runs_after_the_answer_and_exports_fidelity(shadowing_server: RunningServer) -> None:
    assert shadowing_server.metrics_url
    url = shadowing_server.metrics_url
    labels = dict(model="minilm", variant="distilled")
    # A long batch makes the fp32 shadow take far longer than the distilled answer.
    tokens = minilm_tokenizer()(["A sentence to embed, padded to a long length."] * 16, pad_to=256)
    inputs = triton_inputs({name: tokens[name] for name in MINILM_INPUTS})

    def counts() -> tuple[float, float, float]:
        """(comparisons of distilled, minilm's skipped samples, agreement of distilled)."""
        samples = scrape(url)
        return (
            value(samples, "slimserve_shadow_comparisons", "slimserve_shadow_comparisons_total", **labels),
            value(samples, "slimserve_shadow_skipped", "slimserve_shadow_skipped_total", model="minilm"),
            value(samples, "slimserve_shadow_agreement", "slimserve_shadow_agreement_total", **labels),
        )

    def settled(compared: float, skipped: float) -> bool:
        """The sampled answer was compared or skipped since the counts were `compared, skipped`."""
        now = counts()
        return now[0] > compared or now[1] > skipped

    # A comparison runs only while the server is idle (no queue, CPU below the shadow's limit);
    # right after the previous test's traffic it may be skipped instead, and counted as such:
    # then the same request is sent again, once the server has been idle a while.
    for _ in range(SHADOW_ATTEMPTS):
        before, skipped_before, agreement_before = counts()
        with triton.InferenceServerClient(shadowing_server.address) as client:
            client.infer("minilm", inputs, model_version="distilled")
        # The caller has its answer before the comparison is counted: it did not wait for it.
        assert counts()[0] == before
        wait_until(
            functools.partial(settled, before, skipped_before), 30.0, "the sampled answer to be compared or skipped"
        )
        if counts()[0] == before + 1:
            break
        time.sleep(SHADOW_RETRY_S)  # let the CPU account see the server idle
    else:
        raise AssertionError(f"every one of {SHADOW_ATTEMPTS} sampled answers was skipped, none compared")
    agreement = value(scrape(url), "slimserve_shadow_agreement", "slimserve_shadow_agreement_total", **labels)
    assert agreement_before < agreement <= agreement_before + 1.0  # a cosine in (0, 1]


def test_shadow_sampling_stops_when_the_model_is_busy(shadowing_server: RunningServer) -> None:
    assert shadowing_server.metrics_url
    images = load_digits_split()[1].inputs["images"][:1]

    def one(_: int) -> None:
        with triton.InferenceServerClient(shadowing_server.address) as client:
            tensor = triton.InferInput("images", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images)
            client.infer("digits", [tensor], model_version="pruned")

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=24) as pool:
        list(pool.map(one, range(200)))
    samples = scrape(shadowing_server.metrics_url)
    skipped = value(samples, "slimserve_shadow_skipped", "slimserve_shadow_skipped_total", model="digits")
    compared = value(samples, "slimserve_shadow_comparisons", "slimserve_shadow_comparisons_total",
                     model="digits", variant="pruned")  # fmt: skip
    assert skipped > 0 and compared < 200


def test_feedback_scores_an_answer_once_by_its_ticket(shadowing_server: RunningServer) -> None:
    """Without tokens an answer is named by its unguessable ticket, not by its (shared) id."""
    assert shadowing_server.metrics_url
    split = load_digits_split()[1]
    assert split.labels is not None
    images = split.inputs["images"][:3]
    tensor = triton.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    with triton.InferenceServerClient(shadowing_server.address) as client:
        result = client.infer("digits", [tensor], model_version="distilled", request_id="req-42")
        unremembered = client.infer("digits", [tensor], model_version="distilled")  # no id: nothing kept
    ticket = result.get_response().parameters["feedback_ticket"].string_param
    assert len(ticket) >= 32 and "feedback_ticket" not in unremembered.get_response().parameters
    logits = result.as_numpy("logits")
    with grpc.insecure_channel(shadowing_server.address) as channel:
        management = slimserve_pb2_grpc.ManagementStub(channel)
        labels = [int(x) for x in split.labels[:3]]
        for request_id, ticket_sent, labels_sent, code, message in (
            ("req-42", "", labels, grpc.StatusCode.INVALID_ARGUMENT, "guessable"),  # an id names nothing here
            ("", "", labels, grpc.StatusCode.INVALID_ARGUMENT, "feedback_ticket"),
            ("", ticket + "0", labels, grpc.StatusCode.NOT_FOUND, "is remembered"),
            ("", ticket, [1], grpc.StatusCode.INVALID_ARGUMENT, "one label per row"),
        ):
            with pytest.raises(grpc.RpcError) as error:
                management.Feedback(
                    slimserve_pb2.FeedbackRequest(
                        model="digits", request_id=request_id, ticket=ticket_sent, labels=labels_sent
                    )
                )
            assert error.value.code() == code and message in error.value.details()  # type: ignore[attr-defined]
        answer = management.Feedback(slimserve_pb2.FeedbackRequest(model="digits", ticket=ticket, labels=labels))
        assert answer.variant == "distilled"
        assert list(answer.predicted) == [int(c) for c in logits.argmax(axis=1)]
        assert answer.correct == sum(p == t for p, t in zip(answer.predicted, labels, strict=True))
        with pytest.raises(grpc.RpcError) as twice:
            management.Feedback(slimserve_pb2.FeedbackRequest(model="digits", ticket=ticket, labels=labels))
        assert twice.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert "already scored" in twice.value.details()  # type: ignore[attr-defined]
    samples = scrape(shadowing_server.metrics_url)
    scored = value(samples, "slimserve_feedback", "slimserve_feedback_total", model="digits", variant="distilled")
    assert scored == 3


def test_metrics_can_be_turned_off(repository: Path, tmp_path: Path) -> None:
    running = RunningServer(repository, tmp_path, env={"SLIMSERVE_METRICS": "false"})
    try:
        assert running.metrics_url is None
        with triton.InferenceServerClient(running.address) as client:
            assert _digits(client, 1, "fp32").shape == (1, 10)
    finally:
        assert running.stop() == 0
