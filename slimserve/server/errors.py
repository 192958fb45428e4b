"""Domain errors of the serving path. They know nothing of gRPC: the batcher, the codec,
the sessions, the data plane and the router raise these, and `transport.status` maps them to
status codes at the edge. Each message is safe to show to the caller: a string the caller
sent is quoted through `shown`, so that a megabyte name comes back as a few dozen characters."""

from __future__ import annotations

from collections.abc import Iterable

ECHO_CHARS = 64  # of one caller-supplied string quoted in an error message
ECHO_ITEMS = 8  # of a caller-supplied list (names, dimensions) quoted in an error message


def shown(text: str, limit: int = ECHO_CHARS) -> str:
    """A caller's string as an error message quotes it: `repr` (control characters escaped)
    of its first `limit` characters, and its length when that cut it."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def listed(items: Iterable[object], limit: int = ECHO_ITEMS) -> str:
    """A caller's list as an error message quotes it: its first `limit` items (strings
    through `shown`), and how many there were when that cut it."""
    everything = list(items)
    parts = [shown(item) if isinstance(item, str) else str(item) for item in everything[:limit]]
    if len(everything) > limit:
        parts.append(f"… {len(everything)} in all")
    return f"[{', '.join(parts)}]"


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


class PeerUnavailableError(ServingError):
    """Another worker of this server, which holds what the call needs, could not be reached."""
