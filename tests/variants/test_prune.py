"""Structured pruning really removes units, keeps shapes consistent, and compensates."""

from __future__ import annotations

import copy

import torch
from torch import nn

from slimserve.variants.models import digits
from slimserve.variants.pipeline import count_macs, count_params
from slimserve.variants.prune_encoder import InputStats, _keep_columns
from slimserve.variants.prune_sequential import prune_to_fraction, widths


def test_sequential_pruning_shrinks_every_hidden_layer_and_keeps_the_output() -> None:
    model = digits.teacher(width=8).eval()
    original = widths(model)
    pruned = prune_to_fraction(copy.deepcopy(model), original, 0.5)
    assert widths(pruned)[:-1] == [round(w * 0.5) for w in original[:-1]]
    assert widths(pruned)[-1] == original[-1]
    example = {"images": torch.rand(3, 1, 28, 28).numpy()}
    assert pruned(torch.from_numpy(example["images"])).shape == (3, 10)
    assert count_params(pruned) < count_params(model)
    assert count_macs(pruned, example) < count_macs(model, example)


def test_flatten_between_conv_and_linear_prunes_whole_feature_blocks() -> None:
    norm = nn.BatchNorm2d(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 0.0, 1.0, 1.0]))  # channel 1 is silenced
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)).eval()
    x = torch.rand(5, 1, 2, 2)
    expected = model(x)
    pruned = prune_to_fraction(copy.deepcopy(model), widths(model), 0.75)
    assert isinstance(pruned[4], nn.Linear) and pruned[4].in_features == 3 * 2 * 2
    # The silenced channel only contributed its BatchNorm bias (zero here): nothing changes.
    with torch.no_grad():
        assert torch.allclose(pruned(x), expected, atol=1e-5)


def test_removed_inputs_are_folded_into_the_bias() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    x = torch.randn(32, 6)
    x[:, [1, 4]] = torch.tensor([0.5, -2.0])  # features 1 and 4 never fluctuate
    stats = InputStats(mean=x.mean(dim=0), var=x.var(dim=0, unbiased=False))
    assert stats.fluctuation(linear)[[1, 4]].abs().max() < 1e-6
    keep = torch.tensor([0, 2, 3, 5])
    smaller = _keep_columns(linear, keep, stats)
    with torch.no_grad():
        assert torch.allclose(smaller(x[:, keep]), linear(x), atol=1e-5)
