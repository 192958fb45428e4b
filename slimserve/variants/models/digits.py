"""The built-in `digits` classifier: a small VGG-style CNN on upsampled 28×28 digits.

`spec()` is an ordinary torch-recipe entry point (`variants.models.digits:spec`), the same
kind a user writes for their own model: it returns the (untrained) teacher, a smaller
student with fewer layers, and the data.
"""

from __future__ import annotations

from torch import nn

from slimserve.variants.data import load_digits_split
from slimserve.variants.spec import ClassifierSpec


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def teacher(width: int = 48) -> nn.Sequential:
    """Five 3×3 conv layers (w, w, 2w, 2w, 4w channels), global average pool, linear head."""
    return nn.Sequential(
        *_block(1, width),
        *_block(width, width),
        nn.MaxPool2d(2),
        *_block(width, 2 * width),
        *_block(2 * width, 2 * width),
        nn.MaxPool2d(2),
        *_block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, 10),
    )


def student(width: int = 16) -> nn.Sequential:
    """Three conv layers instead of five, at half the teacher's width."""
    return nn.Sequential(
        *_block(1, width),
        nn.MaxPool2d(2),
        *_block(width, 2 * width),
        nn.MaxPool2d(2),
        *_block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, 10),
    )


def spec() -> ClassifierSpec:
    train, held_out = load_digits_split()
    return ClassifierSpec(
        teacher=teacher(),
        student=student(),
        train=train,
        held_out=held_out,
        labels=[str(d) for d in range(10)],
        trained=False,
        description="CNN on scikit-learn's handwritten digits, upsampled to 28x28",
    )
