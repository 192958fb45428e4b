"""TLS and mutual TLS for the server's ports, and the channel every slimserve client opens.

Server: `--tls-cert` and `--tls-key` (PEM) turn the gRPC port into TLS only; adding
`--tls-client-ca` makes it mutual: a client must present a certificate signed by that CA.
`--metrics-tls` serves /metrics over HTTPS with the same files. A plaintext client cannot
talk to a TLS port at all (the handshake fails), so there is no fallback to configure away.

Clients (`slimserve health`, `slimserve explain`, the Locust users, the benchmarks) take the
same three files from `ClientSecurity`: the CA that signed the server's certificate, and
for mutual TLS their own certificate and key; plus a bearer token (transport.auth) from a file
or `SLIMSERVE_TOKEN`, never a flag value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

CLIENT_ENVIRONMENT = {
    "ca": "SLIMSERVE_CLIENT_TLS_CA",
    "cert": "SLIMSERVE_CLIENT_TLS_CERT",
    "key": "SLIMSERVE_CLIENT_TLS_KEY",
    "token_file": "SLIMSERVE_TOKEN_FILE",
}
TOKEN_VARIABLE = "SLIMSERVE_TOKEN"
TLS_SERVER_NAME_OPTION = "grpc.ssl_target_name_override"


class TlsConfigError(ValueError):
    """A certificate or key file is missing, unreadable or given without its partner."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{what} {path}: {exc.strerror}") from exc
    if b"-----BEGIN" not in data:
        raise TlsConfigError(f"{what} {path}: not a PEM file")
    return data


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate chain and key, and the CA its clients must be signed by (mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_files(cls, cert: Path | None, key: Path | None, client_ca: Path | None) -> ServerTls | None:
        """None when TLS is off; TlsConfigError for half a configuration."""
        if cert is None and key is None:
            if client_ca is not None:
                raise TlsConfigError("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
            return None
        if cert is None or key is None:
            raise TlsConfigError("--tls-cert and --tls-key go together")
        return cls(cert, key, client_ca)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        pair = (_read(self.key, "TLS key"), _read(self.cert, "TLS certificate"))
        client_ca = _read(self.client_ca, "TLS client CA") if self.client_ca else None
        return grpc.ssl_server_credentials(
            [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


@dataclass(frozen=True)
class ClientSecurity:
    """How a client reaches a server: TLS files (all optional) and a bearer token."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None
    server_name: str | None = None  # the name to check the certificate against, if not the address's host

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ, **given: Path | str | None) -> ClientSecurity:
        """What was given (flags), else `SLIMSERVE_CLIENT_TLS_*`, `SLIMSERVE_TOKEN_FILE`, `SLIMSERVE_TOKEN`."""
        values: dict[str, Path | None] = {}
        for field, variable in CLIENT_ENVIRONMENT.items():
            value = given.get(field) or environ.get(variable)
            values[field] = Path(value) if value else None
        token_file = values.pop("token_file")
        token = environ.get(TOKEN_VARIABLE) or None
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as exc:
                raise TlsConfigError(f"token file {token_file}: {exc.strerror}") from exc
        server_name = given.get("server_name")
        return cls(values["ca"], values["cert"], values["key"], token, str(server_name) if server_name else None)

    @property
    def tls(self) -> bool:
        return self.ca is not None or self.cert is not None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata: the bearer token, if any."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise TlsConfigError("a client certificate and its key go together")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "TLS CA") if self.ca else None,
            private_key=_read(self.key, "TLS key") if self.key else None,
            certificate_chain=_read(self.cert, "TLS certificate") if self.cert else None,
        )

    def options(self) -> list[tuple[str, str]]:
        return [(TLS_SERVER_NAME_OPTION, self.server_name)] if self.server_name and self.tls else []

    def channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking channel to `address`, over TLS if any TLS file was given; every call
        carries the token."""
        options = [*options, *self.options()]
        if self.tls:
            channel = grpc.secure_channel(address, self.channel_credentials(), options=options)
        else:
            channel = grpc.insecure_channel(address, options=options)
        return grpc.intercept_channel(channel, _SyncToken(self.metadata())) if self.token else channel

    def aio_channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """An asyncio channel to `address`, over TLS if any TLS file was given; every unary
        call carries the token."""
        options = [*options, *self.options()]
        interceptors = [_AioToken(self.metadata())] if self.token else None
        if self.tls:
            return grpc.aio.secure_channel(
                address, self.channel_credentials(), options=options, interceptors=interceptors
            )
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


def _with_token(
    metadata: Sequence[tuple[str, str | bytes]] | None, token: tuple[tuple[str, str], ...]
) -> list[tuple[str, str | bytes]]:
    given = list(metadata or ())
    return given if any(key == "authorization" for key, _ in given) else [*given, *token]


class _SyncDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _SyncToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds the bearer token to every call of a blocking channel that does not carry one."""

    def __init__(self, token: tuple[tuple[str, str], ...]) -> None:
        self._token = token

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _SyncDetails(  # type: ignore[return-value]
            details.method, details.timeout, _with_token(details.metadata, self._token), details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )  # fmt: skip

    def intercept_unary_unary(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)


class _AioToken(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the bearer token to every unary call of an asyncio channel that does not carry one."""

    def __init__(self, token: tuple[tuple[str, str], ...]) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        metadata = grpc.aio.Metadata(*_with_token(list(details.metadata or ()), self._token))
        new = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return await continuation(new, request)
