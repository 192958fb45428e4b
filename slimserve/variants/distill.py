"""Distillation losses and the training loops that use them.

- `hinton_loss`: Hinton, Vinyals & Dean (2015), the classifier loss
  α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1−α)·CE(y, z_s). The T² keeps the soft-target
  gradients on the same scale as the hard-target ones when T changes.
- `embedding_loss`: for the encoder, MSE to the teacher's embedding plus (1 − cosine), both
  on the normalised embeddings the model serves.
- `output_matching_loss`: for any network (variants.model_pipeline), task-agnostic: the
  mean over its float outputs of ‖s − t‖² / v, where v is the teacher output's total
  variance over the training rows (1 − R² per output). Dividing by the variance makes
  outputs in different units count alike (a price in dollars, a unit-norm embedding), as
  fidelity's minimum over outputs does; the variance rather than the mean square because
  an output that varies little around a large mean would otherwise look matched while the
  student had learned none of its variation. Integer and bool outputs have no gradient and
  are left out (fidelity still scores them).

The loops (`fit_classifier`, `fit_outputs`, `fit_encoder`) are used for three jobs: training
a classifier from labels (the teacher), distilling a student, and fine-tuning a pruned model
between pruning steps (the pruned model is distilled from the unpruned teacher, which
recovers more than labels alone). The teacher is run once over the training rows, not at
every step: its outputs in eval mode do not change while a student learns (`StoredLogits`,
`teacher_outputs`, the encoder's `TeacherStates`). Where they would not fit in memory, a
classifier's logits and the encoder's states are computed per batch instead, and a generic
network's outputs are refused before the work, naming the training rows that fit.
Each tells a `ModelProgress`, when given one, that its epochs begin and each one's end
(the lines a log and the server's ListVariants show); the tqdm bar is for a terminal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from slimserve.repository.format import RepositoryError
from slimserve.variants.memory import available_memory_bytes
from slimserve.variants.models.encoder import SentenceEncoder
from slimserve.variants.named_outputs import as_named, run_named
from slimserve.variants.progress import ModelProgress

log = logging.getLogger(__name__)


def hinton_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """α·T²·KL(p_t^T ‖ p_s^T) + (1−α)·CE(y, z_s), averaged over the batch."""
    soft_student = nn.functional.log_softmax(student_logits / temperature, dim=-1)
    soft_teacher = nn.functional.log_softmax(teacher_logits / temperature, dim=-1)
    kl = nn.functional.kl_div(soft_student, soft_teacher, reduction="batchmean", log_target=True)
    ce = nn.functional.cross_entropy(student_logits, labels)
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE + (1 − cosine) between two batches of embeddings."""
    cosine = nn.functional.cosine_similarity(student, teacher, dim=-1)
    return nn.functional.mse_loss(student, teacher) * student.shape[-1] + (1.0 - cosine).mean()


