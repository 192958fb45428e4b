"""The internal request and result types: numpy arrays and plain values, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class InferenceRequest:
    """A decoded, validated request for one model."""

    model: str
    variant: str  # empty: let the server choose
    inputs: dict[str, np.ndarray]
    parameters: dict[str, bool | int | float | str] = field(default_factory=dict)
    id: str = ""
    outputs: list[str] = field(default_factory=list)  # empty: every output

    @property
    def batch_size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


@dataclass
class InferenceResult:
    """Outputs for one request, with where and how long it ran."""

    outputs: dict[str, np.ndarray]
    variant: str
    queue_ms: float
    compute_ms: float
    batch_size: int  # rows in the session call this request was part of
    device: str = "cpu"
    predicted_ms: float = 0.0  # the router's prediction when it chose the variant
    reason: str = ""  # why this variant (router.policy.REASONS)


@dataclass
class CallRecord:
    """How one inference call went, filled in along the way and counted once, at its end.

    The servicer creates it when the call reaches its handler and sets `code`; the host
    sets `variant` once it has decided. Label values come from the repository, never the caller.
    """

    model: str  # as the caller named it; checked against the repository when counted
    received_s: float  # monotonic
    variant: str = ""
    code: str = "OK"  # a gRPC status code name, CANCELLED and DEADLINE_EXCEEDED included
    caller: str = ""  # who asked, for Feedback (server.auth.caller_of); set only for requests with an id
