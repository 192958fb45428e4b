"""Bearer tokens per API group, checked by one gRPC interceptor before any handler runs.

In the spirit of Triton's restricted protocols, every method belongs to one group:

- `health` — grpc.health.v1, ServerLive, ServerReady, ModelReady: always open, so that
  probes and load balancers work without a secret;
- `inference` — ModelInfer, ModelStreamInfer, ModelMetadata, ServerMetadata, ModelConfig,
  SystemSharedMemoryRegister/Status/Unregister, reflection and Feedback (which scores only
  the caller's own answers);
- `management` — Explain, ListVariants, ModelStatistics, RepositoryIndex,
  RepositoryModelLoad and RepositoryModelUnload, and any method not named here;
- `metrics` — no gRPC method: the HTTP /metrics endpoint (process.metrics_http), which also
  takes a management token, so that Prometheus holds a token that can read and nothing more.

A token grants one or more groups. Tokens come from a file (`--auth-tokens-file`, lines of
`group[,group] token`) or from the environment (`SLIMSERVE_INFERENCE_TOKEN`,
`SLIMSERVE_MANAGEMENT_TOKEN`, `SLIMSERVE_METRICS_TOKEN`), never from a flag, whose value
anyone can read in `ps`. The client sends `authorization: Bearer <token>`. No or an unknown
token → UNAUTHENTICATED; a token without the method's group → PERMISSION_DENIED. Only
SHA-256 digests are kept, every digest is compared in constant time (hmac.compare_digest,
all of them, no early exit), and no token is ever logged. `caller_of` names a caller by its
digest, so that Feedback can score only answers given to the same token.

Thread: the table is immutable once built; the interceptor runs on the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

HEALTH, INFERENCE, MANAGEMENT, METRICS = "health", "inference", "management", "metrics"
GROUPS = (HEALTH, INFERENCE, MANAGEMENT, METRICS)
TOKEN_GROUPS = frozenset({INFERENCE, MANAGEMENT, METRICS})  # the groups a token can grant
TOKEN_ENVIRONMENT = {
    INFERENCE: "SLIMSERVE_INFERENCE_TOKEN",
    MANAGEMENT: "SLIMSERVE_MANAGEMENT_TOKEN",
    METRICS: "SLIMSERVE_METRICS_TOKEN",
}
MIN_TOKEN_CHARS = 16  # shorter secrets are guessable; refused at start-up
CALLER_ID_CHARS = 16  # hex characters of the digest that name a caller

_INFERENCE_SERVICE = "/inference.GRPCInferenceService/"
METHOD_GROUPS: Mapping[str, str] = {
    **{f"{_INFERENCE_SERVICE}{m}": HEALTH for m in ("ServerLive", "ServerReady", "ModelReady")},
    **{
        f"{_INFERENCE_SERVICE}{m}": INFERENCE
        for m in (
            "ModelInfer",
            "ModelStreamInfer",
            "ModelMetadata",
            "ServerMetadata",
            "ModelConfig",
            "SystemSharedMemoryRegister",
            "SystemSharedMemoryStatus",
            "SystemSharedMemoryUnregister",
        )
    },
    # Scored by the token that was answered (observe.feedback), so an application that reports
    # labels needs no right to load or unload models.
    "/slimserve.v1.Management/Feedback": INFERENCE,
}
SERVICE_GROUPS: Mapping[str, str] = {
    "/grpc.health.v1.Health/": HEALTH,
    "/grpc.reflection.v1alpha.ServerReflection/": INFERENCE,
    "/grpc.reflection.v1.ServerReflection/": INFERENCE,
}


class AuthConfigError(ValueError):
    """The token file or environment does not describe a valid token table."""


def group_of(method: str) -> str:
    """The API group of a full method name such as `/inference.GRPCInferenceService/ModelInfer`."""
    if method in METHOD_GROUPS:
        return METHOD_GROUPS[method]
    service = method[: method.rfind("/") + 1]
    return SERVICE_GROUPS.get(service, MANAGEMENT)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenTable:
    """(digest, groups) per known token; empty means authentication is off."""

    entries: tuple[tuple[bytes, frozenset[str]], ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def groups_of(self, token: str) -> frozenset[str] | None:
        """The groups `token` grants, or None if it is unknown. Constant time in the token."""
        presented = _digest(token)
        granted: frozenset[str] | None = None
        for digest, groups in self.entries:  # no early exit: the time says nothing about which matched
            if hmac.compare_digest(presented, digest):
                granted = groups
        return granted


def _token(value: str, where: str) -> str:
    token = value.strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise AuthConfigError(f"{where}: a token must be at least {MIN_TOKEN_CHARS} characters with no spaces")
    return token


def _parse_groups(text: str, where: str) -> frozenset[str]:
    groups = frozenset(g.strip() for g in text.split(","))
    unknown = groups - TOKEN_GROUPS
    if unknown:
        raise AuthConfigError(f"{where}: unknown group(s) {sorted(unknown)}; use {', '.join(sorted(TOKEN_GROUPS))}")
    return groups


def load_tokens(tokens_file: Path | None, group_tokens: Mapping[str, str | None]) -> TokenTable:
    """The token table from the file and one token per group (from the environment, via
    Settings); AuthConfigError names the line or the variable, never the token."""
    granted: dict[str, set[str]] = {}
    if tokens_file is not None:
        try:
            lines = tokens_file.read_text().splitlines()
        except OSError as exc:
            raise AuthConfigError(f"{tokens_file}: cannot read the tokens file: {exc.strerror}") from exc
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{tokens_file}:{number}"
            parts = line.split()
            if len(parts) != 2:
                raise AuthConfigError(f"{where}: expected 'group[,group] token'")  # never echo the line
            groups, token = _parse_groups(parts[0], where), _token(parts[1], where)
            granted.setdefault(token, set()).update(groups)
    for group, value in group_tokens.items():
        if value:
            granted.setdefault(_token(value, TOKEN_ENVIRONMENT[group]), set()).add(group)
    return TokenTable(tuple((_digest(token), frozenset(groups)) for token, groups in granted.items()))


def token_of(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (gRPC metadata or an HTTP header)."""
    if authorization is not None and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an `authorization: Bearer …` header, if the call sent one."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and (token := token_of(value)) is not None:
            return token
    return None


