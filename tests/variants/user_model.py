"""A user's own torch recipe, as a user would write it: `tests.variants.user_model:spec`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from slimserve.variants.data import Split
from slimserve.variants.models.examples import Residual
from slimserve.variants.spec import ClassifierSpec


def _blobs(count: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=count)
    centres = np.array([[2.0] * 8, [-2.0] * 8, [2.0, -2.0] * 4], dtype=np.float32)
    features = (centres[labels] + rng.normal(size=(count, 8))).astype(np.float32)
    return Split({"features": features}, labels.astype(np.int64))


def spec() -> ClassifierSpec:
    teacher = nn.Sequential(
        nn.Linear(8, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)
    )
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return ClassifierSpec(
        teacher=teacher, student=student, train=_blobs(512, 0), held_out=_blobs(128, 1), trained=False
    )


# The rows of each eval-mode forward pass of `counted_spec`'s teacher, in order.
TEACHER_EVAL_ROWS: list[int] = []


def counted_spec() -> ClassifierSpec:
    """`spec`, its teacher recording how many rows each of its eval-mode forward passes ran."""
    made = spec()

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        # A pruned copy of the teacher carries the hook too (deepcopy); only the teacher counts.
        if module is made.teacher and not module.training:
            TEACHER_EVAL_ROWS.append(len(inputs[0]))

    made.teacher.register_forward_pre_hook(record)
    return made


def not_a_spec() -> str:
    return "oops"


class TinyResNet(nn.Module):
    """A stem, two residual blocks that add into one stream, a head: not an nn.Sequential."""

    def __init__(self, width: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Residual(width), Residual(width))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def _stripes(count: int, seed: int) -> Split:
    """8×8 images of horizontal, vertical or diagonal stripes, with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=count)
    grid = np.arange(8)
    patterns = np.stack(
        [
            np.tile((grid % 2)[:, None], (1, 8)),
            np.tile((grid % 2)[None, :], (8, 1)),
            (grid[:, None] + grid[None, :]) % 2,
        ]
    ).astype(np.float32)
    images = patterns[labels] + 0.5 * rng.normal(size=(count, 8, 8))
    return Split({"image": images[:, None].astype(np.float32)}, labels.astype(np.int64))


def resnet_spec() -> ClassifierSpec:
    return ClassifierSpec(
        teacher=TinyResNet(16),
        student=TinyResNet(8),
        train=_stripes(384, 0),
        held_out=_stripes(96, 1),
        trained=False,
        description="a residual CNN on stripe images",
    )


def digits_resnet_spec() -> ClassifierSpec:
    """The residual CNN on the built-in digits: a user's own architecture on real data."""
    from slimserve.variants.data import load_digits_split

    train, held_out = load_digits_split()
    return ClassifierSpec(
        teacher=TinyResNet(32, classes=10),
        student=TinyResNet(12, classes=10),
        train=train,
        held_out=held_out,
        trained=False,
        description="a residual CNN on scikit-learn's digits",
    )


class TinyTransformer(nn.Module):
    """torch's own TransformerEncoder over a sequence of feature vectors, mean-pooled."""

    def __init__(self, width: int = 32, heads: int = 4, ffn: int = 64, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        layer = nn.TransformerEncoderLayer(width, heads, ffn, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def _sequences(count: int, seed: int) -> Split:
    """Sequences of 6 noisy copies of one of three 8-feature centres: the class is the centre."""
    blobs = _blobs(count * 6, seed)
    labels = blobs.labels[::6] if blobs.labels is not None else None
    assert labels is not None
    rng = np.random.default_rng(seed)
    centres = np.array([[2.0] * 8, [-2.0] * 8, [2.0, -2.0] * 4], dtype=np.float32)
    features = centres[labels][:, None, :] + rng.normal(size=(count, 6, 8)).astype(np.float32)
    return Split({"sequence": features.astype(np.float32)}, labels)


def transformer_spec() -> ClassifierSpec:
    return ClassifierSpec(
        teacher=TinyTransformer(32),
        student=TinyTransformer(16, heads=2, ffn=32),
        train=_sequences(384, 0),
        held_out=_sequences(96, 1),
        trained=False,
        description="a transformer encoder classifier",
    )
