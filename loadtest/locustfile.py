"""Locust users for slimserve over gRPC, following Locust's own gRPC pattern.

gRPC is made gevent-compatible before any channel exists, and a client interceptor runs
every call and reports it to Locust once, as its outcome (`loadtest.outcomes`): its time
(retries and their pauses included), its size and, on failure, the gRPC status.

- **answered**: request type `grpc`, named `<model>/<variant that served it>` (the variant
  comes back in the response), so Locust's statistics are per variant;
- **shed** — refused UNAVAILABLE on every attempt: request type `shed`, named after what was
  asked and the SLO it stated (`digits/routed slo_ms=15`); not a Locust failure;
- **failed** — any other status: request type `grpc`, named after what was asked
  (`digits/routed` when the router was to choose); a Locust failure.

A call refused UNAVAILABLE is retried under gRPC's retry policy (`outcomes.RETRY_POLICY`:
at most 4 attempts; pauses drawn from 0 to a ceiling of 50, 100, 200 ms — doubling, at most
500 ms; never past the call's 10-s deadline); only one refused on every attempt is shed. Locust's exit code is
1 (`--exit-code-on-error`) when any call failed, a user raised, or no call was answered
(`outcomes.run_failure`), and 0 otherwise — however many calls were shed.

Users (run one or several; `MixedUser` is the realistic blend):
- `InteractiveUser`: an app classifying one digit at a time, tight SLO (`slo_ms` 15).
- `BatchJobUser`: a batch job sending 16 digits per call with a loose SLO (200 ms).
- `EmbeddingUser`: an embedding service, 1–4 sentences per call to `minilm`, SLO 100 ms.
- `MixedUser`: 60 % interactive, 25 % batch, 15 % embedding calls.
`--slo-ms MS` (or LOCUST_SLO_MS) sends that `slo_ms` on every call instead of each user's
own; the server alone validates it.

Every `digits` answer is scored against the image's true label; at the end the calls
answered, shed and failed, the retries, and the share of correct answers are printed and
written next to Locust's CSV files as `<csv prefix>_summary.json` (see `make loadtest`).
This file never starts a server.

Against a server with TLS or tokens (README: Security), set SLIMSERVE_CLIENT_TLS_CA (and
SLIMSERVE_CLIENT_TLS_CERT/_KEY for mutual TLS) and SLIMSERVE_TOKEN or SLIMSERVE_TOKEN_FILE.
"""

from __future__ import annotations

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel: gRPC must cooperate with gevent

import collections  # noqa: E402 - after init_gevent on purpose
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import User, between, events, task  # noqa: E402
from locust.argument_parser import LocustArgumentParser  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import WorkerRunner  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc  # noqa: E402

from loadtest.messages import digits_request, minilm_request  # noqa: E402
from loadtest.outcomes import (  # noqa: E402
    ANSWERED_TYPE,
    RETRY_POLICY,
    RETRYABLE_CODES,
    SHED_TYPE,
    RetryPolicy,
    run_failure,
    shed_name,
)
from slimserve.server.transport.tls import ClientSecurity  # noqa: E402
from slimserve.variants.data import documentation_sentences, load_digits_split, minilm_tokenizer  # noqa: E402

log = logging.getLogger(__name__)
TOKENS = 32  # pad every sentence to one length so that the server can batch calls together
CALL_TIMEOUT_S = 10.0  # every call's deadline, its retries and their pauses included
DIGITS = load_digits_split()[1]
assert DIGITS.labels is not None
SENTENCES = documentation_sentences()[:512]
TOKENIZER = minilm_tokenizer(max_tokens=TOKENS)
SECURITY = ClientSecurity.from_environment()  # SLIMSERVE_CLIENT_TLS_* and SLIMSERVE_TOKEN[_FILE]
# init_gevent made gevent's loop before the data above loaded (11–15 s on a busy 2-core
# machine), and the loop's clock stands still until the loop runs: Locust's --run-time
# timer, armed on that stale clock, fired as much early (`-t 30s` ran 15 s; `-t 4s`, none).
gevent.get_hub().loop.update_now()
# In this process: digits rows answered / correct, calls per user class, retries, failures
# per status code (with --worker processes, each worker's own; Locust's statistics are whole).
SCORES: Counter[str] = Counter()


