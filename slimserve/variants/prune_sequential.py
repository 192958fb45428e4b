"""Structured pruning of sequential CNNs and MLPs: whole channels and neurons removed.

Works on an `nn.Sequential` of Conv2d / Linear layers with BatchNorm, activations,
pooling and Flatten between them. Every weighted layer except the last (the classifier)
is prunable: removing its output channel c deletes row c of its weight, entry c of the
BatchNorm that follows, and the matching input columns of the next weighted layer (a
block of columns when a Flatten turns C×H×W into features). A channel's importance is the
L1 norm of its filter times |γ| of its BatchNorm (so a channel the BatchNorm silences
scores low), as in network slimming.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

Weighted = nn.Conv2d | nn.Linear


@dataclass
class _Unit:
    """A prunable layer, the BatchNorm after it (if any) and the weighted layer it feeds."""

    index: int
    norm_index: int | None
    consumer_index: int


def _units(model: nn.Sequential) -> list[_Unit]:
    weighted = [i for i, m in enumerate(model) if isinstance(m, Weighted)]
    units = []
    for here, consumer in itertools.pairwise(weighted):
        layer = model[here]
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            continue  # depthwise/grouped channels are tied across layers; not supported
        norm = next(
            (j for j in range(here + 1, consumer) if isinstance(model[j], nn.BatchNorm2d | nn.BatchNorm1d)), None
        )
        units.append(_Unit(here, norm, consumer))
    return units


def widths(model: nn.Sequential) -> list[int]:
    """Output width (channels or neurons) of every weighted layer, in order."""
    return [_width(m) for m in model if isinstance(m, Weighted)]


def _weighted(model: nn.Sequential, index: int) -> Weighted:
    return cast(Weighted, model[index])


def _width(layer: Weighted) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def channel_importance(model: nn.Sequential, unit: _Unit) -> torch.Tensor:
    scores = _weighted(model, unit.index).weight.detach().abs().flatten(1).sum(dim=1)
    if unit.norm_index is not None:
        norm = cast(nn.BatchNorm2d | nn.BatchNorm1d, model[unit.norm_index])
        scores = scores * norm.weight.detach().abs()
    return scores


def _slice_layer(layer: Weighted, keep: torch.Tensor, dim: int) -> Weighted:
    """A copy of `layer` keeping only the output (dim 0) or input (dim 1) indices `keep`."""
    new = copy.deepcopy(layer)
    new.weight = nn.Parameter(layer.weight.detach().index_select(dim, keep).clone())
    if dim == 0 and layer.bias is not None:
        new.bias = nn.Parameter(layer.bias.detach()[keep].clone())
    if isinstance(new, nn.Conv2d):
        new.out_channels, new.in_channels = new.weight.shape[0], new.weight.shape[1]
    else:
        new.out_features, new.in_features = new.weight.shape[0], new.weight.shape[1]
    return new


def _slice_norm(norm: nn.BatchNorm2d | nn.BatchNorm1d, keep: torch.Tensor) -> nn.Module:
    new = copy.deepcopy(norm)
    new.num_features = len(keep)
    new.weight = nn.Parameter(norm.weight.detach()[keep].clone())
    new.bias = nn.Parameter(norm.bias.detach()[keep].clone())
    for name in ("running_mean", "running_var"):
        setattr(new, name, getattr(norm, name).detach()[keep].clone())
    return new


def prune_unit(model: nn.Sequential, unit: _Unit, keep: torch.Tensor) -> None:
    """Keep only the output channels `keep` (sorted indices) of one unit, in place."""
    producer = _weighted(model, unit.index)
    old_width = _width(producer)
    model[unit.index] = _slice_layer(producer, keep, dim=0)
    if unit.norm_index is not None:
        model[unit.norm_index] = _slice_norm(cast(nn.BatchNorm2d | nn.BatchNorm1d, model[unit.norm_index]), keep)
    consumer = _weighted(model, unit.consumer_index)
    fan_in = int(consumer.weight.shape[1])
    if fan_in != old_width:  # Flatten in between: each channel owns a block of features
        block = fan_in // old_width
        keep = (keep[:, None] * block + torch.arange(block)).flatten()
    model[unit.consumer_index] = _slice_layer(consumer, keep, dim=1)


def prune_to_fraction(model: nn.Sequential, reference_widths: list[int], fraction: float) -> nn.Sequential:
    """Prune every prunable layer to `fraction` of its width in `reference_widths` (≥ 1)."""
    for unit in _units(model):
        position = [i for i, m in enumerate(model) if isinstance(m, Weighted)].index(unit.index)
        target = max(1, round(reference_widths[position] * fraction))
        scores = channel_importance(model, unit)
        if target < len(scores):
            prune_unit(model, unit, scores.topk(target).indices.sort().values)
    return model


def is_prunable_sequence(model: nn.Module) -> bool:
    """An nn.Sequential whose weighted layers are all its own children: what this pruner slices."""
    if not isinstance(model, nn.Sequential):
        return False
    return all(isinstance(m, Weighted) or not any(isinstance(c, Weighted) for c in m.modules()) for m in model)
