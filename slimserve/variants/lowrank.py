"""Low-rank factorisation: a weight matrix W (out × in) replaced by two thinner ones.

Truncated SVD keeps the r largest singular values: W ≈ (U_r S_r) V_r, so a Linear(in, out)
becomes Linear(in, r) then Linear(r, out), and a k×k Conv2d(in, out) becomes a k×k
Conv2d(in, r) then a 1×1 Conv2d(r, out) (the SVD of the weight unfolded along its output
channels: Tucker decomposition in the output mode only). The rank per layer is the smallest
that keeps `energy` of the squared singular values; a layer is left whole when that rank
would not save weights (r ≥ in·out / (in + out) for a Linear). Fine-tuning by distillation
afterwards recovers what the truncation lost (the recipe's `epochs`).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from slimserve.variants.prune_sequential import Weighted  # the layers that carry weights: Conv2d, Linear


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest r whose r largest singular values hold `energy` of the sum of squares."""
    squares = singular_values.double() ** 2
    kept = torch.cumsum(squares, 0) / squares.sum()
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype)).item()) + 1


def _matrix(layer: Weighted) -> torch.Tensor:
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def _factorised(layer: Weighted, rank: int) -> nn.Sequential:
    u, s, vh = torch.linalg.svd(_matrix(layer), full_matrices=False)
    root = s[:rank].sqrt()
    first_weight, second_weight = vh[:rank] * root[:, None], u[:, :rank] * root[None, :]
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first: Weighted = nn.Linear(layer.in_features, rank, bias=False)
        second: Weighted = nn.Linear(rank, layer.out_features, bias=has_bias)
        first.weight.data.copy_(first_weight)
        second.weight.data.copy_(second_weight)
    else:
        pair = cast(tuple[int, int], layer.kernel_size)  # torch types Conv2d's geometry loosely
        first = nn.Conv2d(
            layer.in_channels,
            rank,
            pair,
            cast(tuple[int, int], layer.stride),
            cast(tuple[int, int], layer.padding),
            cast(tuple[int, int], layer.dilation),
            bias=False,
        )
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=has_bias)
        first.weight.data.copy_(first_weight.reshape(first.weight.shape))
        second.weight.data.copy_(second_weight.reshape(second.weight.shape))
    if has_bias:
        assert layer.bias is not None and second.bias is not None
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def factorise(model: nn.Module, energy: float, skip: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """Replace, in place, every Linear and ungrouped Conv2d where a truncated SVD keeping
    `energy` saves weights. Returns {layer name: {rank, full_rank, kept_energy}} for those
    replaced (layers in `skip` are left alone)."""
    replaced: dict[str, dict[str, Any]] = {}
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, Weighted) or name in (skip or set()):
            continue
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            continue
        matrix = _matrix(layer)
        singular = torch.linalg.svdvals(matrix)
        rank = rank_for_energy(singular, energy)
        rows, cols = matrix.shape
        if rank * (rows + cols) >= rows * cols:
            continue
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attribute, _factorised(layer, rank))
        squares = singular.double() ** 2
        replaced[name] = {
            "rank": rank,
            "full_rank": min(rows, cols),
            "kept_energy": round(float(squares[:rank].sum() / squares.sum()), 4),
        }
    return replaced
