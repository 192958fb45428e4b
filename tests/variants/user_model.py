"""A user's own torch recipe, as a user would write it: `tests.variants.user_model:spec`."""

from __future__ import annotations

import numpy as np
from torch import nn

from variants.data import Split
from variants.spec import ClassifierSpec


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


def not_a_spec() -> str:
    return "oops"