def caller_of(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """Who is calling, as far as answers are concerned: a prefix of its token's digest, '' without one."""
    token = bearer_token(metadata)
    return _digest(token).hex()[:CALLER_ID_CHARS] if token else ""


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler that only refuses, without reading the request. It takes the request as a
    stream whatever the method's shape: a unary handler would first receive the whole body
    (up to the message limit: 48 unauthenticated 60-MiB calls grew the server by 1.6 GB),
    while a stream is read only on demand, so the caller's body stops at HTTP/2's flow-control
    window. The caller sees the same status either way."""

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.stream_unary_rpc_method_handler(refuse)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call's bearer token against its method's group (module docstring)."""

    def __init__(self, table: TokenTable) -> None:
        self._table = table

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        group = group_of(details.method)
        if handler is None or group == HEALTH:
            return handler
        token = bearer_token(details.invocation_metadata)
        granted = self._table.groups_of(token) if token else None
        if granted is None:
            why = "no bearer token" if token is None else "an unknown token"
            message = f"{why}: send 'authorization: Bearer <token>' with a token for the {group} group"
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, message)
        if group not in granted:
            message = f"this token grants {sorted(granted)}, not the {group} group this method needs"
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, message)
        return handler


def server_interceptors(table: TokenTable) -> Sequence[grpc.aio.ServerInterceptor]:
    """The interceptors for `grpc.aio.server`: none at all when authentication is off."""
    return [TokenInterceptor(table)] if table.enabled else []
