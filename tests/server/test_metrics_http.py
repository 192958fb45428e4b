"""The /metrics endpoint (process.metrics_http): bounded connections, a timeout for silent
ones (over TLS too, without stalling the accept loop), and the token check. Real sockets and
prometheus_client's real exposition."""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager

import pytest
from prometheus_client import CollectorRegistry, Counter

from slimserve.server.process.metrics_http import (
    METRICS_MAX_CONNECTIONS,
    MetricsAccess,
    start_metrics_http,
)
from slimserve.server.transport.auth import load_tokens
from slimserve.server.transport.tls import ServerTls
from tests.server.pki import Pki, make_pki

CLIENT_TIMEOUT_S = 30.0  # a generous bound for the client's reads: the server must act first
SERVER_SOCKET_TIMEOUT_S = 0.5
METRICS_TOKEN = "metrics-token-0123456789"
INFERENCE_TOKEN = "inference-token-0123456789"


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("calls", "calls", registry=registry).inc(3)
    return registry


@contextmanager
def _endpoint(
    access: MetricsAccess | None = None,
    tls: ServerTls | None = None,
    socket_timeout_s: float = SERVER_SOCKET_TIMEOUT_S,
) -> Iterator[int]:
    server, thread = start_metrics_http(0, "127.0.0.1", _registry(), access, tls, socket_timeout_s)
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _silent(port: int) -> socket.socket:
    """A connection that sends nothing."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S)
    return connection


def _closed_by_server(connection: socket.socket) -> bool:
    """The server closed it (EOF or reset) without answering."""
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def _scrape(port: int, token: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    scheme = "https" if context else "http"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_S, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def test_connections_beyond_the_bound_are_closed_and_the_endpoint_recovers() -> None:
    # The held connections must outlast the test's steps: no timeout frees a slot meanwhile.
    with _endpoint(socket_timeout_s=CLIENT_TIMEOUT_S) as port:
        held = [_silent(port) for _ in range(METRICS_MAX_CONNECTIONS)]
        try:
            # Every slot is taken by a connection that says nothing: one more is closed on
            # accept, with no thread started for it.
            with closing(_silent(port)) as extra:
                extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                assert _closed_by_server(extra)
        finally:
            for connection in held:
                connection.close()
        status, body = _scrape(port)  # the slots came back
        assert status == 200 and b"calls_total 3.0" in body


def test_a_silent_connection_is_closed_after_the_timeout() -> None:
    with _endpoint() as port, closing(_silent(port)) as silent:
        assert _closed_by_server(silent)  # before the client's own, far longer, timeout
        assert _scrape(port)[0] == 200


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_a_client_that_never_starts_its_tls_handshake_stalls_nobody(pki: Pki) -> None:
    """The handshake runs in the connection's thread under its timeout, not in the accept loop."""
    tls = ServerTls(pki.server_cert, pki.server_key)
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False  # the test certificate names the server, not 127.0.0.1
    with _endpoint(tls=tls) as port, closing(_silent(port)) as silent:
        status, body = _scrape(port, context=context)
        assert status == 200 and b"calls_total" in body
        assert _closed_by_server(silent)


def test_with_tokens_a_scrape_needs_a_metrics_or_management_token() -> None:
    tokens = load_tokens(None, {"metrics": METRICS_TOKEN, "inference": INFERENCE_TOKEN})
    with _endpoint(MetricsAccess(tokens)) as port:
        assert _scrape(port, METRICS_TOKEN)[0] == 200
        status, body = _scrape(port)
        assert status == 401 and b"calls_total" not in body
        assert _scrape(port, "unknown-token-0123456789")[0] == 401
        status, body = _scrape(port, INFERENCE_TOKEN)
        assert status == 403 and b"calls_total" not in body
    with _endpoint(MetricsAccess()) as port:  # authentication off: open, as the gRPC port is
        assert _scrape(port)[0] == 200
