"""Structured pruning of the sentence encoder: whole attention heads and FFN neurons.

Importance and compensation follow FLAP (An et al., 2024, "Fluctuation-based Adaptive
Structured Pruning"): a unit's input to the projection after it (the head's context
vector into the attention output projection; the neuron's GELU activation into the FFN
down projection) is measured over real tokens. A unit whose input barely fluctuates
(variance × squared norm of its weight column) can be replaced by its mean, and that is
what happens to the units removed: their mean contribution W[:, j]·E[x_j] is folded into
the projection's bias. Pruning then costs little before any fine-tuning, and the units are
sliced out of the weight matrices, so the pruned model is a smaller dense model, not a
masked one. No labels are needed, which an embedding model does not have.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from slimserve.variants.models.encoder import EncoderLayer, SentenceEncoder

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class InputStats:
    """Mean and variance, over real tokens, of each input feature of a Linear layer."""

    mean: torch.Tensor
    var: torch.Tensor

    def fluctuation(self, linear: nn.Linear) -> torch.Tensor:
        """FLAP's score per input feature: how much the output moves when it is frozen."""
        return self.var * linear.weight.detach().pow(2).sum(dim=0)


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    out = nn.Linear(linear.in_features, len(rows))
    out.weight.data = linear.weight.data[rows].clone()
    out.bias.data = linear.bias.data[rows].clone()
    return out


def _keep_columns(linear: nn.Linear, columns: torch.Tensor, stats: InputStats) -> nn.Linear:
    """Keep input `columns`; fold the removed inputs' mean contribution into the bias."""
    removed = torch.ones(linear.in_features, dtype=torch.bool)
    removed[columns] = False
    out = nn.Linear(len(columns), linear.out_features)
    out.weight.data = linear.weight.data[:, columns].clone()
    out.bias.data = linear.bias.data + linear.weight.data[:, removed] @ stats.mean[removed]
    return out


def _layers(model: SentenceEncoder) -> list[EncoderLayer]:
    return [cast(EncoderLayer, layer) for layer in model.layers]


@torch.no_grad()
def projection_input_stats(model: SentenceEncoder, batches: Iterable[Batch]) -> list[tuple[InputStats, InputStats]]:
    """Per layer: stats of the attention output projection's input and the FFN down projection's."""
    linears = [(layer.attention.out, layer.feed_forward.down) for layer in _layers(model)]
    sums = {id(lin): torch.zeros(lin.in_features, dtype=torch.float64) for pair in linears for lin in pair}
    squares = {key: torch.zeros_like(value) for key, value in sums.items()}
    real: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0][real["mask"]].double()  # [real tokens, features]
        sums[id(module)] += x.sum(dim=0)
        squares[id(module)] += x.pow(2).sum(dim=0)

    handles = [lin.register_forward_pre_hook(hook) for pair in linears for lin in pair]
    tokens = 0
    try:
        for ids, mask in batches:
            real["mask"] = mask.bool()
            model(ids, mask)
            tokens += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()

    def stats(linear: nn.Linear) -> InputStats:
        mean = sums[id(linear)] / max(tokens, 1)
        var = (squares[id(linear)] / max(tokens, 1) - mean.pow(2)).clamp(min=0)
        return InputStats(mean.float(), var.float())

    return [(stats(attention_out), stats(down)) for attention_out, down in linears]


def prune_layer(
    layer: EncoderLayer,
    keep_heads: torch.Tensor,
    keep_neurons: torch.Tensor,
    stats: tuple[InputStats, InputStats],
) -> None:
    """Slice `layer` in place down to the given head and neuron indices (sorted)."""
    attention = layer.attention
    dim = attention.head_dim
    rows = (keep_heads[:, None] * dim + torch.arange(dim)).flatten()
    attention.query = _keep_rows(attention.query, rows)
    attention.key = _keep_rows(attention.key, rows)
    attention.value = _keep_rows(attention.value, rows)
    attention.out = _keep_columns(attention.out, rows, stats[0])
    attention.heads = len(keep_heads)
    block = layer.feed_forward
    block.up = _keep_rows(block.up, keep_neurons)
    block.down = _keep_columns(block.down, keep_neurons, stats[1])


def prune_encoder(
    model: SentenceEncoder,
    batches: Iterable[Batch],
    heads_per_layer: int,
    ffn_per_layer: int,
) -> SentenceEncoder:
    """Keep the `heads_per_layer` and `ffn_per_layer` least replaceable units of every layer."""
    for layer, stats in zip(_layers(model), projection_input_stats(model, batches), strict=True):
        attention, block = layer.attention, layer.feed_forward
        head_scores = stats[0].fluctuation(attention.out).view(attention.heads, attention.head_dim).sum(dim=1)
        neuron_scores = stats[1].fluctuation(block.down)
        keep_heads = head_scores.topk(min(heads_per_layer, attention.heads)).indices.sort().values
        keep_neurons = neuron_scores.topk(min(ffn_per_layer, block.up.out_features)).indices.sort().values
        prune_layer(layer, keep_heads, keep_neurons, stats)
    model.shape.heads = [layer.attention.heads for layer in _layers(model)]
    model.shape.ffn = [layer.feed_forward.up.out_features for layer in _layers(model)]
    return model