def _batches(count: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(count)
    for start in range(0, count, batch_size):
        yield order[start : start + batch_size]


def _length_buckets(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar-length rows, in random order.

    Sentences vary from 8 to 64 tokens; a random batch is padded to its longest member, so
    about half of the work would be padding. Sorting by length (with random tie order) and
    shuffling whole batches keeps the stochasticity that matters and drops most padding.
    """
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _step(
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    loss: torch.Tensor,
    bar: tqdm,  # type: ignore[type-arg]
) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.update()


def _as_tensors(inputs: dict[str, np.ndarray], rows: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(array[rows])) for array in inputs.values()]


def fit_classifier(
    model: nn.Module,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    teacher: LogitTargets | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    seed: int = 0,
    desc: str = "train",
    progress: ModelProgress | None = None,
) -> nn.Module:
    """Train from labels (`teacher` None) or distil with the Hinton loss from the teacher's
    logits (`classifier_targets`)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    count = len(labels)
    steps = epochs * -(-count // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    if progress is not None:
        progress.loop(epochs)
    with tqdm(total=steps, desc=desc, unit="step", leave=False) as bar:
        for _ in range(epochs):
            for rows in _batches(count, batch_size, rng):
                x = _as_tensors(inputs, rows)
                y = torch.from_numpy(labels[rows])
                logits = model(*x)
                if teacher is None:
                    loss = nn.functional.cross_entropy(logits, y)
                else:
                    loss = hinton_loss(logits, teacher.batch(rows, x), y, temperature, alpha)
                _step(optimizer, schedule, loss, bar)
            if progress is not None:
                progress.tick()
    return model.eval()


# An output whose variance is below this share of its mean square is treated as constant: its
# error is measured against the mean square instead, so a near-constant output cannot dominate.
VARIANCE_FLOOR_SHARE = 1e-6
# The teacher's token states are stored only while they take at most this share of the memory
# available when they are computed; past it they are computed for each batch instead
# (`teacher_states_for`). The build's peak is over twice the states' size (minilm, 2 threads:
# 4.3 GiB of states for 40,746 sentences, 9.4 GiB peak; 9.0 GiB for 80,557 sentences reached
# 22.2 GiB on a 23 GiB machine before the kernel killed it).
TEACHER_STATES_MEMORY_SHARE = 0.3
FLOAT16_BYTES = 2
FLOAT32_BYTES = 4
GIB_BYTES = 2**30
TINY = 1e-12


def _over_memory_share(needed_bytes: int, available_bytes: int | None) -> bool:
    """Whether teacher targets of `needed_bytes` would take more than TEACHER_STATES_MEMORY_SHARE
    of `available_bytes` (the one rule for stored logits, outputs and token states; never
    where memory is unknown)."""
    return available_bytes is not None and needed_bytes > TEACHER_STATES_MEMORY_SHARE * available_bytes


class LogitTargets(Protocol):
    """What `fit_classifier` distils from: the teacher's logits for any rows of its training set."""

    def batch(self, rows: np.ndarray, inputs: list[torch.Tensor]) -> torch.Tensor:
        """The logits of training rows `rows`, whose inputs are `inputs`."""
        ...


class StoredLogits:
    """The teacher's logits for every training row, computed once in eval mode: the soft
    targets of every distillation (the student's, and pruning's and QAT's fine-tunings).

    Run once instead of at every step: for the built-in digits CNN the teacher's forward
    pass was three quarters of a distillation step (the student's 660 steps: 53-73 s, 15-17 s
    without it; every digits fine-tuning 97-126 s, 34-38 s; three builds each on a 2-core AMD
    EPYC with AVX2, docs/variants.md). Memory: rows × outputs × 4 bytes."""

    def __init__(self, teacher: nn.Module, inputs: dict[str, np.ndarray], batch_size: int = 256) -> None:
        teacher.eval()
        count = len(next(iter(inputs.values())))
        with torch.no_grad():
            parts = [teacher(*_as_tensors(inputs, np.arange(start, min(start + batch_size, count)))).numpy()
                     for start in range(0, count, batch_size)]  # fmt: skip
        self.logits = np.concatenate(parts)

    def batch(self, rows: np.ndarray, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(self.logits[rows])


class LiveLogits:
    """The teacher's logits computed for each batch, where stored ones would not fit in memory."""

    def __init__(self, teacher: nn.Module) -> None:
        self._teacher = teacher.eval()

    def batch(self, rows: np.ndarray, inputs: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return self._teacher(*inputs)  # type: ignore[no-any-return]


def classifier_targets(
    teacher: nn.Module, inputs: dict[str, np.ndarray], available_bytes: int | None = None
) -> StoredLogits | LiveLogits:
    """Stored logits where they fit in TEACHER_STATES_MEMORY_SHARE of the memory available
    (always, for a model of a few classes), else logits computed per batch, which is said."""
    available = available_memory_bytes() if available_bytes is None else available_bytes
    count = len(next(iter(inputs.values())))
    with torch.no_grad():
        outputs = teacher.eval()(*_as_tensors(inputs, np.arange(1))).numel()
    needed = count * outputs * FLOAT32_BYTES
    if available is None or not _over_memory_share(needed, available):
        return StoredLogits(teacher, inputs)
    log.info(
        "the teacher's logits for %s training rows would need %.1f GiB, more than %.0f%% of the %.1f GiB "
        "available: computing them for each batch instead",
        f"{count:,}", needed / GIB_BYTES, TEACHER_STATES_MEMORY_SHARE * 100, available / GIB_BYTES,
    )  # fmt: skip
    return LiveLogits(teacher)


class TrainingRowsTooLargeError(RepositoryError):
    """The teacher's outputs for a model's training rows would not fit in memory."""


def teacher_outputs(
    teacher: nn.Module,
    inputs: dict[str, np.ndarray],
    names: Sequence[str],
    batch_size: int = 256,
    available_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """The teacher's outputs for every row, computed once: the targets of every fine-tuning.
    Outputs that would take more than TEACHER_STATES_MEMORY_SHARE of the memory available
    (a network with per-token outputs, on many rows) are refused before any is computed,
    naming the `max_train_rows` that fits: the build would otherwise be killed for memory."""
    count = len(next(iter(inputs.values())))
    available = available_memory_bytes() if available_bytes is None else available_bytes
    first = run_named(teacher, {k: v[:1] for k, v in inputs.items()}, names)
    row_bytes = sum(output.nbytes for output in first.values())
    if available is not None and _over_memory_share(count * row_bytes, available):
        raise TrainingRowsTooLargeError(
            f"the teacher's outputs for {count:,} training rows need {count * row_bytes / GIB_BYTES:.1f} GiB, "
            f"more than {TEACHER_STATES_MEMORY_SHARE:.0%} of the {available / GIB_BYTES:.1f} GiB available: "
            f"set the recipe's max_train_rows to {int(TEACHER_STATES_MEMORY_SHARE * available // row_bytes):,} or fewer"
        )
    parts = [run_named(teacher, {k: v[start : start + batch_size] for k, v in inputs.items()}, names)
             for start in range(0, count, batch_size)]  # fmt: skip
    return {name: np.concatenate([part[name] for part in parts]) for name in names}


def output_variances(targets: dict[str, np.ndarray]) -> dict[str, float]:
    """Each float output's total variance over the rows (the sum over its elements), floored."""
    variances = {}
    for name, rows in targets.items():
        if rows.dtype.kind != "f":
            continue  # no gradient through an integer or bool output
        flat = rows.reshape(len(rows), -1).astype(np.float64)
        mean_square = float(np.mean(np.sum(flat**2, axis=1)))
        variance = float(np.sum(np.var(flat, axis=0)))
        variances[name] = max(variance, VARIANCE_FLOOR_SHARE * mean_square, TINY)
    return variances


def output_matching_loss(
    student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], variances: dict[str, float]
) -> torch.Tensor:
    """Mean over the outputs in `variances` of mean_rows ‖s − t‖² / variance (module docstring)."""
    terms = [
        (student[name] - teacher[name]).reshape(len(teacher[name]), -1).pow(2).sum(dim=1).mean() / variance
        for name, variance in variances.items()
    ]
    return torch.stack(terms).mean()


def fit_outputs(
    model: nn.Module,
    inputs: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    desc: str = "distil",
    progress: ModelProgress | None = None,
) -> nn.Module:
    """Distil `model` to reproduce the teacher's `targets` (teacher_outputs) on `inputs`, with
    `output_matching_loss`. No labels: any network with float outputs."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    names = list(targets)
    variances = output_variances(targets)
    if not variances:
        raise ValueError(f"outputs {names} are all integer or bool: there is nothing to distil against")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    count = len(next(iter(inputs.values())))
    steps = max(1, epochs * -(-count // batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    if progress is not None:
        progress.loop(epochs)
    with tqdm(total=steps, desc=desc, unit="step", leave=False) as bar:
        for _ in range(epochs):
            for rows in _batches(count, batch_size, rng):
                if len(rows) < 2:  # BatchNorm cannot train on one row (a last batch of one)
                    bar.update()
                    continue
                want = {name: torch.from_numpy(targets[name][rows]) for name in variances}
                got = as_named(model(*_as_tensors(inputs, rows)), names)
                _step(optimizer, schedule, output_matching_loss(got, want, variances), bar)
            if progress is not None:
                progress.tick()
    return model.eval()


class TokenTargets(Protocol):
    """What `fit_encoder` imitates: the teacher's token states of any rows of its training set."""

    num_layers: int

    def batch(self, rows: np.ndarray, length: int) -> torch.Tensor:
        """[layers, B, length, hidden] float32, zero past each row's real tokens."""
        ...


class TeacherStates:
    """Every teacher layer's token states for a training set, computed once, kept as float16.

    Pruning fine-tunes several times and distillation runs several epochs against the same
    teacher; computing its forward pass once instead of every step saves about a third of
    the training time. Memory: tokens × layers × hidden × 2 bytes (about 1 GB for the
    default minilm recipe). The rows go through the teacher shortest first, so each batch
    is cut to nearly its every row's length: in corpus order a batch of 64 was padded to
    about twice its real tokens. A training set whose states would take more than
    TEACHER_STATES_MEMORY_SHARE of the available memory is refused before any is computed
    (`teacher_states_for` computes such a set's states per batch instead).
    """

    def __init__(
        self,
        teacher: SentenceEncoder,
        inputs: dict[str, np.ndarray],
        batch_size: int = 64,
        bf16: bool = False,
        available_bytes: int | None = None,
    ) -> None:
        lengths = inputs["attention_mask"].sum(axis=1)
        _check_memory(teacher, lengths, available_memory_bytes() if available_bytes is None else available_bytes)
        by_length = np.argsort(lengths, kind="stable")
        states_of: dict[int, np.ndarray] = {}
        teacher.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for start in tqdm(range(0, len(lengths), batch_size), desc="teacher states", unit="batch", leave=False):
                rows = by_length[start : start + batch_size]
                length = int(lengths[rows].max())
                ids = torch.from_numpy(inputs["input_ids"][rows, :length])
                mask = torch.from_numpy(inputs["attention_mask"][rows, :length])
                states = [state.float() for state in teacher.hidden_states(ids, mask)]
                stacked = torch.stack(states, dim=1).to(torch.float16).numpy()
                states_of.update((int(row), stacked[i, :, : lengths[row]]) for i, row in enumerate(rows))
        self._states = [states_of[row] for row in range(len(lengths))]
        self.num_layers = len(teacher.layers)

    def batch(self, rows: np.ndarray, length: int) -> torch.Tensor:
        """[layers, B, length, hidden] float32, zero-padded."""
        first = self._states[rows[0]]
        out = np.zeros((first.shape[0], len(rows), length, first.shape[2]), dtype=np.float32)
        for i, row in enumerate(rows):
            states = self._states[row]
            out[:, i, : states.shape[1]] = states
        return torch.from_numpy(out)


class LiveTeacherStates:
    """The teacher's token states computed for each batch when training asks for it.

    Memory beyond one batch: none, so the training text is bounded by time, not memory. Cost:
    the teacher's forward pass on every batch of every epoch, which is small beside the
    student's forward and backward pass — minilm's 4-layer student, 15,376 sentences, bf16,
    2 threads (AMD EPYC): 98 s an epoch against 86 s with stored states, whose one pass over
    the set took about 30 s of its own.
    """

    def __init__(self, teacher: SentenceEncoder, inputs: dict[str, np.ndarray], bf16: bool = False) -> None:
        self._teacher, self._inputs, self._bf16 = teacher.eval(), inputs, bf16
        self.num_layers = len(teacher.layers)

    def batch(self, rows: np.ndarray, length: int) -> torch.Tensor:
        ids = torch.from_numpy(self._inputs["input_ids"][rows, :length])
        mask = torch.from_numpy(self._inputs["attention_mask"][rows, :length])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._bf16):
            states = torch.stack([state.float() for state in self._teacher.hidden_states(ids, mask)])
        return states * mask[None, :, :, None].to(states.dtype)


def teacher_states_for(
    teacher: SentenceEncoder,
    inputs: dict[str, np.ndarray],
    bf16: bool = False,
    available_bytes: int | None = None,
) -> TeacherStates | LiveTeacherStates:
    """Stored states (`TeacherStates`) where they fit in TEACHER_STATES_MEMORY_SHARE of the
    memory available, else states computed per batch (`LiveTeacherStates`), which is said."""
    available = available_memory_bytes() if available_bytes is None else available_bytes
    lengths = inputs["attention_mask"].sum(axis=1)
    needed = _states_over_budget(teacher, lengths, available)
    if needed is None or available is None:
        return TeacherStates(teacher, inputs, bf16=bf16, available_bytes=available)
    log.info(
        "the teacher's token states for %s training sentences would need %.1f GiB, more than %.0f%% of the "
        "%.1f GiB available: computing them for each batch instead (about 15%% more time a training epoch)",
        f"{len(lengths):,}", needed / GIB_BYTES, TEACHER_STATES_MEMORY_SHARE * 100, available / GIB_BYTES,
    )  # fmt: skip
    return LiveTeacherStates(teacher, inputs, bf16=bf16)


class TrainingTextTooLargeError(RepositoryError):
    """The teacher's token states for a training text would not fit in memory."""


def _states_over_budget(teacher: SentenceEncoder, lengths: np.ndarray, available_bytes: int | None) -> int | None:
    """The bytes the stored states would take, where that is more than
    TEACHER_STATES_MEMORY_SHARE of `available_bytes`; None where they fit or memory is unknown."""
    needed = int(lengths.sum()) * len(teacher.layers) * teacher.shape.hidden * FLOAT16_BYTES
    return needed if _over_memory_share(needed, available_bytes) else None


def _check_memory(teacher: SentenceEncoder, lengths: np.ndarray, available_bytes: int | None) -> None:
    """Refuse, before the hour of work, a training set whose states would leave the build
    to be killed by the kernel for memory (TEACHER_STATES_MEMORY_SHARE)."""
    needed = _states_over_budget(teacher, lengths, available_bytes)
    if needed is not None and available_bytes is not None:
        raise TrainingTextTooLargeError(
            f"the teacher's token states for {len(lengths):,} training sentences ({int(lengths.sum()):,} tokens) "
            f"need {needed / GIB_BYTES:.1f} GiB, more than {TEACHER_STATES_MEMORY_SHARE:.0%} of the "
            f"{available_bytes / GIB_BYTES:.1f} GiB available: compute them per batch (teacher_states_for), "
            "set the recipe's train_sentences lower or train on fewer libraries"
        )


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Which teacher layer each student layer imitates: evenly spaced, last to last."""
    return [(k + 1) * teacher_layers // student_layers - 1 for k in range(student_layers)]


def fit_encoder(
    model: SentenceEncoder,
    teacher: TokenTargets,
    inputs: dict[str, np.ndarray],
    *,
    epochs: float,
    lr: float,
    batch_size: int = 32,
    seed: int = 0,
    desc: str = "distil",
    progress: ModelProgress | None = None,
    bf16: bool = False,
) -> SentenceEncoder:
    """Distil an encoder: match the teacher's per-layer token states and its embedding.

    Student layer k imitates teacher layer `layer_map(...)[k]` token by token (as in
    TinyBERT / MiniLM): one target per token and layer instead of one per sentence, which
    is what lets a few thousand sentences and a few minutes of CPU recover most of the
    teacher. Batches hold sentences of similar length and are cut to their longest real
    sequence, so the short sentences that dominate the corpus do not pay for padding.
    `bf16`: the forward pass under torch's bfloat16 autocast (weights, optimizer and loss stay
    fp32), where the CPU computes bf16 natively (`repository.hardware.native_bf16`).
    `epochs` may be fractional: 0.5 trains on half the batches of an epoch (a random half: the
    batches come in random order), and the learning-rate schedule spans just those steps.

    The word-embedding table stays as it is (the teacher's): it is half of MiniLM's weights
    (11.7M of 22.6M), a few thousand sentences touch a few thousand of its 30,522 rows, and
    AdamW's update of every row was 40 % of a training step (AMD EPYC, 2 threads, bf16).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.word.weight.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.01)
    mask_all = inputs["attention_mask"]
    count = len(mask_all)
    steps = max(1, math.ceil(epochs * -(-count // batch_size)))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    targets_of = layer_map(len(model.layers), teacher.num_layers)
    lengths = mask_all.sum(axis=1)
    model.train()
    if progress is not None:
        progress.loop(math.ceil(epochs), units=epochs)
    done = 0
    with tqdm(total=steps, desc=desc, unit="step", leave=False) as bar:
        for _ in range(math.ceil(epochs)):
            for rows in _length_buckets(lengths, batch_size, rng)[: steps - done]:
                length = int(mask_all[rows].sum(axis=1).max())
                ids = torch.from_numpy(inputs["input_ids"][rows, :length])
                mask = torch.from_numpy(mask_all[rows, :length])
                targets = teacher.batch(rows, length)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    states = [state.float() for state in model.hidden_states(ids, mask)]
                real = mask.unsqueeze(-1).to(states[-1].dtype)
                scale = real.sum() * states[-1].shape[-1]
                token_term = sum(
                    (
                        ((state - targets[t]) ** 2 * real).sum() / scale
                        for state, t in zip(states, targets_of, strict=True)
                    ),
                    torch.zeros(()),
                )
                pooled, target = model.pool(states[-1], mask), model.pool(targets[-1], mask)
                loss = token_term / len(states) + embedding_loss(pooled, target)
                _step(optimizer, schedule, loss, bar)
                done += 1
            if progress is not None:
                progress.tick()
    return model.eval()


@torch.no_grad()
def embed(model: nn.Module, inputs: dict[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Embeddings of every row, in order, trimmed per batch like `fit_embeddings`."""
    model.eval()
    out = []
    mask_all = inputs["attention_mask"]
    for start in range(0, len(mask_all), batch_size):
        rows = slice(start, start + batch_size)
        length = int(mask_all[rows].sum(axis=1).max())
        ids = torch.from_numpy(inputs["input_ids"][rows, :length])
        mask = torch.from_numpy(mask_all[rows, :length])
        out.append(model(ids, mask).numpy())
    return np.concatenate(out)
