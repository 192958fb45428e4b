"""Real request arrivals: a production trace, time-compressed to a target rate (pure, no I/O but the read).

The trace the benchmarks use is `../shared/traces/azure_llm_inference_2023_conv.csv`: one
hour of requests to a production inference service in Azure (Patel et al., "Splitwise:
Efficient generative LLM inference using phase splitting", ISCA 2024;
Azure/AzurePublicDataset, CC-BY 4.0 — keep ATTRIBUTION with any figure derived from it).
Its timestamps are arrival times, open loop; its ContextTokens each request's input size.

Compressing time keeps the trace's burstiness (the shape of its gaps) while setting its
mean rate to whatever the capacity under test needs. `loadtest.trace` re-exports this for
the benchmarks, which also know where the shared trace lies.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

ATTRIBUTION = (
    "Arrivals: Azure LLM inference trace 2023 (conversation), Azure/AzurePublicDataset, CC-BY 4.0; "
    "Patel et al., Splitwise, ISCA 2024."
)


@dataclass(frozen=True)
class Trace:
    """Arrival offsets from the first request (seconds) and each request's context tokens."""

    offsets_s: np.ndarray
    context_tokens: np.ndarray

    @classmethod
    def load(cls, path: Path) -> Trace:
        if not path.exists():
            raise SystemExit(f"{path}: arrival trace not found (expected ../shared/traces/ beside the repository)")
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            raise SystemExit(f"{path}: no rows")
        # Timestamps carry 7 fractional digits; datetime takes 6.
        stamps = np.array([datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp() for row in rows])
        order = np.argsort(stamps, kind="stable")
        tokens = np.array([int(row["ContextTokens"]) for row in rows])[order]
        return cls(stamps[order] - stamps[order][0], tokens)

    def __len__(self) -> int:
        return len(self.offsets_s)

    def window(self, start: int, count: int) -> Trace:
        """`count` consecutive arrivals from the `start`-th, offsets from the first of them."""
        if start + count > len(self.offsets_s):
            raise ValueError(f"the trace has {len(self.offsets_s)} arrivals; asked for {start}..{start + count}")
        offsets = self.offsets_s[start : start + count]
        return Trace(offsets - offsets[0], self.context_tokens[start : start + count])

    def window_starts(self, count: int, windows: int) -> list[int]:
        """First arrivals of `windows` windows of `count` arrivals, spread evenly over the
        whole trace (they overlap only if the trace is shorter than windows × count)."""
        last = len(self.offsets_s) - count
        if last < 0:
            raise ValueError(f"the trace has {len(self.offsets_s)} arrivals; a window needs {count}")
        if windows == 1:
            return [0]
        return [round(i * last / (windows - 1)) for i in range(windows)]

    @property
    def mean_rate_rps(self) -> float:
        span = float(self.offsets_s[-1])
        return (len(self.offsets_s) - 1) / span if span > 0 else float("inf")

    def at_rate(self, rate_rps: float) -> np.ndarray:
        """Arrival times (s) compressed so that the mean rate is `rate_rps`."""
        return self.offsets_s * (self.mean_rate_rps / rate_rps)