@events.init_command_line_parser.add_listener
def _arguments(parser: LocustArgumentParser, **_: Any) -> None:
    parser.add_argument(
        "--slo-ms", type=float, default=None, env_var="LOCUST_SLO_MS",
        help="send this slo_ms (ms) on every call instead of each user class's own (15, 200, 100)",
    )  # fmt: skip


class _AttemptDetails(
    collections.namedtuple(
        "_AttemptDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """A call's details with the time left before its deadline: what one attempt gets."""


def _attempt(details: grpc.ClientCallDetails, timeout_s: float | None) -> grpc.ClientCallDetails:
    return _AttemptDetails(
        details.method, timeout_s, details.metadata, details.credentials,
        getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
    )  # fmt: skip


def _stated_slo_ms(request: pb.ModelInferRequest) -> float | None:
    """The `slo_ms` parameter the request carries (a double or an integer), or None."""
    if "slo_ms" not in request.parameters:
        return None
    parameter = request.parameters["slo_ms"]
    return float(getattr(parameter, parameter.WhichOneof("parameter_choice") or "double_param"))


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Runs every unary call under the retry policy and reports it to Locust once, as its
    outcome (module docstring): answered, shed or failed, with the whole call's time."""

    def __init__(self, environment: Environment, policy: RetryPolicy = RETRY_POLICY) -> None:
        self.environment = environment
        self.policy = policy
        self.rng = random.Random()  # the pauses' jitter

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        started = time.perf_counter()
        outcome, retries = self._attempts(continuation, client_call_details, request, started)
        SCORES["retries"] += retries
        error = outcome.exception()
        request_type, exception, length = ANSWERED_TYPE, None, 0
        if error is None:
            response = outcome.result()
            length = response.ByteSize()
            name = f"{request.model_name}/{response.parameters['variant'].string_param or response.model_version}"
            SCORES["answered_after_retries"] += bool(retries)
        elif isinstance(error, grpc.RpcError) and error.code() in RETRYABLE_CODES:
            request_type = SHED_TYPE
            name = shed_name(request.model_name, request.model_version, _stated_slo_ms(request))
        else:
            exception, name = error, f"{request.model_name}/{request.model_version or 'routed'}"
            code = error.code().name if isinstance(error, grpc.RpcError) else type(error).__name__
            SCORES[f"failed:{code}"] += 1
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=(time.perf_counter() - started) * 1e3,
            response_length=length,
            exception=exception,
            context={"retries": retries},
        )
        return outcome

    def _attempts(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any, started: float
    ) -> tuple[Any, int]:
        """The last attempt's outcome and how many retries came before it: a call refused
        UNAVAILABLE is tried again after the policy's pause, while it allows one."""
        deadline = None if details.timeout is None else started + details.timeout
        retries = 0
        while True:
            left_s = None if deadline is None else deadline - time.perf_counter()
            outcome = continuation(_attempt(details, left_s), request)
            error = outcome.exception()
            if not (isinstance(error, grpc.RpcError) and error.code() in RETRYABLE_CODES):
                return outcome, retries
            left_s = None if deadline is None else deadline - time.perf_counter()
            pause_s = self.policy.pause_s(retries + 1, left_s, self.rng)
            if pause_s is None:
                return outcome, retries
            retries += 1
            gevent.sleep(pause_s)


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
        self.slo_override_ms = slo_override_ms(environment)

    def _call(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse | None:
        SCORES[f"calls:{type(self).__name__}"] += 1
        try:
            return self.stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError:
            return None  # already reported to Locust by the interceptor (shed or failed)

    def _slo_ms(self, own_ms: float) -> float:
        return own_ms if self.slo_override_ms is None else self.slo_override_ms

    def classify(self, rows: int, slo_ms: float) -> None:
        picked = self.rng.choice(len(DIGITS.labels), size=rows, replace=False)  # type: ignore[arg-type]
        response = self._call(digits_request(DIGITS.inputs["images"][picked], slo_ms=self._slo_ms(slo_ms)))
        if response is not None:
            logits = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(rows, -1)
            SCORES["digits_rows"] += rows
            SCORES["digits_correct"] += int((logits.argmax(axis=1) == DIGITS.labels[picked]).sum())  # type: ignore[index]

    def embed(self, sentences: int, slo_ms: float) -> None:
        picked = [SENTENCES[int(i)] for i in self.rng.integers(0, len(SENTENCES), size=sentences)]
        tokens = TOKENIZER(picked, pad_to=TOKENS)
        self._call(minilm_request(tokens["input_ids"], tokens["attention_mask"], slo_ms=self._slo_ms(slo_ms)))


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


def slo_override_ms(environment: Environment) -> float | None:
    """`--slo-ms` (LOCUST_SLO_MS), or None: each user class states its own SLO."""
    value = getattr(environment.parsed_options, "slo_ms", None)
    return None if value in (None, "") else float(value)  # the web UI's form sends text


def outcome_counts(environment: Environment) -> tuple[int, int, int]:
    """(answered, shed, failed) calls, from Locust's statistics (whole, with workers too)."""
    answered = shed = failed = 0
    for (_, request_type), entry in environment.stats.entries.items():
        if request_type == SHED_TYPE:
            shed += entry.num_requests
        else:
            answered += entry.num_requests - entry.num_failures
            failed += entry.num_failures
    return answered, shed, failed


def summary(environment: Environment) -> dict[str, Any]:
    """Calls by outcome, retries, per-variant p50/p95, calls per user class, and the share
    of correct digits answers. `requests` counts calls, once each however many attempts."""
    total = environment.stats.total
    entries = sorted(environment.stats.entries.items())
    per_name = {
        name: {"requests": entry.num_requests, "failures": entry.num_failures,
               "p50_ms": entry.get_response_time_percentile(0.5), "p95_ms": entry.get_response_time_percentile(0.95)}
        for (name, request_type), entry in entries if request_type != SHED_TYPE
    }  # fmt: skip
    answered, shed, failed = outcome_counts(environment)
    rows = SCORES["digits_rows"]
    return {
        "requests": total.num_requests,
        "answered": answered,
        "shed": shed,
        "failures": total.num_failures,
        "run_failure": run_failure(answered, shed, failed),
        "retries": SCORES["retries"],
        "answered_after_retries": SCORES["answered_after_retries"],
        "requests_per_s": total.total_rps,
        "slo_ms_override": slo_override_ms(environment),
        "retry_policy": asdict(RETRY_POLICY),
        "per_variant": per_name,
        "shed_per_name": {name: entry.num_requests for (name, kind), entry in entries if kind == SHED_TYPE},
        "failures_by_code": {k.removeprefix("failed:"): v for k, v in SCORES.items() if k.startswith("failed:")},
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
        print(f"\nslimserve: {result['requests']} calls: {result['answered']} answered, {result['shed']} shed "
              f"(UNAVAILABLE on each of up to {RETRY_POLICY.max_attempts} attempts; not failures), "
              f"{result['failures']} failed; {result['retries']} retries; {result['requests_per_s']:.1f} calls/s; "
              f"digits answers correct: {'n/a' if share is None else f'{share:.2%}'} of "
              f"{result['digits_rows_scored']} images")  # fmt: skip
        for name, row in result["per_variant"].items():
            p50, p95 = row["p50_ms"], row["p95_ms"]
            print(f"  {name:<20} {row['requests']:>7} calls  p50 {p50:>6.0f} ms  p95 {p95:>6.0f} ms")
        for name, count in result["shed_per_name"].items():
            print(f"  shed {name:<28} {count:>7} calls")


@events.quitting.add_listener
def _exit_code(environment: Environment, **_: Any) -> None:
    """Fail a run that answered nothing (`outcomes.run_failure`); Locust itself fails one
    with a failed call. The master (or the only process) decides: a worker sees its share."""
    if isinstance(environment.runner, WorkerRunner) or environment.process_exit_code is not None:
        return
    reason = run_failure(*outcome_counts(environment))
    if reason is not None:
        log.error("slimserve: the run fails: %s", reason)
        options = environment.parsed_options
        environment.process_exit_code = options.exit_code_on_error if options is not None else 1
