"""Mixed-precision int8 on a tiny graph with real ONNX Runtime: roles, SmoothQuant, int8
embeddings and a precision per role (variants.matmul_roles, smooth, embedding_int8, mixed_int8)."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import onnx
import pytest

from slimserve.repository.hardware import usable_cores
from slimserve.repository.sessions import make_session, run_batched
from slimserve.variants import worker_processes
from slimserve.variants.embedding_int8 import embedding_tables, quantize_embeddings
from slimserve.variants.int8mixed import quantize_int8mixed
from slimserve.variants.matmul_roles import role_of, roles
from slimserve.variants.mixed_int8 import MixedSettings, quantize_mixed
from slimserve.variants.smooth import input_maxima, smooth
from tests.variants.tiny_encoder import ROLES, tiny_encoder, token_rows

UP, DOWN = ROLES


def _outputs(model: onnx.ModelProto | bytes, rows: dict[str, np.ndarray]) -> np.ndarray:
    graph = model if isinstance(model, bytes) else model.SerializeToString()
    return run_batched(make_session(graph, 1), rows)


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _op_counts(graph: bytes) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in onnx.load_from_string(graph).graph.node)


def test_roles_group_a_layers_matmuls_by_name() -> None:
    assert role_of("/layers.11/attention/query/MatMul") == "/layers.*/attention/query/MatMul"
    assert role_of("onnx::MatMul_656") == "onnx::MatMul_656"
    found = roles(tiny_encoder())
    assert list(found) == list(ROLES)
    assert [m.node for m in found[DOWN]] == ["/layers.0/feed_forward/down/MatMul", "/layers.1/feed_forward/down/MatMul"]


def test_smoothing_keeps_the_float_outputs_and_flattens_the_inputs() -> None:
    model, rows = tiny_encoder(), token_rows(64)
    maxima = input_maxima(model, rows)
    smoothed = smooth(model, maxima, alpha=0.8)
    np.testing.assert_allclose(_outputs(smoothed, rows), _outputs(model, rows), rtol=1e-4, atol=1e-4)
    before = maxima["x0"]
    after = input_maxima(smoothed, rows)["x0_smooth"]
    # The planted outlier channel dominated the range; smoothed, the channels are far closer.
    assert before.max() / np.median(before) > 20
    assert after.max() / np.median(after) < before.max() / np.median(before) / 4


def test_smoothing_makes_dynamic_int8_more_precise_on_outliers() -> None:
    model, rows = tiny_encoder(), token_rows(64)
    reference = _outputs(model, rows)
    maxima = input_maxima(model, token_rows(64, seed=2))  # calibration rows, not the scored ones
    plain = _relative_error(_outputs(quantize_mixed(model, MixedSettings()), rows), reference)
    smoothed = _relative_error(_outputs(quantize_mixed(model, MixedSettings(alpha=0.8), maxima), rows), reference)
    assert smoothed < plain * 0.7, (smoothed, plain)


def test_int8_embeddings_are_a_quarter_of_the_table_and_close() -> None:
    model, rows = tiny_encoder(), token_rows(32)
    assert embedding_tables(model) == ["/word/Gather"]
    quantized = quantize_embeddings(model)
    onnx.checker.check_model(quantized)
    tables = {t.name: t for t in quantized.graph.initializer}
    assert "word.weight" not in tables
    assert tables["/word/Gather_int8_codes"].data_type == onnx.TensorProto.INT8
    saved = model.ByteSize() - quantized.ByteSize()
    assert saved > 0.7 * 1024 * 32 * 3  # most of the 3 of every 4 bytes of the table
    assert _relative_error(_outputs(quantized, rows), _outputs(model, rows)) < 0.01


def test_each_role_gets_its_precision() -> None:
    model, rows = tiny_encoder(), token_rows(16)
    maxima = input_maxima(model, rows)
    settings = MixedSettings(by_role=((DOWN, "blockwise"), (UP, "float")), alpha=0.8, block_size=16)
    graph = quantize_mixed(model, settings, maxima)
    ops = _op_counts(graph)
    assert ops["MatMulNBits"] == 2  # the two down projections
    assert ops["MatMul"] == 2  # the two up projections, in float
    assert ops["MatMulInteger"] == 0
    everything = _op_counts(quantize_mixed(model, MixedSettings(embedding_int8=True)))
    assert everything["MatMulInteger"] == 4 and everything["MatMul"] == 0
    assert _relative_error(_outputs(graph, rows), _outputs(model, rows)) < 0.02
    assert settings.label == "d+smooth0.8+block16[feed_forward/down=b,feed_forward/up=f]"


def test_int8mixed_makes_roles_precise_until_the_score_is_met() -> None:
    model, rows = tiny_encoder(), token_rows(32)
    reference = _outputs(model, rows)

    def fidelity(graph: bytes) -> float:
        return 1.0 - _relative_error(_outputs(graph, rows), reference)

    graph, info = quantize_int8mixed(model.SerializeToString(), fidelity, token_rows(32, seed=2), min_score=0.0)
    assert info["settings"]["by_role"] == {}  # met at once: everything dynamic
    start = info["selection_scores"]["all dynamic"]
    every = MixedSettings(default="blockwise", alpha=0.8, embedding_int8=True)
    best = fidelity(quantize_mixed(model, every, input_maxima(model, token_rows(32, seed=2))))
    assert best > start
    target = (start + best) / 2  # half-way to every role blockwise: dynamic alone cannot
    graph, info = quantize_int8mixed(model.SerializeToString(), fidelity, token_rows(32, seed=2), min_score=target)
    assert set(info["settings"]["by_role"].values()) == {"blockwise"}
    assert fidelity(graph) >= target
    assert _op_counts(graph)["MatMulNBits"] == 2 * len(info["settings"]["by_role"])


def test_int8mixed_times_both_kernels_for_its_precise_roles_and_keeps_the_faster() -> None:
    """Given a timing item, the roles made precise are tried in float too; both graphs are
    timed, and the one kept is the faster of those that meet the score (on an AVX2-only CPU
    the float one, on the VNNI EPYC the block kernel: which depends on the chip)."""
    model, rows = tiny_encoder(), token_rows(32)
    reference = _outputs(model, rows)

    def fidelity(graph: bytes) -> float:
        return 1.0 - _relative_error(_outputs(graph, rows), reference)

    calibration = token_rows(32, seed=2)
    maxima = input_maxima(model, calibration)
    start = fidelity(quantize_mixed(model, MixedSettings(alpha=0.8, embedding_int8=True), maxima))
    every = fidelity(quantize_mixed(model, MixedSettings(default="blockwise", alpha=0.8, embedding_int8=True), maxima))
    target = (start + every) / 2
    item = {name: values[:1] for name, values in rows.items()}
    graph, info = quantize_int8mixed(
        model.SerializeToString(), fidelity, calibration, min_score=target, timing_item=item, threads=1
    )
    precise = info["settings"]["by_role"]
    (kept,) = set(precise.values())
    timed = info["batch1_ms"]
    assert len(timed) == 2 and all(p50s["p50_ms"] > 0 for p50s in timed.values())  # block and float graphs
    faster = min(timed, key=lambda label: sum(timed[label].values()))
    assert faster.endswith("=f]") == (kept == "float")
    ops = _op_counts(graph)
    assert ops["MatMulNBits"] == (0 if kept == "float" else 2 * len(precise))
    assert ops["MatMul"] == (2 * len(precise) if kept == "float" else 0)
    assert fidelity(graph) >= target
    assert info["method"].endswith(("float for the roles listed", "(accuracy level 4) for the roles listed"))


def test_int8mixed_graphs_made_in_worker_processes_are_the_ones_made_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """The base graph and each role alone precise are quantized in worker processes, one per
    core; what is scored, in what order, and what is chosen is what one at a time here gives."""
    if usable_cores() < 2:
        pytest.skip("one core: int8mixed quantizes in this process")
    model, rows = tiny_encoder(), token_rows(32)
    reference = _outputs(model, rows)

    def run(cores: int, min_score: float) -> tuple[list[bytes], bytes, dict[str, Any]]:
        scored: list[bytes] = []

        def fidelity(graph: bytes) -> float:
            scored.append(graph)
            return 1.0 - _relative_error(_outputs(graph, rows), reference)

        monkeypatch.setattr(worker_processes, "usable_cores", lambda: cores)
        graph, info = quantize_int8mixed(model.SerializeToString(), fidelity, token_rows(32, seed=2), min_score)
        return scored, graph, info

    start = run(1, 0.0)[2]["selection_scores"]["all dynamic"]  # met at once
    parallel, serial = run(2, start + 1e-6), run(1, start + 1e-6)  # just above it: a role is made precise
    assert len(parallel[0]) >= 1 + len(ROLES)  # the base, each role alone, then the incremental rounds
    assert parallel == serial  # graphs byte for byte in the same order, the same choice and scores
    assert parallel[2]["settings"]["by_role"]
