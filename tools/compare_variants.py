"""Compare variants of one built model side by side: quality, size, α and batch-1 latency.

Quality, bytes and α come from each variant's manifest (what `slimserve build` measured on the
held-out split); latency is measured here, all variants interleaved in every round
(repository.profile.profile_sessions: each call's order rotates), at batch 1 on a synthetic
item of the model's inputs, with `--threads` ONNX Runtime threads. The latency is the median
over `--rounds` rounds of each round's p50, so that a burst of load from a neighbour on a
shared machine moves one round, not the result; the speedup is the mean of the rounds'
reference-over-variant ratios (paired: both timed in the same round) with its 95 % t-interval.
Prints a Markdown table.

    python tools/compare_variants.py model_repository/digits fp32 int8 qat --rounds 7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from slimserve.repository.format import ModelEntry, load_model
from slimserve.repository.profile import profile_sessions, synthetic_batch
from slimserve.repository.sessions import make_session
from slimserve.simulate.stats import Interval

SEQ_LEN_TOKENS = 32  # an encoder's synthetic sentence: the build's default (ProfileSettings.seq_len)


def round_p50s_ms(
    entry: ModelEntry, names: list[str], threads: int, rounds: int, seconds: float
) -> dict[str, list[float]]:
    """Each variant's batch-1 p50 in each round, in ms, every round interleaved."""
    sessions = {name: make_session(str(entry.candidates[name].onnx_path), threads) for name in names}
    item = synthetic_batch(entry.config.inputs, 1, SEQ_LEN_TOKENS)
    p50s: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        stats = profile_sessions(sessions, lambda _batch: item, [1], seconds, bars=False)
        for name in names:
            p50s[name].append(stats[name][1].p50_ms)
    return p50s


def speedup(reference_ms: list[float], variant_ms: list[float]) -> Interval:
    """The reference's time over the variant's, round by round: mean and 95 % t-interval."""
    return Interval.of([ref / var for ref, var in zip(reference_ms, variant_ms, strict=True)])


def table(entry: ModelEntry, names: list[str], p50s: dict[str, list[float]]) -> str:
    reference = entry.candidates[entry.config.reference_variant].manifest.measurements
    metric = entry.config.quality_metric.name
    rows = [f"| variant | {metric} | other quality | bytes | α (bytes) | p50 batch 1 ms | speedup |", "|---" * 7 + "|"]
    base = p50s.get(entry.config.reference_variant)
    for name in names:
        measured = entry.candidates[name].manifest.measurements
        others = ", ".join(f"{k} {v:.4f}" for k, v in measured.quality.items() if k != metric) or "–"
        gain = speedup(base, p50s[name]) if base else None
        shown = f"{gain.mean:.2f}× ± {gain.half_width:.2f}" if gain else "–"
        rows.append(
            f"| {name} | {measured.quality[metric]:.4f} | {others} | {measured.size_bytes:,} | "
            f"{reference.size_bytes / measured.size_bytes:.1f}× | {np.median(p50s[name]):.3f} | {shown} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model folder of a built repository")
    parser.add_argument("variants", nargs="+", help="variant names (the reference first gives the speedup column)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per round, all variants together")
    args = parser.parse_args(argv)
    entry = load_model(args.model.resolve())
    missing = [name for name in args.variants if name not in entry.candidates]
    if missing:
        parser.error(f"{args.model}: no variant {missing} (built: {', '.join(entry.candidates)})")
    p50s = round_p50s_ms(entry, args.variants, args.threads, args.rounds, args.seconds)
    sys.stdout.write(table(entry, args.variants, p50s) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
