"""Locust users for slimserve over gRPC, following Locust's own gRPC pattern.

gRPC is made gevent-compatible before any channel exists, and a client interceptor reports
every call as a Locust request event: its response time, its size, and on failure the gRPC
status. The request name is `<model>/<variant that served it>` (the variant comes back in
the response), so Locust's statistics are per variant; a failed call is named after what
was asked (`digits/routed` when the router was to choose).

Users (run one or several; `MixedUser` is the realistic blend):
- `InteractiveUser`: an app classifying one digit at a time, tight SLO (`slo_ms` 15).
- `BatchJobUser`: a batch job sending 16 digits per call with a loose SLO (200 ms).
- `EmbeddingUser`: an embedding service, 1–4 sentences per call to `minilm`, SLO 100 ms.
- `MixedUser`: 60 % interactive, 25 % batch, 15 % embedding calls.

Every `digits` answer is scored against the image's true label; at the end the share of
correct answers (and the calls per user class) is printed and written next to Locust's CSV
files as `<csv prefix>_summary.json` (see `make loadtest`). This file never starts a server.

Against a server with TLS or tokens (README: Security), set SLIMSERVE_CLIENT_TLS_CA (and
SLIMSERVE_CLIENT_TLS_CERT/_KEY for mutual TLS) and SLIMSERVE_TOKEN or SLIMSERVE_TOKEN_FILE.
"""

from __future__ import annotations

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel: gRPC must cooperate with gevent

import json  # noqa: E402 - after init_gevent on purpose
import os  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import User, between, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc  # noqa: E402

from loadtest.messages import digits_request, minilm_request  # noqa: E402
from slimserve.server.transport.tls import ClientSecurity  # noqa: E402
from slimserve.variants.data import documentation_sentences, load_digits_split, minilm_tokenizer  # noqa: E402

TOKENS = 32  # pad every sentence to one length so that the server can batch calls together
DIGITS = load_digits_split()[1]
assert DIGITS.labels is not None
SENTENCES = documentation_sentences()[:512]
TOKENIZER = minilm_tokenizer(max_tokens=TOKENS)
SECURITY = ClientSecurity.from_environment()  # SLIMSERVE_CLIENT_TLS_* and SLIMSERVE_TOKEN[_FILE]
SCORES: Counter[str] = Counter()  # digits rows answered / correct, and calls per user class


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Reports every unary call to Locust with its time, size and gRPC status."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        started = time.perf_counter()
        outcome = continuation(client_call_details, request)
        exception: BaseException | None = None
        length = 0
        try:
            response = outcome.result()
            length = response.ByteSize()
            name = f"{request.model_name}/{response.parameters['variant'].string_param or response.model_version}"
        except grpc.RpcError as error:
            exception = error
            name = f"{request.model_name}/{request.model_version or 'routed'}"
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1e3,
            response_length=length,
            exception=exception,
            context={},
        )
        return outcome


class SlimserveUser(User):
    """Base: one gRPC channel per simulated user, with the Locust interceptor."""

    abstract = True
    wait_time = between(0.05, 0.2)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        address = self.host or "127.0.0.1:8001"
        channel = grpc.intercept_channel(SECURITY.channel(address), LocustInterceptor(environment))
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self.rng = np.random.default_rng()

    def _call(self, request: pb.ModelInferRequest, timeout_s: float = 10.0) -> pb.ModelInferResponse | None:
        SCORES[f"calls:{type(self).__name__}"] += 1
        try:
            return self.stub.ModelInfer(request, timeout=timeout_s)
        except grpc.RpcError:
            return None  # already reported to Locust by the interceptor

    def classify(self, rows: int, slo_ms: float) -> None:
        picked = self.rng.choice(len(DIGITS.labels), size=rows, replace=False)  # type: ignore[arg-type]
        response = self._call(digits_request(DIGITS.inputs["images"][picked], slo_ms=slo_ms))
        if response is not None:
            logits = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(rows, -1)
            SCORES["digits_rows"] += rows
            SCORES["digits_correct"] += int((logits.argmax(axis=1) == DIGITS.labels[picked]).sum())  # type: ignore[index]

    def embed(self, sentences: int, slo_ms: float) -> None:
        picked = [SENTENCES[int(i)] for i in self.rng.integers(0, len(SENTENCES), size=sentences)]
        tokens = TOKENIZER(picked, pad_to=TOKENS)
        self._call(minilm_request(tokens["input_ids"], tokens["attention_mask"], slo_ms=slo_ms))


class InteractiveUser(SlimserveUser):
    """One digit per call, tight SLO."""

    @task
    def classify_one(self) -> None:
        self.classify(rows=1, slo_ms=15.0)


class BatchJobUser(SlimserveUser):
    """Sixteen digits per call, loose SLO, little think time."""

    wait_time = between(0.01, 0.05)

    @task
    def classify_batch(self) -> None:
        self.classify(rows=16, slo_ms=200.0)


class EmbeddingUser(SlimserveUser):
    """One to four sentences per call to minilm."""

    @task
    def embed_sentences(self) -> None:
        self.embed(sentences=int(self.rng.integers(1, 5)), slo_ms=100.0)


class MixedUser(SlimserveUser):
    """The realistic blend of the three."""

    @task(12)
    def interactive(self) -> None:
        self.classify(rows=1, slo_ms=15.0)

    @task(5)
    def batch(self) -> None:
        self.classify(rows=16, slo_ms=200.0)

    @task(3)
    def embedding(self) -> None:
        self.embed(sentences=int(self.rng.integers(1, 5)), slo_ms=100.0)


def summary(environment: Environment) -> dict[str, Any]:
    """Calls per user class, per-variant p50/p95, and the share of correct digits answers."""
    total = environment.stats.total
    per_name = {
        name: {"requests": entry.num_requests, "failures": entry.num_failures,
               "p50_ms": entry.get_response_time_percentile(0.5), "p95_ms": entry.get_response_time_percentile(0.95)}
        for (name, _), entry in sorted(environment.stats.entries.items())
    }  # fmt: skip
    rows = SCORES["digits_rows"]
    return {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "requests_per_s": total.total_rps,
        "per_variant": per_name,
        "calls_per_user_class": {k.removeprefix("calls:"): v for k, v in SCORES.items() if k.startswith("calls:")},
        "digits_rows_scored": rows,
        "digits_correct_share": SCORES["digits_correct"] / rows if rows else None,
    }


@events.test_stop.add_listener
def _report(environment: Environment, **_: Any) -> None:
    result = summary(environment)
    prefix = environment.parsed_options.csv_prefix if environment.parsed_options else None
    if prefix:
        with open(f"{prefix}_summary.json", "w") as handle:
            json.dump(result, handle, indent=2)
    if os.environ.get("LOCUST_QUIET_SUMMARY") != "1":
        share = result["digits_correct_share"]
        print(f"\nslimserve: {result['requests']} calls, {result['failures']} failures, "
              f"{result['requests_per_s']:.1f} calls/s; digits answers correct: "
              f"{'n/a' if share is None else f'{share:.2%}'} of {result['digits_rows_scored']} images")  # fmt: skip
        for name, row in result["per_variant"].items():
            p50, p95 = row["p50_ms"], row["p95_ms"]
            print(f"  {name:<20} {row['requests']:>7} calls  p50 {p50:>6.0f} ms  p95 {p95:>6.0f} ms")
