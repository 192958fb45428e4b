"""Per-variant cumulative counts and durations, as Triton's ModelStatistics reports them.

Written by `observe.recorder.CallRecorder` (on the event loop), except `in_flight`, which
the data plane counts while a call occupies the variant; read by the ModelStatistics
servicer on the same loop. A variant's statistics live with its hosted
model and carry over a reload that keeps the variant.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VariantStats:
    """Cumulative counts and durations of one variant (nanoseconds, as Triton's protocol)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    compute_input_ns: int = 0  # decoding the request's tensors
    compute_output_ns: int = 0  # encoding the answer
    inference_count: int = 0
    last_inference_ms: int = 0  # wall-clock milliseconds since the epoch
    in_flight: int = 0  # routed here and not answered yet (the data plane counts them)
