"""TLS, mutual TLS and bearer tokens per API group, on real servers with a throw-away PKI.

Each row of the matrix (client kind × server mode → outcome) is one test case; the README's
Security table is this list.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from loadtest.messages import digits_request
from loadtest.serving import RunningServer, rss_mib
from slimserve.protos import slimserve_pb2, slimserve_pb2_grpc
from slimserve.server.transport.auth import AuthConfigError, TokenTable, group_of, load_tokens
from slimserve.server.transport.tls import ClientSecurity
from tests.server.pki import Pki, make_pki

TIMEOUT_S = 30
INFERENCE_TOKEN = "inference-token-0123456789"
MANAGEMENT_TOKEN = "management-token-0123456789"
BOTH_TOKEN = "both-groups-token-0123456789"  # from the tokens file: inference and management
OTHER_BOTH_TOKEN = "other-both-token-0123456789"
METRICS_TOKEN = "metrics-token-0123456789"  # the metrics group alone: what Prometheus holds


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(repository: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """TLS (server-authenticated), tokens from the environment and a file, a plaintext health
    port, /metrics over HTTPS."""
    workdir = tmp_path_factory.mktemp("tls-server")
    tokens = workdir / "tokens"
    tokens.write_text(f"# group[,group] token\ninference,management {BOTH_TOKEN}\n"
                      f"management,inference {OTHER_BOTH_TOKEN}\n")  # fmt: skip
    running = RunningServer(
        repository, workdir, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--auth-tokens-file", str(tokens), "--health-port", "0", "--metrics-tls",
        env={"SLIMSERVE_INFERENCE_TOKEN": INFERENCE_TOKEN, "SLIMSERVE_MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
             "SLIMSERVE_METRICS_TOKEN": METRICS_TOKEN},
        client=ClientSecurity(ca=pki.ca),
    )  # fmt: skip
    yield running
    assert running.stop() == 0
    log = running.log_path.read_text()
    assert "(TLS, tokens on;" in log and "SECURITY" not in log  # loopback anyway, and both on
    for token in (INFERENCE_TOKEN, MANAGEMENT_TOKEN, BOTH_TOKEN, OTHER_BOTH_TOKEN, METRICS_TOKEN):
        assert token not in log  # never logged, not even when refused


@pytest.fixture(scope="module")
def mtls_server(repository: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(
        repository, tmp_path_factory.mktemp("mtls-server"), "--tls-cert", str(pki.server_cert),
        "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca),
        client=ClientSecurity(ca=pki.ca, cert=pki.client_cert, key=pki.client_key),
    )  # fmt: skip
    yield running
    assert running.stop() == 0


def _infer(security: ClientSecurity, address: str) -> grpc.StatusCode:
    """The status of one ModelInfer over the transport and with the token `security` says."""
    with security.channel(address) as channel:
        try:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(digits_request(variant="fp32"), timeout=TIMEOUT_S, metadata=security.metadata())
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return, attr-defined]
    return grpc.StatusCode.OK


# (client kind, server, how the client connects, outcome)
TRANSPORT_MATRIX = [
    ("TLS client trusting the CA", "tls", "ca", grpc.StatusCode.OK),
    ("plaintext client", "tls", "plain", grpc.StatusCode.UNAVAILABLE),
    ("TLS client trusting another CA", "tls", "wrong-ca", grpc.StatusCode.UNAVAILABLE),
    ("mTLS client with a certificate from the CA", "mtls", "client-cert", grpc.StatusCode.OK),
    ("TLS client without a certificate", "mtls", "ca", grpc.StatusCode.UNAVAILABLE),
    ("mTLS client with a certificate from another CA", "mtls", "stranger-cert", grpc.StatusCode.UNAVAILABLE),
    ("plaintext client", "mtls", "plain", grpc.StatusCode.UNAVAILABLE),
]


def _client(kind: str, pki: Pki, token: str | None = None) -> ClientSecurity:
    return {
        "plain": ClientSecurity(token=token),
        "ca": ClientSecurity(ca=pki.ca, token=token),
        "wrong-ca": ClientSecurity(ca=pki.other_ca, token=token),
        "client-cert": ClientSecurity(ca=pki.ca, cert=pki.client_cert, key=pki.client_key, token=token),
        "stranger-cert": ClientSecurity(ca=pki.ca, cert=pki.stranger_cert, key=pki.stranger_key, token=token),
    }[kind]


@pytest.mark.parametrize(
    ("client", "mode", "kind", "outcome"), TRANSPORT_MATRIX, ids=[f"{r[1]}: {r[0]}" for r in TRANSPORT_MATRIX]
)
def test_transport_matrix(
    request: pytest.FixtureRequest, pki: Pki, client: str, mode: str, kind: str, outcome: grpc.StatusCode
) -> None:
    server: RunningServer = request.getfixturevalue(f"{mode}_server")
    token = INFERENCE_TOKEN if mode == "tls" else None
    assert _infer(_client(kind, pki, token), server.address) == outcome


# (token, method group, outcome) on the TLS server
TOKEN_MATRIX = [
    ("none", "health", grpc.StatusCode.OK),
    ("none", "inference", grpc.StatusCode.UNAUTHENTICATED),
    ("none", "management", grpc.StatusCode.UNAUTHENTICATED),
    ("unknown", "inference", grpc.StatusCode.UNAUTHENTICATED),
    ("inference", "inference", grpc.StatusCode.OK),
    ("inference", "management", grpc.StatusCode.PERMISSION_DENIED),
    ("management", "inference", grpc.StatusCode.PERMISSION_DENIED),
    ("management", "management", grpc.StatusCode.OK),
    ("both (file)", "inference", grpc.StatusCode.OK),
    ("both (file)", "management", grpc.StatusCode.OK),
]
TOKENS = {"none": None, "unknown": "unknown-token-0123456789", "inference": INFERENCE_TOKEN,
          "management": MANAGEMENT_TOKEN, "both (file)": BOTH_TOKEN}  # fmt: skip


def _call_group(channel: grpc.Channel, group: str, metadata: tuple[tuple[str, str], ...]) -> None:
    if group == "health":
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S, metadata=metadata)
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT_S,
                                                                       metadata=metadata)  # fmt: skip
    elif group == "inference":
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"), timeout=TIMEOUT_S, metadata=metadata)
        stub.ModelInfer(digits_request(variant="fp32"), timeout=TIMEOUT_S, metadata=metadata)
    else:
        management = slimserve_pb2_grpc.ManagementStub(channel)
        management.ListVariants(slimserve_pb2.ListVariantsRequest(), timeout=TIMEOUT_S, metadata=metadata)
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(), timeout=TIMEOUT_S, metadata=metadata
        )


@pytest.mark.parametrize(
    ("token", "group", "outcome"), TOKEN_MATRIX, ids=[f"{r[0]} token → {r[1]}" for r in TOKEN_MATRIX]
)
def test_token_matrix(tls_server: RunningServer, pki: Pki, token: str, group: str, outcome: grpc.StatusCode) -> None:
    security = ClientSecurity(ca=pki.ca, token=TOKENS[token])
    with security.channel(tls_server.address) as channel:
        try:
            _call_group(channel, group, security.metadata())
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            assert "Bearer" in exc.details() or "group" in exc.details()  # type: ignore[attr-defined]
    assert code == outcome


def test_tritonclient_with_ssl_and_a_token(tls_server: RunningServer, mtls_server: RunningServer, pki: Pki) -> None:
    images = np.zeros((2, 1, 28, 28), np.float32)
    tensor = triton.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    client = triton.InferenceServerClient(tls_server.address, ssl=True, root_certificates=str(pki.ca))
    headers = {"authorization": f"Bearer {INFERENCE_TOKEN}"}
    assert client.infer("digits", [tensor], headers=headers).as_numpy("logits").shape == (2, 10)
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.infer("digits", [tensor])
    assert client.is_server_live()  # health group: no token needed
    mutual = triton.InferenceServerClient(
        mtls_server.address, ssl=True, root_certificates=str(pki.ca), private_key=str(pki.client_key),
        certificate_chain=str(pki.client_cert),
    )  # fmt: skip
    assert mutual.infer("digits", [tensor]).as_numpy("logits").shape == (2, 10)


def test_feedback_scores_only_answers_given_to_the_same_token(tls_server: RunningServer, pki: Pki) -> None:
    owner = ClientSecurity(ca=pki.ca, token=BOTH_TOKEN)
    other = ClientSecurity(ca=pki.ca, token=OTHER_BOTH_TOKEN)
    tickets = {}
    for request_id in ("shared-id", "owned-id"):  # the other token's answer under the same id must not collide
        for security in (owner, other):
            request = digits_request(variant="fp32", request_id=request_id)
            with security.channel(tls_server.address) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                response = stub.ModelInfer(request, timeout=TIMEOUT_S, metadata=security.metadata())
            tickets[(security.token, request_id)] = response.parameters["feedback_ticket"].string_param
    feedback = slimserve_pb2.FeedbackRequest(model="digits", request_id="owned-id", labels=[3])
    with other.channel(tls_server.address) as channel:
        management = slimserve_pb2_grpc.ManagementStub(channel)
        assert management.Feedback(feedback, timeout=TIMEOUT_S, metadata=other.metadata()).variant == "fp32"
        with pytest.raises(grpc.RpcError) as scored_twice:  # its own answer is scored once and forgotten
            management.Feedback(feedback, timeout=TIMEOUT_S, metadata=other.metadata())
        assert scored_twice.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        stolen = slimserve_pb2.FeedbackRequest(model="digits", ticket=tickets[(BOTH_TOKEN, "shared-id")], labels=[3])
        with pytest.raises(grpc.RpcError) as not_its_ticket:  # another token's ticket names nothing
            management.Feedback(stolen, timeout=TIMEOUT_S, metadata=other.metadata())
        assert not_its_ticket.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    with owner.channel(tls_server.address) as channel:  # the owner's answers were not the ones scored
        management = slimserve_pb2_grpc.ManagementStub(channel)
        assert management.Feedback(feedback, timeout=TIMEOUT_S, metadata=owner.metadata()).variant == "fp32"
        assert management.Feedback(stolen, timeout=TIMEOUT_S, metadata=owner.metadata()).variant == "fp32"
    shared = slimserve_pb2.FeedbackRequest(model="digits", request_id="shared-id", labels=[3])
    with ClientSecurity(ca=pki.ca, token=INFERENCE_TOKEN).channel(tls_server.address) as channel:
        with pytest.raises(grpc.RpcError) as stranger:  # an inference token may score, but only its own answers
            slimserve_pb2_grpc.ManagementStub(channel).Feedback(
                shared, timeout=TIMEOUT_S, metadata=(("authorization", f"Bearer {INFERENCE_TOKEN}"),)
            )
        assert stranger.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    with ClientSecurity(ca=pki.ca, token=MANAGEMENT_TOKEN).channel(tls_server.address) as channel:
        with pytest.raises(grpc.RpcError) as manager:  # Feedback is an application's call: the inference group
            slimserve_pb2_grpc.ManagementStub(channel).Feedback(
                shared, timeout=TIMEOUT_S, metadata=(("authorization", f"Bearer {MANAGEMENT_TOKEN}"),)
            )
        assert manager.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def test_probes_and_scrapes_of_a_tls_server(tls_server: RunningServer, pki: Pki) -> None:
    """The plaintext health-only port answers health and nothing else; /metrics is HTTPS."""
    assert tls_server.health_port is not None
    with grpc.insecure_channel(f"127.0.0.1:{tls_server.health_port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as other_method:
            stub.ModelInfer(digits_request(variant="fp32"), timeout=TIMEOUT_S)
        assert other_method.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as huge:  # the open plaintext port has the gRPC port's limits, and less
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="x" * (1 << 20)), timeout=TIMEOUT_S
            )
        assert huge.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert tls_server.metrics_url is not None
    https_url = tls_server.metrics_url.replace("http://", "https://")
    context = ssl.create_default_context(cafile=str(pki.ca))

    def scrape_with(token: str | None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(https_url, headers=headers)
        try:
            with urllib.request.urlopen(request, context=context, timeout=TIMEOUT_S) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read()

    # The gRPC port takes tokens, so /metrics does: what ModelStatistics keeps behind the
    # management token is not open on the metrics port.
    for token in (METRICS_TOKEN, MANAGEMENT_TOKEN, BOTH_TOKEN):
        status, body = scrape_with(token)
        assert status == 200 and b"slimserve_requests" in body
    status, body = scrape_with(None)
    assert status == 401 and b"no bearer token" in body and b"slimserve_requests" not in body
    assert scrape_with("not-a-token-0123456789")[0] == 401
    status, body = scrape_with(INFERENCE_TOKEN)
    assert status == 403 and b"slimserve_requests" not in body
    with pytest.raises(OSError):  # plain HTTP to a TLS port gets no metrics
        urllib.request.urlopen(tls_server.metrics_url, timeout=TIMEOUT_S).read()
    with tls_server.client.channel(tls_server.address) as channel:
        with pytest.raises(grpc.RpcError) as metrics_only:  # a metrics token reads /metrics and nothing more
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                pb.ModelStatisticsRequest(), timeout=TIMEOUT_S, metadata=(("authorization", f"Bearer {METRICS_TOKEN}"),)
            )
        assert metrics_only.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def test_plaintext_metrics_beside_a_tls_port_warn_at_start(repository: Path, pki: Pki, tmp_path: Path) -> None:
    running = RunningServer(
        repository, tmp_path, "--host", "0.0.0.0", "--tls-cert", str(pki.server_cert), "--tls-key",
        str(pki.server_key), client=ClientSecurity(ca=pki.ca),
    )  # fmt: skip
    assert running.stop() == 0
    assert "SECURITY: /metrics is plaintext on 0.0.0.0 while the gRPC port has TLS" in running.log_path.read_text()


BODY_MIB = 60  # each unauthenticated body: under the 64-MiB message limit, so only the token refuses it
BODIES = 8
INFLATED_MIB = 400  # a gzip body of ~0.4 MB that inflates to this, past the message limit


def test_refusals_read_no_body_and_compressed_bodies_are_not_inflated(repository: Path, tmp_path: Path) -> None:
    """Issue 23 M2: a call refused for its token is refused before its body is read (HTTP/2
    flow control holds the rest at the client), and a gzip body is refused unread (grpcio
    inflates a whole message before its size check). Both measured in the server's RSS:
    before, 8 refused 60-MiB bodies were all received (RSS grew by about their sum), and the
    gzip body was inflated in full before RESOURCE_EXHAUSTED."""
    running = RunningServer(repository, tmp_path, env={"SLIMSERVE_INFERENCE_TOKEN": INFERENCE_TOKEN})
    try:
        before_mib = rss_mib(running.process.pid)
        options = [("grpc.max_send_message_length", -1)]

        def call(mib: int, token: str | None, compression: grpc.Compression | None = None) -> grpc.StatusCode:
            request = pb.ModelInferRequest(model_name="digits", raw_input_contents=[bytes(mib << 20)])
            metadata = (("authorization", f"Bearer {token}"),) if token else None
            with grpc.insecure_channel(running.address, options=options) as channel:
                try:
                    service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                        request, timeout=120, compression=compression, metadata=metadata
                    )
                except grpc.RpcError as refused:
                    return refused.code()  # type: ignore[attr-defined, no-any-return]
            return grpc.StatusCode.OK

        with ThreadPoolExecutor(BODIES) as pool:
            codes = list(pool.map(lambda _: call(BODY_MIB, None), range(BODIES)))
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * BODIES
        assert call(INFLATED_MIB, INFERENCE_TOKEN, grpc.Compression.Gzip) == grpc.StatusCode.UNIMPLEMENTED
        # Half of what receiving the bodies would take, or inflating the gzip body alone.
        assert rss_mib(running.process.pid) - before_mib < BODIES * BODY_MIB / 2
    finally:
        assert running.stop() == 0


def test_an_exposed_plaintext_server_warns_at_start(repository: Path, tmp_path: Path) -> None:
    running = RunningServer(repository, tmp_path, "--host", "0.0.0.0")
    assert running.stop() == 0
    assert "SECURITY: listening on 0.0.0.0" in running.log_path.read_text()


def test_method_groups() -> None:
    assert group_of("/grpc.health.v1.Health/Check") == "health"
    assert group_of("/inference.GRPCInferenceService/ServerReady") == "health"
    assert group_of("/inference.GRPCInferenceService/ModelInfer") == "inference"
    assert group_of("/inference.GRPCInferenceService/RepositoryModelLoad") == "management"
    assert group_of("/slimserve.v1.Management/Feedback") == "inference"  # the answered token scores
    assert group_of("/slimserve.v1.Management/Explain") == "management"
    assert group_of("/some.Unknown/Method") == "management"  # not listed: the strictest group


def test_token_configuration_errors_never_echo_the_token(tmp_path: Path) -> None:
    bad = tmp_path / "tokens"
    bad.write_text("inference short\n")
    with pytest.raises(AuthConfigError, match=r"tokens:1: a token must be at least 16") as short:
        load_tokens(bad, {})
    assert "short" not in str(short.value).replace("at least", "")
    bad.write_text("admin some-long-token-0123456789\n")
    with pytest.raises(AuthConfigError, match=r"unknown group\(s\) \['admin'\]") as unknown:
        load_tokens(bad, {})
    assert "some-long-token" not in str(unknown.value)
    with pytest.raises(AuthConfigError, match="SLIMSERVE_INFERENCE_TOKEN"):
        load_tokens(None, {"inference": "tiny"})
    assert not load_tokens(None, {}).enabled and TokenTable().groups_of("anything") is None
    table = load_tokens(None, {"inference": INFERENCE_TOKEN, "management": INFERENCE_TOKEN})
    assert table.groups_of(INFERENCE_TOKEN) == {"inference", "management"}


def test_cli_and_locust_reach_a_tls_server_with_a_token(tls_server: RunningServer, pki: Pki, tmp_path: Path) -> None:
    """`slimserve health` and `slimserve explain` take the TLS files as flags and the token
    from a file; the Locust users take both from the environment."""
    token_file = tmp_path / "token"
    token_file.write_text(MANAGEMENT_TOKEN + "\n")
    cli = [sys.executable, "-m", "slimserve.cli"]
    health = subprocess.run([*cli, "health", "--address", tls_server.address, "--tls-ca", str(pki.ca)],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert health.returncode == 0 and health.stdout.strip() == "SERVING", health.stderr
    explain = [*cli, "explain", "digits", "--address", tls_server.address, "--tls-ca", str(pki.ca)]
    refused = subprocess.run(explain, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    answered = subprocess.run([*explain, "--token-file", str(token_file)], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
    assert answered.returncode == 0 and "digits: SLO" in answered.stdout, answered.stderr
    prefix = tmp_path / "locust"
    locust = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless",
         "--host", tls_server.address,
         "-u", "2", "-r", "2", "-t", "3s", "--stop-timeout", "5", "--csv", str(prefix), "--only-summary",
         "InteractiveUser"],
        capture_output=True, text=True, timeout=120, check=False, cwd=Path(__file__).parents[2],
        env={**os.environ, "LOCUST_QUIET_SUMMARY": "1", "SLIMSERVE_CLIENT_TLS_CA": str(pki.ca),
             "SLIMSERVE_TOKEN": INFERENCE_TOKEN},
    )  # fmt: skip
    assert locust.returncode == 0, locust.stderr[-2000:]
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert summary["failures"] == 0 and summary["calls_per_user_class"]["InteractiveUser"] > 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--metrics-tls"], "--metrics-tls serves /metrics with --tls-cert and --tls-key"),
        (["--tls-cert", "missing.crt"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "missing.crt", "--tls-key", "missing.key"], "TLS key missing.key: No such file"),
    ],
)
def test_half_a_tls_configuration_stops_the_server_with_a_clear_message(
    repository: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slimserve.cli", "serve", "--repository", str(repository), "--host", "127.0.0.1",
         "--grpc-port", "0", "--metrics-port", "0", *flags],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr[-1000:]
