"""What a torch-recipe entry point returns: a model, its data, and optionally a student.

A user's own network plugs into `slimserve build --entry-point module:function`, and what
`function()` returns decides the pipeline (variants.build):

- a `ClassifierSpec`: a classifier with labelled rows; quality is accuracy, fine-tuning uses
  the Hinton loss (variants.classifier_pipeline);
- a `ModelSpec`: any network (regression, ranking, embeddings, several outputs) with
  unlabelled rows; quality is fidelity to fp32, fine-tuning matches the teacher's outputs
  (variants.model_pipeline).

The teacher is any torch network: an `nn.Sequential` of Conv2d/Linear layers is pruned by
the hand-written pruner, anything else (residual blocks, attention) through Torch-Pruning's
dependency graph (variants.prune_graph); the student is any smaller module with the same
inputs and outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


@dataclass
class ModelSpec:
    """Any trained torch network to compress, with unlabelled input rows.

    `train_inputs` and `held_out_inputs` map each input name to its rows (first axis), in
    the order the network's `forward` takes them. The network returns a tensor, a tuple or a
    dict of tensors; `output_names` names a tensor's or a tuple's outputs (a dict names its
    own; default `output`, `output_0`, …), and these are the served outputs' names. Training
    rows drive distillation against the teacher's outputs and calibrate int8; held-out rows
    measure each variant's fidelity to fp32. There are no labels, so the teacher must come
    trained."""

    teacher: nn.Module
    train_inputs: dict[str, np.ndarray]
    held_out_inputs: dict[str, np.ndarray]
    student: nn.Module | None = None
    output_names: list[str] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.train_inputs:
            raise ValueError("a model spec needs at least one input")
        if list(self.train_inputs) != list(self.held_out_inputs):
            raise ValueError("train_inputs and held_out_inputs must have the same input names, in the same order")
        for split, inputs in (("train_inputs", self.train_inputs), ("held_out_inputs", self.held_out_inputs)):
            counts = {name: len(rows) for name, rows in inputs.items()}
            if len(set(counts.values())) != 1 or 0 in counts.values():
                raise ValueError(f"{split}: every input needs the same, non-zero number of rows; got {counts}")
        if self.output_names is not None and len(set(self.output_names)) != len(self.output_names):
            raise ValueError(f"output_names {self.output_names} names an output twice")
