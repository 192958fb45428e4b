"""Real request arrivals for benchmarks: the Azure conversation trace beside the repository.

The reading and time compression are `slimserve.simulate.trace` (the simulator replays the
same windows); this module adds where the shared trace lies on these machines. The trace is
`../shared/traces/azure_llm_inference_2023_conv.csv` (Azure/AzurePublicDataset, CC-BY 4.0;
Patel et al., Splitwise, ISCA 2024 — keep ATTRIBUTION with any figure derived from it).
"""

from __future__ import annotations

from pathlib import Path

from slimserve.simulate.trace import ATTRIBUTION, Trace

_TRACE_NAME = Path("shared") / "traces" / "azure_llm_inference_2023_conv.csv"
# ../shared beside the checkout (parents[2]), or one level up for a checkout in a subfolder.
DEFAULT_TRACE = next(
    (p / _TRACE_NAME for p in Path(__file__).resolve().parents[2:4] if (p / _TRACE_NAME).exists()),
    Path(__file__).resolve().parents[2] / _TRACE_NAME,
)

__all__ = ["ATTRIBUTION", "DEFAULT_TRACE", "Trace"]
