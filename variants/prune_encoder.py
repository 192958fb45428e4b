"""Structured pruning of the sentence encoder: whole attention heads and FFN neurons.

Importance is measured on activations (no labels needed, which an embedding model does not
have): a head scores the mean L2 norm of what it adds to the residual stream after the
output projection; an FFN neuron scores the mean |GELU activation| times the norm of its
column in the down projection. The least important units are sliced out of the weight
matrices, so the pruned model is a smaller dense model, not a masked one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
from torch import nn

from variants.models.encoder import EncoderLayer, FeedForward, SelfAttention, SentenceEncoder

Batch = tuple[torch.Tensor, torch.Tensor]


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    out = nn.Linear(linear.in_features, len(rows))
    out.weight.data = linear.weight.data[rows].clone()
    out.bias.data = linear.bias.data[rows].clone()
    return out


def _keep_columns(linear: nn.Linear, columns: torch.Tensor) -> nn.Linear:
    out = nn.Linear(len(columns), linear.out_features)
    out.weight.data = linear.weight.data[:, columns].clone()
    out.bias.data = linear.bias.data.clone()
    return out


def _layers(model: SentenceEncoder) -> list[EncoderLayer]:
    return [cast(EncoderLayer, layer) for layer in model.layers]


@torch.no_grad()
def unit_importance(model: SentenceEncoder, batches: Iterable[Batch]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: (head scores [heads], neuron scores [ffn]) averaged over real tokens."""
    heads = [torch.zeros(layer.attention.heads) for layer in _layers(model)]
    neurons = [torch.zeros(layer.feed_forward.up.out_features) for layer in _layers(model)]
    token_count = 0
    hooks = []
    current_mask: dict[str, torch.Tensor] = {}

    def attention_hook(index: int, attention: SelfAttention):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            context = inputs[0]  # [B, S, heads*dim], the input to the output projection
            b, s, _ = context.shape
            per_head = context.view(b, s, attention.heads, attention.head_dim)
            weight = attention.out.weight.view(-1, attention.heads, attention.head_dim)
            contribution = torch.einsum("bshd,ohd->bsho", per_head, weight).norm(dim=-1)
            heads[index] += (contribution * current_mask["m"][..., None]).sum(dim=(0, 1))

        return hook

    def ffn_hook(index: int, block: FeedForward):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            activation = inputs[0].abs()  # [B, S, ffn], the input to the down projection
            column_norm = block.down.weight.norm(dim=0)
            neurons[index] += (activation * current_mask["m"][..., None]).sum(dim=(0, 1)) * column_norm

        return hook

    for i, layer in enumerate(_layers(model)):
        if layer.attention.heads:
            hooks.append(layer.attention.out.register_forward_pre_hook(attention_hook(i, layer.attention)))
        hooks.append(layer.feed_forward.down.register_forward_pre_hook(ffn_hook(i, layer.feed_forward)))
    try:
        for ids, mask in batches:
            current_mask["m"] = mask.float()
            model(ids, mask)
            token_count += int(mask.sum())
    finally:
        for handle in hooks:
            handle.remove()
    return [(h / max(token_count, 1), n / max(token_count, 1)) for h, n in zip(heads, neurons, strict=True)]


def prune_layer(layer: EncoderLayer, keep_heads: torch.Tensor, keep_neurons: torch.Tensor) -> None:
    """Slice `layer` in place down to the given head and neuron indices (sorted)."""
    attention = layer.attention
    dim = attention.head_dim
    rows = (keep_heads[:, None] * dim + torch.arange(dim)).flatten()
    attention.query = _keep_rows(attention.query, rows)
    attention.key = _keep_rows(attention.key, rows)
    attention.value = _keep_rows(attention.value, rows)
    attention.out = _keep_columns(attention.out, rows)
    attention.heads = len(keep_heads)
    block = layer.feed_forward
    block.up = _keep_rows(block.up, keep_neurons)
    block.down = _keep_columns(block.down, keep_neurons)


def prune_encoder(
    model: SentenceEncoder,
    batches: Iterable[Batch],
    heads_per_layer: int,
    ffn_per_layer: int,
) -> SentenceEncoder:
    """Keep the `heads_per_layer` and `ffn_per_layer` most important units of every layer."""
    scores = unit_importance(model, batches)
    for layer, (head_scores, neuron_scores) in zip(_layers(model), scores, strict=True):
        keep_h = min(heads_per_layer, layer.attention.heads)
        keep_n = min(ffn_per_layer, layer.feed_forward.up.out_features)
        keep_heads = head_scores.topk(keep_h).indices.sort().values
        keep_neurons = neuron_scores.topk(keep_n).indices.sort().values
        prune_layer(layer, keep_heads, keep_neurons)
    model.shape.heads = [layer.attention.heads for layer in _layers(model)]
    model.shape.ffn = [layer.feed_forward.up.out_features for layer in _layers(model)]
    return model
