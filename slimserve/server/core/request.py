"""The internal request and result types: numpy arrays and plain values, no protobuf."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class InferenceRequest:
    """A decoded, validated request for one model."""

    model: str
    variant: str  # empty: let the server choose
    inputs: dict[str, np.ndarray]
    parameters: Mapping[str, bool | int | float | str] = field(default_factory=dict)
    id: str = ""
    outputs: list[str] = field(default_factory=list)  # empty: every output

    @property
    def batch_size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


@dataclass(frozen=True)
class InferenceResult:
    """Outputs for one request, with where and how long it ran (the data plane adds the
    routing decision by making a copy)."""

    outputs: dict[str, np.ndarray]
    variant: str
    queue_ms: float
    compute_ms: float
    batch_size: int  # rows in the session call this request was part of
    device: str = "cpu"
    predicted_ms: float = 0.0  # the router's prediction when it chose the variant
    reason: str = ""  # why this variant (router.policy.REASONS)
    feedback_ticket: str = ""  # names a remembered classifier answer for Feedback (observe.feedback)
