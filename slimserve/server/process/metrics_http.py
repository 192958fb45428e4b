"""The /metrics endpoint: prometheus_client's exposition behind a bounded server and a token.

prometheus_client's own `start_http_server` starts a thread for every connection, waits on a
silent one for ever and answers anyone. Inside a serving process that is a way to take
threads and memory from the server, and it exposes what ModelStatistics keeps behind the
management token. This endpoint differs in three ways:

- **bounded**: at most `METRICS_MAX_CONNECTIONS` connections are served at once; one more is
  closed at once, without a thread (Prometheus scrapes one at a time; a handful covers a
  second scraper and a person with curl);
- **timed out**: a connection that does not send its request (or, over TLS, finish its
  handshake, which runs in the connection's thread, never in the accept loop) within
  `METRICS_SOCKET_TIMEOUT_S` is closed;
- **authenticated** when the gRPC port is: a scrape must send `Authorization: Bearer <token>`
  with a token of the `metrics` or `management` group (transport.auth); without one it is
  answered 401, with a token of neither group 403. With authentication off it is open.

Thread: the accept loop runs in one daemon thread, each connection in one more (at most
`METRICS_MAX_CONNECTIONS`); they read only the immutable `MetricsAccess` and the registry,
whose collectors take their own snapshots.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler

from slimserve.server.process.settings import Settings, token_table
from slimserve.server.transport.auth import MANAGEMENT, METRICS, TokenTable, load_tokens, token_of
from slimserve.server.transport.tls import ServerTls

log = logging.getLogger(__name__)

METRICS_MAX_CONNECTIONS = 8  # connections served at once; more are closed on accept
METRICS_SOCKET_TIMEOUT_S = 10.0  # a connection's handshake, request and each write must finish within this
SCRAPE_GROUPS = frozenset({METRICS, MANAGEMENT})


@dataclass(frozen=True)
class MetricsAccess:
    """Who may read /metrics: anyone (an empty table), or a token granting a scrape group."""

    tokens: TokenTable = field(default_factory=TokenTable)

    @classmethod
    def of(cls, settings: Settings) -> MetricsAccess:
        """A worker's loopback endpoint takes its supervisor's scrape token alone; any other
        takes the server's tokens of the scrape groups (none: open, as the gRPC port is)."""
        if settings.worker_scrape_token is not None:
            return cls(load_tokens(None, {METRICS: settings.worker_scrape_token.get_secret_value()}))
        return cls(token_table(settings))

    def refusal(self, authorization: str | None) -> tuple[int, str] | None:
        """None if a request with this `Authorization` header may scrape, else (status, why)."""
        if not self.tokens.enabled:
            return None
        token = token_of(authorization)
        granted = self.tokens.groups_of(token) if token else None
        if granted is None:
            why = "no bearer token" if token is None else "an unknown token"
            return 401, f"{why}: send 'Authorization: Bearer <token>' with a token of the metrics or management group"
        if not granted & SCRAPE_GROUPS:
            return 403, f"this token grants {sorted(granted)}, not the metrics or management group"
        return None


def metrics_tls(settings: Settings, tls: ServerTls | None) -> ServerTls | None:
    """The gRPC port's TLS files under --metrics-tls, else None (plain HTTP)."""
    return tls if settings.metrics_tls else None


def _ssl_context(tls: ServerTls) -> ssl.SSLContext:
    """An HTTPS server context from the gRPC port's files (mutual when it has a client CA)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.client_ca is not None:
        context.load_verify_locations(str(tls.client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _BoundedServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that serves at most `METRICS_MAX_CONNECTIONS` connections at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[MetricsHandler], family: socket.AddressFamily) -> None:
        self.address_family = family
        self._slots = threading.BoundedSemaphore(METRICS_MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("/metrics: %d connections already open; closing one more from %s",
                        METRICS_MAX_CONNECTIONS, client_address[0])  # fmt: skip
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out, failed its TLS handshake or went away: its connection is
        # closed; socketserver's default would print a traceback to stderr for each.
        log.debug("/metrics: connection from %s failed", client_address[0], exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _handler(registry: CollectorRegistry, access: MetricsAccess, socket_timeout_s: float) -> type[MetricsHandler]:
    base = MetricsHandler.factory(registry)

    class Handler(base):  # type: ignore[misc, valid-type]
        """prometheus_client's exposition, after the token check, with a socket timeout."""

        timeout = socket_timeout_s

        def setup(self) -> None:
            super().setup()  # sets the timeout on the connection
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.do_handshake()

        def do_GET(self) -> None:
            refused = access.refusal(self.headers.get("Authorization"))
            if refused is None:
                super().do_GET()
                return
            status, why = refused
            body = f"{why}\n".encode()
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="slimserve metrics"')
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # prometheus_client's handler is silent too; refusals are counted by nobody's scrape

    return Handler


def start_metrics_http(
    port: int,
    host: str,
    registry: CollectorRegistry,
    access: MetricsAccess | None = None,
    tls: ServerTls | None = None,
    socket_timeout_s: float = METRICS_SOCKET_TIMEOUT_S,
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve `registry` on host:port (0: any free port) in a daemon thread; the server and its
    thread, as prometheus_client.start_http_server returns them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = _BoundedServer((host, port), _handler(registry, access or MetricsAccess(), socket_timeout_s), family)
    if tls is not None:
        # The handshake is left to the connection's own thread (first read, under its timeout):
        # a client that connects and says nothing must not stall the accept loop.
        server.socket = _ssl_context(tls).wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
