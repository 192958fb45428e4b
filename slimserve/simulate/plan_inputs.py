"""What `slimserve plan` reads: the SLO mix, the arrival trace (a CSV or a rate), lists of numbers.

Every bad input raises PlanError with a message that names the flag, or the file and line,
and what would be accepted; the CLI prints it and exits 2.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from slimserve.simulate.trace import Trace
from slimserve.simulate.workload import MAX_TOKENS


class PlanError(ValueError):
    """An input `slimserve plan` cannot use; the message says which and how to fix it."""


@dataclass(frozen=True)
class SloMix:
    """The traffic's SLO classes: (slo_ms, share of calls), shares summing to 1."""

    classes: tuple[tuple[float, float], ...]

    @classmethod
    def parse(cls, text: str) -> SloMix:
        """'55:0.7,183:0.3' (70 % of calls with 55 ms, 30 % with 183 ms); '100' alone: every call."""
        classes = []
        for part in text.split(","):
            slo, _, share = part.strip().partition(":")
            try:
                pair = (float(slo), float(share) if share else 1.0)
            except ValueError:
                raise PlanError(f"--slo-ms: '{part.strip()}' is not SLO_MS:SHARE (e.g. 55:0.7,183:0.3)") from None
            if not (pair[0] > 0 and 0 < pair[1] <= 1):
                raise PlanError(f"--slo-ms: '{part.strip()}' needs an SLO > 0 ms and a share in (0, 1]")
            classes.append(pair)
        if abs(sum(s for _, s in classes) - 1.0) > 1e-6:
            raise PlanError(f"--slo-ms: the shares of '{text}' sum to {sum(s for _, s in classes):g}, not 1")
        return cls(tuple(classes))

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """The SLO (ms) of each of `count` calls."""
        slos = np.array([slo for slo, _ in self.classes])
        return slos[rng.choice(len(slos), size=count, p=[share for _, share in self.classes])]

    def describe(self) -> str:
        return ", ".join(f"{share:.0%} of calls {slo:g} ms" for slo, share in self.classes)


# -- traffic --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """The arrivals to replay: a trace (its windows are compressed to each load's rate), the
    rate of the cores question (req/s), and where it came from."""

    trace: Trace
    rate_rps: float
    source: str
    azure: bool = False  # the Azure trace's format: its attribution goes with any figure


def read_trace_csv(path: Path, tokens: int = MAX_TOKENS) -> tuple[Trace, bool]:
    """A CSV of arrival times: the Azure LLM inference trace's (TIMESTAMP as an ISO date,
    ContextTokens) or one `timestamp_s` column (seconds; every input `tokens` long). Returns
    the trace and whether it is in the Azure format; a bad row raises PlanError naming its line."""
    if not path.is_file():
        raise PlanError(f"{path}: arrival trace not found")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        azure = "TIMESTAMP" in columns
        if not azure and "timestamp_s" not in columns:
            raise PlanError(
                f"{path}:1: expected a 'timestamp_s' column (seconds) or the Azure trace's TIMESTAMP and "
                f"ContextTokens, found {columns or 'no header'}"
            )
        stamps, lengths = [], []
        for row in reader:
            line = reader.line_num
            try:
                if azure:
                    # The trace's timestamps carry 7 fractional digits; datetime takes 6.
                    stamps.append(datetime.fromisoformat((row["TIMESTAMP"] or "")[:26]).timestamp())
                    lengths.append(int(row.get("ContextTokens") or tokens))
                else:
                    stamps.append(float(row["timestamp_s"] or ""))
                    lengths.append(tokens)
            except (ValueError, TypeError):
                raise PlanError(f"{path}:{line}: not an arrival time: {dict(row)}") from None
            if not math.isfinite(stamps[-1]):
                raise PlanError(f"{path}:{line}: not a finite arrival time: {dict(row)}")
    if len(stamps) < 2:
        raise PlanError(f"{path}: an arrival trace needs at least 2 rows, found {len(stamps)}")
    order = np.argsort(np.array(stamps), kind="stable")
    offsets = np.array(stamps)[order]
    if offsets[-1] - offsets[0] <= 0:
        raise PlanError(f"{path}: every arrival has the same time; a trace needs a time span")
    return Trace(offsets - offsets[0], np.array(lengths)[order]), azure


def rate_trace(rate_rps: float, process: str, count: int, seed: int, tokens: int = MAX_TOKENS) -> Trace:
    """`count` arrivals at `rate_rps`: evenly spaced (constant) or a Poisson process."""
    if process == "constant":
        gaps = np.full(count - 1, 1.0 / rate_rps)
    else:
        gaps = np.random.default_rng(seed).exponential(1.0 / rate_rps, size=count - 1)
    return Trace(np.concatenate([[0.0], np.cumsum(gaps)]), np.full(count, tokens))


def parse_numbers(text: str, flag: str, integer: bool = False, positive: bool = True) -> tuple[float, ...]:
    """'1,2,4' as numbers; PlanError naming `flag` for anything else."""
    values = []
    for part in text.split(","):
        try:
            value = int(part) if integer else float(part)
        except ValueError:
            kind = "whole numbers" if integer else "numbers"
            raise PlanError(f"{flag}: '{part.strip()}' is not a number (expected {kind} separated by commas)") from None
        if positive and not value > 0:
            raise PlanError(f"{flag}: {part.strip()} must be > 0")
        values.append(value)
    return tuple(values)
