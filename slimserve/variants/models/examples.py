"""Two torch models that are not classifiers, as a user would hand them to `slimserve build`.

Each function is an entry point (`slimserve build --entry-point
slimserve.variants.models.examples:regression --name diabetes`): it trains its teacher as
its owner would (with labels, here, quickly), then returns a `ModelSpec` holding only
unlabelled input rows. From there the build uses no labels: every compressed variant is
distilled from the teacher's outputs and scored by its fidelity to fp32
(variants.model_pipeline). Copy one and change the network and the data.

- `regression`: an MLP on scikit-learn's bundled diabetes data (10 features per patient)
  with two outputs, `value` (the disease progression it was trained to predict, scaled)
  and `embedding` (a 16-number code of the patient, trained by reconstructing the features
  through a decoder that is thrown away); it returns a tuple, named by `output_names`.
- `residual_cnn`: a small ResNet (a stem and two residual blocks adding into one stream)
  on scikit-learn's bundled 8×8 digits, returning a dict: `embedding` (a 16-number code of
  the image, trained by reconstructing it) and `logits` (the digit, trained on the labels).
  The residual stream is pruned through Torch-Pruning's dependency graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from slimserve.variants.spec import ModelSpec

HELD_OUT_SHARE = 0.25
SEED = 0
EMBEDDING_WIDTH = 16
DIGITS_CLASSES = 10
DIGITS_MAX_INK = 16.0  # scikit-learn's digits count ink 0..16 per pixel

Loss = Callable[[tuple[torch.Tensor, ...]], torch.Tensor]  # a batch of the tensors → the loss


def _train(modules: nn.Module, loss: Loss, tensors: tuple[torch.Tensor, ...], epochs: int, lr: float) -> None:
    """The owner's own training loop over `modules`' parameters: AdamW, shuffled batches of 64."""
    torch.manual_seed(SEED)
    optimizer = torch.optim.AdamW(modules.parameters(), lr=lr, weight_decay=1e-4)
    count = len(tensors[0])
    modules.train()
    for _ in range(epochs):
        order = torch.randperm(count)
        for start in range(0, count - 1, 64):  # `- 1`: never a last batch of one row (BatchNorm)
            rows = order[start : start + 64]
            optimizer.zero_grad(set_to_none=True)
            loss(tuple(t[rows] for t in tensors)).backward()
            optimizer.step()
    modules.eval()


class ValueAndEmbedding(nn.Module):
    """An MLP trunk with two heads: a predicted value and an embedding of the row."""

    def __init__(self, features: int = 10, width: int = 128) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.value = nn.Linear(width, 1)
        self.embedding = nn.Linear(width, EMBEDDING_WIDTH)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(x)
        return self.value(hidden).squeeze(-1), self.embedding(hidden)


def regression(train_epochs: int = 150, width: int = 128) -> ModelSpec:
    """The diabetes MLP (module docstring), trained, with its unlabelled rows and a student."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    features, target = load_diabetes(return_X_y=True)
    x = (features / features.std(axis=0)).astype(np.float32)  # bundled centred; scaled to unit variance here
    y = ((target - target.mean()) / target.std()).astype(np.float32)
    x_train, x_held_out, y_train, _ = train_test_split(x, y, test_size=HELD_OUT_SHARE, random_state=SEED)
    torch.manual_seed(SEED)
    teacher = ValueAndEmbedding(x.shape[1], width)
    decoder = nn.Linear(EMBEDDING_WIDTH, x.shape[1])  # only teaches the embedding; not served

    def loss(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        rows, targets = batch
        value, embedding = teacher(rows)
        mse = nn.functional.mse_loss
        return mse(value, targets) + mse(decoder(embedding), rows)

    tensors = (torch.from_numpy(x_train), torch.from_numpy(y_train))
    _train(nn.ModuleList([teacher, decoder]), loss, tensors, train_epochs, 3e-3)
    return ModelSpec(
        teacher=teacher,
        train_inputs={"features": x_train},
        held_out_inputs={"features": x_held_out},
        student=ValueAndEmbedding(x.shape[1], width // 4),
        output_names=["value", "embedding"],
        description="diabetes progression (scaled) and a patient embedding, an MLP on scikit-learn's diabetes data",
    )


class Residual(nn.Module):
    """conv-BN-ReLU-conv-BN added to its input, then ReLU: the ResNet basic block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ResidualCodes(nn.Module):
    """A stem, two residual blocks adding into one stream, mean pooling, two heads (a dict)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Residual(width), Residual(width))
        self.embedding = nn.Linear(width, EMBEDDING_WIDTH)
        self.logits = nn.Linear(width, DIGITS_CLASSES)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.blocks(self.stem(images)).mean(dim=(2, 3))
        return {"embedding": self.embedding(pooled), "logits": self.logits(pooled)}


def residual_cnn(train_epochs: int = 12, width: int = 32) -> ModelSpec:
    """The digits ResNet (module docstring), trained, with its unlabelled images and a student."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images[:, None] / DIGITS_MAX_INK).astype(np.float32)
    x_train, x_held_out, y_train, _ = train_test_split(
        images, bunch.target, test_size=HELD_OUT_SHARE, random_state=SEED, stratify=bunch.target
    )
    torch.manual_seed(SEED)
    teacher = ResidualCodes(width)
    decoder = nn.Linear(EMBEDDING_WIDTH, images[0].size)  # only teaches the embedding; not served

    def loss(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        pixels, labels = batch
        out = teacher(pixels)
        reconstruction = nn.functional.mse_loss(decoder(out["embedding"]), pixels.flatten(1))
        return nn.functional.cross_entropy(out["logits"], labels) + reconstruction

    tensors = (torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.int64)))
    _train(nn.ModuleList([teacher, decoder]), loss, tensors, train_epochs, 3e-3)
    return ModelSpec(
        teacher=teacher,
        train_inputs={"images": x_train},
        held_out_inputs={"images": x_held_out},
        student=ResidualCodes(width * 3 // 8),
        description="an image embedding and digit scores, a residual CNN on scikit-learn's 8x8 digits",
    )
