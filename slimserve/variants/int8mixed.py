"""The `int8mixed` graph step: smoothed dynamic int8, precise int8 where it is needed.

What the search (variants.search) found on minilm, made cheap enough for every build: the
parent is smoothed (α = ALPHA, variants.smooth) with its embedding table in int8, every
MatMul in dynamic int8; then, while the selection score is below `min_score`, the MatMul
roles are made `blockwise` (variants.mixed_int8) one more at a time, those that buy the
most score per weight first (each measured alone once). On minilm (held-out, AMD EPYC,
AVX-512 VNNI): the feed-forward `down` role alone → retrieval agreement 0.973 at ~1.9× fp32
and 23 MB (int8: 0.90 at ~2×). Cost: (roles + a few) quantize-and-score rounds on the
selection rows, the base and the roles alone quantized in worker processes while this one scores
(variants.worker_processes): 43-51 s for minilm on the AVX2-only EPYC's two cores, 56-62 s
one at a time (docs/variants.md).

Which kernel makes a role precise fast depends on the chip: given a `timing_item`, the roles
chosen are also tried in float (at least as precise), both graphs are timed side by side at
batch 1, and the faster is kept. On an AVX2-only EPYC, without VNNI, the block kernel was
the slower: minilm's three precise roles (attention key and out, feed-forward down) in float
ran 1.05× fp32 against 0.96× in the block kernel (docs/variants.md).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from slimserve.repository.hardware import threads_for, usable_cores
from slimserve.variants.matmul_roles import roles
from slimserve.variants.mixed_int8 import MixedSettings, quantize_mixed
from slimserve.variants.quantize import batch_one_p50s
from slimserve.variants.smooth import input_maxima
from slimserve.variants.worker_processes import results_in_order, worker_count

log = logging.getLogger(__name__)
Scorer = Callable[[bytes], float]
ALPHA = 0.8
# Selection cosine (against the parent) that held-out retrieval agreement ≥ 0.97 needed on
# minilm: 0.9992 gave 0.971-0.973, 0.9983 gave 0.945.
MIN_SELECTION_COSINE = 0.999


def _quantize_mixed_file(parent: Path, settings: MixedSettings, maxima: dict[str, np.ndarray]) -> bytes:
    return quantize_mixed(onnx.load(parent), settings, maxima)


def quantize_int8mixed(
    parent_onnx: bytes,
    score: Scorer,
    calibration: dict[str, np.ndarray],
    min_score: float = MIN_SELECTION_COSINE,
    timing_item: dict[str, np.ndarray] | None = None,
    threads: int = 1,
) -> tuple[bytes, dict[str, Any]]:
    """The graph and what was chosen (module docstring); `score` compares a graph with the
    parent on selection rows, `calibration` (other training rows) gives SmoothQuant its maxima,
    `timing_item` (one row; None: nothing is timed) and `threads` time the precise roles'
    two kernels (variants.quantize.batch_one_p50s)."""
    model = onnx.load_from_string(parent_onnx)
    maxima = input_maxima(model, calibration, threads=usable_cores())
    settings = MixedSettings(alpha=ALPHA, embedding_int8=True)
    weights = {role: sum(m.count for m in found) for role, found in roles(model).items()}
    alone = {role: replace(settings, by_role=((role, "blockwise"),)) for role in weights}
    graphs: dict[str, bytes] = {}
    measured: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="slimserve-int8mixed-") as tmp:
        parent = Path(tmp) / "parent.onnx"
        parent.write_bytes(parent_onnx)
        # The base graph and each role alone precise are made in worker processes, ahead of
        # scoring (variants.worker_processes): the base rarely meets the score (minilm: 0.996
        # for 0.999), and when it does, the role graphs not yet started are cancelled.
        calls = [(parent, each, maxima) for each in (settings, *alone.values())]
        with closing(results_in_order(_quantize_mixed_file, calls, worker_count(len(calls)))) as made:
            graph = next(made)
            measured["all dynamic"] = base = score(graph)
            if base < min_score:
                for role, role_graph in zip(alone, made, strict=True):
                    graphs[role] = role_graph
                    measured[f"{role} blockwise"] = score(role_graph)
    if base < min_score:
        gain = {role: measured[f"{role} blockwise"] - base for role in weights}
        order = sorted(weights, key=lambda role: gain[role] / weights[role], reverse=True)
        for count in range(1, len(order) + 1):
            settings = replace(settings, by_role=tuple((role, "blockwise") for role in order[:count]))
            if count == 1:  # the most gainful role alone: made and scored above
                graph, final = graphs[order[0]], measured[f"{order[0]} blockwise"]
            else:
                graph = quantize_mixed(model, settings, maxima)
                final = score(graph)
            measured[settings.label] = final
            log.info("int8mixed: %s, selection score %.5f", settings.label, final)
            if final >= min_score:
                break
        graphs.clear()
    timed: dict[str, dict[str, float]] = {}
    if timing_item is not None and settings.by_role:
        floated = replace(settings, by_role=tuple((role, "float") for role, _ in settings.by_role))
        float_graph = quantize_mixed(model, floated, maxima)
        measured[floated.label] = score(float_graph)
        # It qualifies as the block graph does (the target met, or as close to it): then speed decides.
        if measured[floated.label] >= min(min_score, measured[settings.label]):
            timings = {"p50_ms": (timing_item, threads)}
            if threads != threads_for("edge"):
                timings["p50_ms_1_thread"] = (timing_item, threads_for("edge"))
            timed = batch_one_p50s({settings.label: graph, floated.label: float_graph}, timings)
            if sum(timed[floated.label].values()) < sum(timed[settings.label].values()):
                graph, settings = float_graph, floated
    precise = {precision for _, precision in settings.by_role}
    kernel = "float" if precise == {"float"} else "MatMulNBits 8-bit (accuracy level 4)"
    return graph, {
        "method": f"SmoothQuant + dynamic int8, {kernel} for the roles listed",
        "settings": settings.to_dict(),
        "min_selection_score": min_score,
        "selection_scores": {k: round(v, 6) for k, v in measured.items()},
        "batch1_ms": {label: {k: round(ms, 3) for k, ms in p50s.items()} for label, p50s in timed.items()},
    }
