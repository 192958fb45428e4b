"""Structured pruning of any torch network, through Torch-Pruning's dependency graph.

The hand-written pruner (variants.prune_sequential) understands an `nn.Sequential` of
Conv/Linear layers only. A residual network ties the channels of every block that adds into
the same stream, and a transformer ties heads and hidden widths across layers; slicing one
layer alone breaks the graph. Torch-Pruning (DepGraph, CVPR 2023) traces the network once
on an example input, groups every parameter that must shrink together, and removes whole
groups by their importance. We prune every group to a fraction of the widths it had before
the first step, so that a recipe's `keep_fractions` mean the same here as for sequential
networks; the layer that produces the model's output keeps its width.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from slimserve.variants.prune_sequential import Weighted  # the layers that carry weights: Conv2d, Linear


def output_layer(model: nn.Module, example: tuple[torch.Tensor, ...]) -> nn.Module:
    """The weighted layer whose output is the model's output (its width is the task's)."""
    outputs: dict[int, nn.Module] = {}
    hooks = [
        module.register_forward_hook(lambda m, _i, out: outputs.__setitem__(id(out), m))
        for module in model.modules()
        if isinstance(module, Weighted)
    ]
    try:
        with torch.no_grad():
            result = model.eval()(*example)
    finally:
        for hook in hooks:
            hook.remove()
    layer = outputs.get(id(result))
    if layer is None:
        # The output went through something after the last weighted layer (a reshape, a
        # scale): the last weighted layer registered is the head in every common design.
        layer = [m for m in model.modules() if isinstance(m, Weighted)][-1]
    return layer


def group_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every weighted layer, by module name."""
    return {
        name: module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        for name, module in model.named_modules()
        if isinstance(module, Weighted)
    }


def prune_graph_step(
    model: nn.Module, example: tuple[torch.Tensor, ...], reference: dict[str, int], keep_fraction: float
) -> nn.Module:
    """Prune `model` in place so every prunable layer keeps about `keep_fraction` of its
    width in `reference` (group_widths before the first step); L2 magnitude importance."""
    current = group_widths(model)
    ratios = {
        module: max(0.0, 1.0 - keep_fraction * reference[name] / current[name])
        for name, module in model.named_modules()
        if isinstance(module, Weighted) and name in reference and current[name] > 0
    }
    head = output_layer(model, example)
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs=example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio_dict={module: ratio for module, ratio in ratios.items() if module is not head},
        pruning_ratio=0.0,
        ignored_layers=[head],
        round_to=1,
    )
    model.eval()
    pruner.step()
    return model
