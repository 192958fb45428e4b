"""The one table that maps domain errors to gRPC status codes, and the handler wrapper
that applies it. Anything not in the table becomes INTERNAL with a generic message; the
details go to the log.

A domain error's message quotes what the caller sent through `errors.shown`; as a backstop
for any raiser that does not, no message leaves here longer than MAX_MESSAGE_CHARS: its
middle is cut, so the start (what failed) and the end (what is allowed) both stay."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from slimserve.router.errors import InvalidHintError, QualityUnreachableError
from slimserve.server.errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelExecutionError,
    ModelLoadError,
    NotFoundError,
    OverloadedError,
    PeerUnavailableError,
    QueueFullError,
    ShuttingDownError,
    VariantUnavailableError,
)

log = logging.getLogger(__name__)
Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])

# Router errors are domain errors too; they live in router/ because the router raises them.
STATUS_CODES: dict[type[Exception], grpc.StatusCode] = {
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    QueueFullError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    InvalidHintError: grpc.StatusCode.INVALID_ARGUMENT,
    QualityUnreachableError: grpc.StatusCode.FAILED_PRECONDITION,
    ShuttingDownError: grpc.StatusCode.UNAVAILABLE,
    OverloadedError: grpc.StatusCode.UNAVAILABLE,
    VariantUnavailableError: grpc.StatusCode.UNAVAILABLE,
    ModelExecutionError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
    PeerUnavailableError: grpc.StatusCode.UNAVAILABLE,
}

INTERNAL_MESSAGE = "internal error; see the server log"
MAX_MESSAGE_CHARS = 1024  # of an error message sent to the caller (status details)


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message` with its middle cut to at most `limit` characters (module docstring)."""
    if len(message) <= limit:
        return message
    cut = f" …(cut: {len(message)} characters in all)… "
    keep = max(limit - len(cut), 0)
    return message[: keep - keep // 4] + cut + message[len(message) - keep // 4 :]


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) for any exception raised while serving a call."""
    for kind in type(error).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind], bounded(str(error))
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def outcome_of(error: BaseException) -> str:
    """The status code name a call that raised `error` ends with (the metrics' `code` label)."""
    return status_for(error)[0].name


def maps_errors(handler: Handler) -> Handler:
    """Turn domain errors into status codes; anything unexpected into a generic INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except Exception as exc:
            code, message = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("unexpected error in %s", handler.__name__)
            await context.abort(code, message)

    return wrapper  # type: ignore[return-value]
