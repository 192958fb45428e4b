"""Domain errors of the serving path. They know nothing of gRPC: the batcher, the codec,
the sessions, the data plane and the router raise these, and `transport.status` maps them to
status codes at the edge. Each message is safe to show to the caller."""

from __future__ import annotations


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
