"""Latency profiles: every variant of a model timed side by side, in one interleaved run.

Shared machines are noisy, so variants are never timed one after another: each repetition
calls every variant once, in a rotating order, and the speedup δ = s/s* is the ratio of
medians taken in that same run. The number of repetitions is set from a time budget per
batch size, so a profile of a slow model takes about as long as one of a fast model.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from slimserve.repository.format import HardwareFingerprint, LatencyStats, ModelConfig, Profile, TensorSpec, now
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


def synthetic_batch(inputs: list[TensorSpec], batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the right shape for timing: variable dims become `seq_len`.

    Values do not change the work these models do, only shapes do; integer inputs named
    like a mask are all ones so that no token is skipped.
    """
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in inputs:
        shape = [batch, *(seq_len if d == -1 else d for d in spec.shape[1:])]
        if spec.datatype in ("INT64", "INT32"):
            dtype = np.int64 if spec.datatype == "INT64" else np.int32
            if "mask" in spec.name:
                feed[spec.name] = np.ones(shape, dtype=dtype)
            else:
                feed[spec.name] = rng.integers(1000, 2000, size=shape).astype(dtype)
        else:
            feed[spec.name] = rng.random(shape, dtype=np.float32)
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
