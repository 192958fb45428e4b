"""Latency profiles: every variant of a model timed side by side, in one interleaved run.

Shared machines are noisy, so variants are never timed one after another: each repetition
calls every variant once, in a rotating order, and the speedup δ = s/s* is the ratio of
medians taken in that same run. The number of repetitions is set from a time budget per
batch size, so a profile of a slow model takes about as long as one of a fast model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from slimserve.repository.format import (
    DATATYPE_DTYPES,
    HardwareFingerprint,
    LatencyStats,
    ModelConfig,
    Profile,
    TensorSpec,
    now,
)
from slimserve.repository.hardware import HardwareTarget, fingerprint, threads_for
from slimserve.repository.sessions import make_session


class ProfileSettings(BaseModel):
    """Latency profiling: batch sizes, time budget per batch size, sequence length for text."""

    model_config = ConfigDict(extra="forbid")

    batch_sizes: list[int] = Field(default=[1, 8, 32], min_length=1)
    seconds_per_batch_size: float = Field(default=3.0, gt=0)
    seq_len: int = Field(default=32, ge=1, description="tokens per item when profiling an encoder")


BatchMaker = Callable[[int], dict[str, np.ndarray]]
MIN_REPS = 5
MAX_REPS = 400
WARMUP_CALLS = 3


def _time_call(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    session.run(None, feed)
    return time.perf_counter() - start


def profile_sessions(
    sessions: dict[str, ort.InferenceSession],
    make_batch: BatchMaker,
    batch_sizes: list[int],
    seconds_per_batch_size: float,
    bars: bool = True,
) -> dict[str, dict[int, LatencyStats]]:
    """Latency per variant per batch size, all variants interleaved. `bars`: a tqdm bar per
    batch size on stderr, for a terminal (a server's log gets none)."""
    names = list(sessions)
    results: dict[str, dict[int, LatencyStats]] = {name: {} for name in names}
    for batch in batch_sizes:
        feed = make_batch(batch)
        estimate = 0.0
        for name in names:
            for _ in range(WARMUP_CALLS):
                elapsed = _time_call(sessions[name], feed)
            estimate += elapsed
        reps = int(np.clip(seconds_per_batch_size / max(estimate, 1e-6), MIN_REPS, MAX_REPS))
        samples: dict[str, list[float]] = {name: [] for name in names}
        for rep in tqdm(range(reps), desc=f"profile batch {batch}", unit="rep", leave=False, disable=not bars):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(_time_call(sessions[name], feed))
        for name in names:
            ms = np.array(samples[name]) * 1e3
            results[name][batch] = LatencyStats(
                p50_ms=float(np.median(ms)), p95_ms=float(np.percentile(ms, 95)), samples=len(ms)
            )
    return results


def build_profiles(
    latencies: dict[str, dict[int, LatencyStats]],
    reference: str,
    label: str,
    hardware: HardwareFingerprint,
    input_note: str,
) -> dict[str, Profile]:
    """One Profile per variant, with δ against `reference` from the same run."""
    measured_at = now()
    profiles = {}
    for name, per_batch in latencies.items():
        speedup = {b: latencies[reference][b].p50_ms / stats.p50_ms for b, stats in per_batch.items()}
        profiles[name] = Profile(
            label=label,
            hardware=hardware,
            measured_at=measured_at,
            input_note=input_note,
            latency=per_batch,
            speedup=speedup,
        )
    return profiles


# Integers are drawn from this window where the tensor's declared range and datatype allow it
# (token ids of a vocabulary beyond the special tokens), else from the bottom of what they allow.
INTEGER_WINDOW = (1000, 2000)
INTEGER_FALLBACK_SPAN = 100
SYNTHETIC_TEXT = "slimserve"  # every element of a BYTES input


def _integers(spec: TensorSpec, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(DATATYPE_DTYPES[spec.datatype])
    info = np.iinfo(dtype)
    low = max(info.min, math.ceil(spec.min_value) if spec.min_value is not None else info.min)
    high = min(info.max, math.floor(spec.max_value) if spec.max_value is not None else info.max)
    if "mask" in spec.name and low <= 1 <= high:
        return np.ones(shape, dtype=dtype)
    start, stop = max(low, INTEGER_WINDOW[0]), min(high, INTEGER_WINDOW[1] - 1)
    if start > stop:  # the window is outside what the tensor takes: the bottom of its range
        start = max(low, 0) if low <= 0 <= high else low
        stop = min(high, start + INTEGER_FALLBACK_SPAN)
    return rng.integers(start, stop, size=shape, endpoint=True, dtype=dtype)


def synthetic_batch(inputs: list[TensorSpec], batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid inputs of the right shape for timing and warm-up: variable dims become `seq_len`;
    a first dimension the graph fixes stays as fixed (a fixed-shape graph takes nothing else).

    Values do not change the work these models do, only shapes do, but they must be values
    the model takes: integers within the tensor's declared range and its datatype's (all
    ones for inputs named like a mask, so that no token is skipped), floats in [0, 1), bools
    at random, BYTES as SYNTHETIC_TEXT (a numpy str array).
    """
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for spec in inputs:
        first = batch if spec.shape[0] == -1 else spec.shape[0]
        shape = [first, *(seq_len if d == -1 else d for d in spec.shape[1:])]
        if spec.datatype == "BYTES":
            # numpy str, not object: ONNX Runtime takes both, and a str array is saved and
            # loaded without pickle (variants.memory measures a session in another process).
            feed[spec.name] = np.full(shape, SYNTHETIC_TEXT)
        elif spec.datatype == "BOOL":
            feed[spec.name] = rng.random(shape) < 0.5
        elif np.dtype(DATATYPE_DTYPES[spec.datatype]).kind in "iu":
            feed[spec.name] = _integers(spec, shape, rng)
        else:
            feed[spec.name] = rng.random(shape).astype(DATATYPE_DTYPES[spec.datatype])
    return feed


def profile_variants(
    graphs: dict[str, bytes],
    config: ModelConfig,
    settings: ProfileSettings,
    target: HardwareTarget,
    threads: int | None = None,
    bars: bool = True,
) -> dict[str, Profile]:
    """Profile every graph on this machine as `target`, all side by side.

    `threads` overrides the target's thread count (a server run with --session-threads);
    `bars` as in `profile_sessions`.
    """
    threads = threads or threads_for(target)
    sessions = {name: make_session(graph, threads) for name, graph in graphs.items()}
    latencies = profile_sessions(
        sessions,
        lambda n: synthetic_batch(config.inputs, n, settings.seq_len),
        settings.batch_sizes,
        settings.seconds_per_batch_size,
        bars,
    )
    note = f"{settings.seq_len} tokens per item" if any(-1 in t.shape[1:] for t in config.inputs) else ""
    return build_profiles(latencies, config.reference_variant, target, fingerprint(threads), note)
