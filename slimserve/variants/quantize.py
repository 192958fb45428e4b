"""Post-training int8 quantization with ONNX Runtime, choosing settings by measured quality.

CNNs get static quantization (QDQ format, activation ranges calibrated on real inputs);
transformers get dynamic quantization (activation ranges computed per call), the usual
choice when activations vary a lot from input to input. Which settings preserve quality
depends on the chip: without VNNI, unsigned 8-bit weights can saturate in VPMADDUBSW, and
per-channel scales help most where weight ranges differ between channels. So each
candidate is built and scored against the fp32 outputs on a *selection* slice of the
training data (never the held-out set); among those that preserve quality, the fastest
on this machine is kept. Where a dynamic graph has BERT self-attention blocks, each
candidate is also built from the graph with attention fused into one operator
(variants.fuse_attention), which ONNX Runtime runs as QAttention.

Dynamic candidates are quantized in worker processes, one per usable core, while this process
scores those already made: ONNX Runtime's quantizer is single-threaded Python (a per-channel
MiniLM candidate: ~3 s to quantize, ~1.3 s to score), so one at a time left a core idle for
most of the int8 step. Each candidate is quantized and scored exactly as before, in the same
order, so the choice is the same. Static candidates (the CNNs here, under a second each) are
quantized in this process: a worker's start-up would cost more than it saves.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from slimserve.repository.hardware import threads_for
from slimserve.repository.profile import profile_sessions
from slimserve.repository.sessions import make_session
from slimserve.variants.fuse_attention import fused_attention
from slimserve.variants.progress import ModelProgress
from slimserve.variants.worker_processes import results_in_order, worker_count

log = logging.getLogger(__name__)

Scorer = Callable[[bytes], float]
# Selection scores this close to the best count as equal quality; speed decides among them.
QUALITY_TIE = 0.002
SPEED_TIE = 0.05
TIMING_SECONDS = 2.0
CALIBRATION_ROWS_PER_CALL = 16


@dataclass(frozen=True)
class QuantCandidate:
    """One combination of quantization settings."""

    per_channel: bool
    reduce_range: bool
    weight_type: str  # "QInt8" | "QUInt8"
    activation_type: str = "QUInt8"
    fused_attention: bool = False  # dynamic only: attention as one QAttention (variants.fuse_attention)

    @property
    def label(self) -> str:
        channel = "per-channel" if self.per_channel else "per-tensor"
        reduce = "reduce-range" if self.reduce_range else "full-range"
        fused = "/fused-attention" if self.fused_attention else ""
        return f"{channel}/{reduce}/w{self.weight_type}/a{self.activation_type}{fused}"


STATIC_CANDIDATES = (
    QuantCandidate(per_channel=True, reduce_range=False, weight_type="QInt8", activation_type="QUInt8"),
    QuantCandidate(per_channel=False, reduce_range=False, weight_type="QInt8", activation_type="QUInt8"),
    QuantCandidate(per_channel=True, reduce_range=True, weight_type="QInt8", activation_type="QUInt8"),
    QuantCandidate(per_channel=True, reduce_range=False, weight_type="QInt8", activation_type="QInt8"),
)
DYNAMIC_CANDIDATES = (
    QuantCandidate(per_channel=False, reduce_range=False, weight_type="QInt8"),
    QuantCandidate(per_channel=True, reduce_range=False, weight_type="QInt8"),
    QuantCandidate(per_channel=True, reduce_range=True, weight_type="QInt8"),
    QuantCandidate(per_channel=True, reduce_range=False, weight_type="QUInt8"),
)


class _ArrayReader(CalibrationDataReader):
    """Feeds calibration rows in small batches, with a progress bar."""

    def __init__(self, inputs: dict[str, np.ndarray], batch_size: int = 16) -> None:
        count = len(next(iter(inputs.values())))
        self._batches = [
            {k: v[start : start + batch_size] for k, v in inputs.items()} for start in range(0, count, batch_size)
        ]
        self._bar = tqdm(total=len(self._batches), desc="calibrate", unit="batch", leave=False)
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self._batches):
            self._bar.close()
            return None
        self._index += 1
        self._bar.update()
        return self._batches[self._index - 1]


def _pre_process(raw: Path, target: Path, symbolic_shapes: bool) -> Path:
    try:
        quant_pre_process(str(raw), str(target), skip_symbolic_shape=not symbolic_shapes)
    except Exception as exc:  # ORT's symbolic shape inference asserts on some graphs (attention)
        log.info("int8: symbolic shape inference failed (%s); quantizing with ONNX shape inference only", exc)
        quant_pre_process(str(raw), str(target), skip_symbolic_shape=True)
    return target


def _quantize(
    source: Path, candidate: QuantCandidate, calibration: dict[str, np.ndarray] | None, work: Path, rows_per_call: int
) -> bytes:
    # The source under a name of its own: ONNX Runtime's quantizer writes a shape-inferred copy
    # beside it (`<stem>-inferred.onnx`) and deletes it after, which candidates quantized at
    # the same time would share. A hard link in the same folder keeps external data beside it.
    slug = candidate.label.replace("/", "_")
    own_source = work / f"{source.stem}.{slug}{source.suffix}"
    os.link(source, own_source)
    source, target = own_source, work / f"{slug}.onnx"
    weight_type = getattr(QuantType, candidate.weight_type)
    if calibration is None:
        quantize_dynamic(
            source,
            target,
            weight_type=weight_type,
            per_channel=candidate.per_channel,
            reduce_range=candidate.reduce_range,
            # Shape inference cannot type the outputs of the fused com.microsoft operators.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT} if candidate.fused_attention else None,
        )
    else:
        quantize_static(
            source,
            target,
            _ArrayReader(calibration, rows_per_call),
            quant_format=QuantFormat.QDQ,
            per_channel=candidate.per_channel,
            reduce_range=candidate.reduce_range,
            weight_type=weight_type,
            activation_type=getattr(QuantType, candidate.activation_type),
            calibrate_method=CalibrationMethod.MinMax,
        )
    return target.read_bytes()


def _quantized(
    sources: dict[bool, Path],
    candidates: tuple[QuantCandidate, ...],
    calibration: dict[str, np.ndarray] | None,
    work: Path,
    rows_per_call: int,
) -> Generator[bytes, None, None]:
    """Each candidate's graph, in the order given: dynamic ones from worker processes, one per
    usable core, which quantize ahead while the caller scores what it has (module docstring)."""
    workers = 1 if calibration is not None else worker_count(len(candidates))
    calls = [(sources[c.fused_attention], c, calibration, work, rows_per_call) for c in candidates]
    return results_in_order(_quantize, calls, workers)


Timings = dict[str, tuple[dict[str, np.ndarray], int]]  # report key → (batch-1 item, threads)


def batch_one_p50s(graphs: dict[str, bytes], timings: Timings) -> dict[str, dict[str, float]]:
    """Each graph's batch-1 p50 for each of `timings` (key → an item and a thread count), all
    graphs timed side by side, one configuration after another: what is faster can differ
    with the thread count and the input's length (fused attention: 6 % faster on two threads
    at 32 tokens, 8 % slower on one, 13 % slower on one at 128)."""
    timed: dict[str, dict[str, float]] = {label: {} for label in graphs}
    for count in sorted({threads for _, threads in timings.values()}, reverse=True):
        sessions = {label: make_session(graph, count) for label, graph in graphs.items()}
        for key, (item, threads) in timings.items():
            if threads != count:
                continue
            latency = profile_sessions(sessions, _always(item), [1], TIMING_SECONDS)
            for label in graphs:
                timed[label][key] = latency[label][1].p50_ms
                log.info("%s: batch-1 p50 %.3f ms (%s)", label, timed[label][key], key)
    return timed


def _always(item: dict[str, np.ndarray]) -> Callable[[int], dict[str, np.ndarray]]:
    return lambda _batch: item


def fastest_of_equal_quality(report: dict[str, dict[str, float]]) -> str:
    """The label `quantize_best` keeps among timed finalists (`report`: label → score and
    p50s): their p50s summed over every configuration timed are the cost, and within SPEED_TIE
    of the cheapest counts as equally fast, where the selection score decides. Summing
    milliseconds weighs each configuration by what a call costs in it: a long input on one
    thread weighs the most, as it does in a served mix."""
    cost_ms = {label: sum(ms for key, ms in r.items() if key.startswith("p50_ms")) for label, r in report.items()}
    cheapest_ms = min(cost_ms.values())
    quick = [label for label, ms in cost_ms.items() if ms <= cheapest_ms * (1 + SPEED_TIE)]
    return max(quick, key=lambda label: report[label]["score"])


def quantize_best(
    fp32_onnx: bytes,
    score: Scorer,
    calibration: dict[str, np.ndarray] | None,
    timing_item: dict[str, np.ndarray],
    candidates: tuple[QuantCandidate, ...] | None = None,
    progress: ModelProgress | None = None,
    calibration_rows_per_call: int = CALIBRATION_ROWS_PER_CALL,
    long_item: dict[str, np.ndarray] | None = None,
) -> tuple[bytes, QuantCandidate, dict[str, dict[str, float]]]:
    """Quantize with every candidate; keep the fastest of those that preserve quality.

    `calibration` given → static QDQ; None → dynamic. `score` compares a graph's outputs
    with fp32's on the selection slice (higher is better). Candidates within
    QUALITY_TIE of the best score are timed side by side at batch 1 on one thread, as the
    server runs each session by default (`make run`: one worker per core, one thread each;
    the edge profile too), on `timing_item` and on `long_item` when given; the best-scoring
    of those within SPEED_TIE of the fastest (p50s summed: `fastest_of_equal_quality`) wins.
    Which settings are fast depends on the chip (VNNI, AMX), the thread count and the input's
    length, so this is measured, not assumed. Returns (graph, settings, {label: {score,
    p50_ms_1_thread[, p50_ms_1_thread_long] (finalists only)}}); `progress`, when given,
    counts the candidates. Calibration feeds `calibration_rows_per_call` rows a call
    (a graph with a fixed first dimension takes exactly that many).
    """
    chosen = candidates or (DYNAMIC_CANDIDATES if calibration is None else STATIC_CANDIDATES)
    graphs: dict[str, tuple[bytes, QuantCandidate]] = {}
    report: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="slimserve-quant-") as tmp:
        work = Path(tmp)
        (work / "raw.onnx").write_bytes(fp32_onnx)
        sources = {False: _pre_process(work / "raw.onnx", work / "fp32.onnx", symbolic_shapes=calibration is not None)}
        fused = fused_attention(fp32_onnx) if calibration is None else None
        if fused is not None:
            (work / "fused_raw.onnx").write_bytes(fused)
            sources[True] = _pre_process(work / "fused_raw.onnx", work / "fused.onnx", symbolic_shapes=False)
            chosen = tuple(chosen) + tuple(
                replace(candidate, fused_attention=True) for candidate in chosen if not candidate.fused_attention
            )
        chosen = tuple(candidate for candidate in chosen if candidate.fused_attention in sources)
        if progress is not None:
            progress.loop(len(chosen), unit="candidate")
        with closing(_quantized(sources, chosen, calibration, work, calibration_rows_per_call)) as made:
            for candidate, graph in zip(chosen, made, strict=True):
                graphs[candidate.label] = (graph, candidate)
                report[candidate.label] = {"score": score(graph)}
                log.info("int8 %s: selection score %.4f", candidate.label, report[candidate.label]["score"])
                if progress is not None:
                    progress.tick()
    best_score = max(r["score"] for r in report.values())
    finalists = [label for label, r in report.items() if r["score"] >= best_score - QUALITY_TIE]
    if len(finalists) == 1:
        return graphs[finalists[0]][0], graphs[finalists[0]][1], report
    one = threads_for("edge")
    timings = {"p50_ms_1_thread": (timing_item, one)}
    if long_item is not None:
        timings["p50_ms_1_thread_long"] = (long_item, one)
    timed = batch_one_p50s({label: graphs[label][0] for label in finalists}, timings)
    for label, p50s in timed.items():
        report[label].update(p50s)
    best = fastest_of_equal_quality({label: report[label] for label in finalists})
    return graphs[best][0], graphs[best][1], report
