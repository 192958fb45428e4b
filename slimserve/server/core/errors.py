"""Domain errors of the serving path and the one table that maps them to gRPC status codes.

Nothing below the servicer knows about gRPC: the batcher, the codec, the sessions and the
router raise these, and `status_for` turns them into a status code at the edge. Anything else becomes
INTERNAL with a generic message; the details go to the log.
"""

from __future__ import annotations

import grpc

from slimserve.router.errors import InvalidHintError, QualityUnreachableError


class ServingError(Exception):
    """Base class: the message is safe to show to the caller."""


class NotFoundError(ServingError):
    """Unknown model or variant."""


class InvalidInputError(ServingError):
    """A tensor's name, datatype, shape or contents do not match the model."""


class QueueFullError(ServingError):
    """The variant's queue is full; retry later or elsewhere."""


class DeadlineExceededError(ServingError):
    """The request's deadline passed before compute."""


class ShuttingDownError(ServingError):
    """The server is draining and takes no new requests."""


class OverloadedError(ServingError):
    """Admitting the request would make it (and those behind it) miss its SLO: shed now."""


class VariantUnavailableError(ServingError):
    """The variant's batcher has failed and is not serving; another variant or replica can."""


class ModelExecutionError(ServingError):
    """The variant's session failed on this request alone (its batch-mates were answered)."""


class ModelLoadError(ServingError):
    """A model's new version failed to load; the old one (if any) keeps serving."""


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
}

INTERNAL_MESSAGE = "internal error; see the server log"


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) for any exception raised while serving a call."""
    for kind in type(error).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind], str(error)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
