"""What a torch-recipe entry point returns: a model, its data, and optionally a student.

A user's own classifier plugs into `slimserve build --entry-point module:function`, where
`function()` returns a `ClassifierSpec`. The teacher is any torch network: an
`nn.Sequential` of Conv2d/Linear layers is pruned by the hand-written pruner, anything else
(residual blocks, attention) through Torch-Pruning's dependency graph
(variants.prune_graph); the student is any smaller module with the same inputs and outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from slimserve.variants.data import Split


@dataclass
class ClassifierSpec:
    """A classifier to compress. Inputs are named by the keys of `train.inputs`."""

    teacher: nn.Module
    train: Split
    held_out: Split
    student: nn.Module | None = None
    labels: list[str] | None = None
    trained: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if self.train.labels is None or self.held_out.labels is None:
            raise ValueError("a classifier spec needs labels in both train and held_out splits")
        if list(self.train.inputs) != list(self.held_out.inputs):
            raise ValueError("train and held_out must have the same input names")
