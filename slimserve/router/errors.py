"""Routing errors; `server.transport.status` maps them to gRPC status codes."""

from __future__ import annotations


class RoutingError(Exception):
    """Base class: the message is safe to show to the caller."""


class InvalidHintError(RoutingError):
    """A routing parameter (slo_ms, min_quality, policy) has a wrong type or value."""


class QualityUnreachableError(RoutingError):
    """No variant of the model reaches the requested min_quality."""
