"""Exported graphs compute what their torch source computes, within a stated tolerance."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from slimserve.repository.sessions import make_session
from slimserve.variants.data import load_digits_split, minilm_tokenizer
from slimserve.variants.models import digits
from slimserve.variants.models.encoder import load_minilm
from slimserve.variants.onnx_io import ExportMismatchError, check_export, export_onnx
from slimserve.variants.prune_encoder import prune_encoder

TOLERANCE = 1e-4


def test_digits_cnn_export_matches_torch() -> None:
    _, held_out = load_digits_split()
    model = digits.teacher().eval()
    graph = export_onnx(model, held_out.take(2).inputs, "logits", {"images": {0: "batch"}})
    rows = held_out.take(16).inputs
    expected = model(torch.from_numpy(rows["images"])).detach().numpy()
    (actual,) = make_session(graph, threads=1).run(None, rows)
    assert np.abs(expected - actual).max() <= TOLERANCE


def test_pruned_encoder_export_matches_torch_at_other_shapes() -> None:
    tokens = minilm_tokenizer()(["A short one.", "A somewhat longer sentence about the Python language."])
    model = load_minilm()
    batches = [(torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"]))]
    pruned = prune_encoder(copy.deepcopy(model), batches, heads_per_layer=5, ffn_per_layer=300)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    graph = export_onnx(pruned, {k: v[:1, :4] for k, v in tokens.items()}, "embedding", axes)
    # Exported on a 1×4 example, checked on the full 2×L batch with padding.
    assert check_export(pruned, graph, tokens, TOLERANCE) <= TOLERANCE


def test_check_export_rejects_a_graph_of_another_model() -> None:
    _, held_out = load_digits_split()
    torch.manual_seed(0)
    exported, other = digits.teacher().eval(), digits.teacher().eval()
    graph = export_onnx(exported, held_out.take(2).inputs, "logits", {"images": {0: "batch"}})
    with pytest.raises(ExportMismatchError, match="differs from torch"):
        check_export(other, graph, held_out.take(8).inputs, TOLERANCE)
