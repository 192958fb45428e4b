"""The distillation losses against values computed by hand, and bf16 training's contract."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from slimserve.variants.distill import (
    LiveLogits,
    LiveTeacherStates,
    StoredLogits,
    TeacherStates,
    TrainingTextTooLargeError,
    classifier_targets,
    embedding_loss,
    fit_classifier,
    fit_encoder,
    hinton_loss,
    layer_map,
    teacher_states_for,
)
from slimserve.variants.models.encoder import load_minilm
from slimserve.variants.progress import ModelProgress
from tests.fake_clock import FakeClock


def test_hinton_loss_matches_hand_computed_value() -> None:
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0]])
    labels = torch.tensor([0])
    temperature, alpha = 2.0, 0.25
    # Soft targets at T=2: softmax([0, .5]) for the teacher, softmax([.5, 0]) for the student.
    p_t = [1 / (1 + math.exp(0.5)), math.exp(0.5) / (1 + math.exp(0.5))]
    p_s = [p_t[1], p_t[0]]
    kl = sum(t * math.log(t / s) for t, s in zip(p_t, p_s, strict=True))
    ce = -math.log(math.exp(1) / (math.exp(1) + 1))
    expected = alpha * temperature**2 * kl + (1 - alpha) * ce
    actual = hinton_loss(student, teacher, labels, temperature, alpha)
    assert actual.item() == pytest.approx(expected, rel=1e-6)


def test_hinton_loss_is_pure_cross_entropy_when_alpha_is_zero() -> None:
    student = torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    loss = hinton_loss(student, torch.randn(8, 5), labels, temperature=3.0, alpha=0.0)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(student, labels).item(), rel=1e-6)


def test_embedding_loss_is_zero_only_for_identical_embeddings() -> None:
    a = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    assert embedding_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert embedding_loss(a, -a).item() > 1.0


def test_layer_map_spreads_student_layers_over_the_teacher() -> None:
    assert layer_map(3, 6) == [1, 3, 5]
    assert layer_map(6, 6) == [0, 1, 2, 3, 4, 5]
    assert layer_map(2, 6) == [2, 5]


def _token_rows(rows: int = 16, tokens: int = 12) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(1000, 2000, (rows, tokens), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def test_bf16_teacher_states_are_close_to_fp32_and_really_bf16() -> None:
    teacher = load_minilm()
    inputs = _token_rows()
    rows = np.arange(len(inputs["input_ids"]))
    exact = TeacherStates(teacher, inputs).batch(rows, 12).numpy()
    rounded = TeacherStates(teacher, inputs, bf16=True).batch(rows, 12).numpy()
    relative = np.abs(rounded - exact).mean() / np.abs(exact).mean()
    assert 0 < relative < 0.02  # bf16 keeps 8 bits of mantissa: close, yet not the fp32 values


def test_teacher_states_are_each_rows_own_whatever_order_they_were_computed_in() -> None:
    teacher = load_minilm()
    inputs = _token_rows(rows=70)
    lengths = np.random.default_rng(1).integers(3, 13, 70)  # two batches of 64, lengths mixed
    inputs["attention_mask"] = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
    states = TeacherStates(teacher, inputs)
    for row in (0, 5, 63, 64, 69):
        alone = {k: v[row : row + 1, : lengths[row]] for k, v in inputs.items()}
        with torch.no_grad():
            expected = torch.stack(teacher.hidden_states(torch.from_numpy(alone["input_ids"]),
                                                         torch.from_numpy(alone["attention_mask"])))[:, 0]  # fmt: skip
        got = states.batch(np.array([row]), 12)[:, 0]
        assert got.shape == (6, 12, 384)
        np.testing.assert_allclose(got[:, : lengths[row]].numpy(), expected.numpy(), atol=2e-2)  # float16 storage
        assert not got[:, lengths[row] :].any()


def test_training_text_whose_states_would_not_fit_is_refused_before_any_is_computed() -> None:
    teacher = load_minilm()
    inputs = _token_rows(rows=1000)  # 12,000 tokens: 12,000 × 6 layers × 384 × 2 bytes = 55 MB of states
    with pytest.raises(TrainingTextTooLargeError, match=r"1,000 training sentences \(12,000 tokens\) need 0\.1 GiB"):
        TeacherStates(teacher, inputs, available_bytes=50 * 2**20)
    assert len(TeacherStates(teacher, _token_rows(rows=4), available_bytes=50 * 2**20).batch(np.arange(4), 12)) == 6


def _mixed_lengths(rows: int) -> dict[str, np.ndarray]:
    inputs = _token_rows(rows=rows)
    lengths = np.random.default_rng(1).integers(3, 13, rows)
    inputs["attention_mask"] = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
    return inputs


def test_states_computed_per_batch_are_the_stored_ones_and_zero_past_each_rows_tokens() -> None:
    teacher = load_minilm()
    inputs = _mixed_lengths(70)
    rows = np.array([69, 0, 5, 64, 63])  # any rows, in any order, as training batches ask
    stored = TeacherStates(teacher, inputs).batch(rows, 12).numpy()
    live = LiveTeacherStates(teacher, inputs).batch(rows, 12).numpy()
    assert live.shape == stored.shape == (6, 5, 12, 384)
    np.testing.assert_allclose(live, stored, atol=2e-2)  # stored as float16
    lengths = inputs["attention_mask"][rows].sum(axis=1)
    for i, length in enumerate(lengths):
        assert not live[:, i, length:].any() and live[:, i, :length].any()


def test_states_that_would_not_fit_are_computed_per_batch_and_train_the_same_loop() -> None:
    teacher = load_minilm()
    small, large = _mixed_lengths(4), _token_rows(rows=1000)  # 1,000 rows: 55 MB of stored states
    assert isinstance(teacher_states_for(teacher, small, available_bytes=50 * 2**20), TeacherStates)
    assert isinstance(teacher_states_for(teacher, small, available_bytes=None), TeacherStates)
    live = teacher_states_for(teacher, large, available_bytes=50 * 2**20)
    assert isinstance(live, LiveTeacherStates)
    student = copy.deepcopy(teacher)
    student.layers = torch.nn.ModuleList([student.layers[0], student.layers[5]])
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    fit_encoder(student, live, {k: v[:16] for k, v in large.items()}, epochs=1, lr=1e-3, batch_size=8)
    assert [name for name, p in student.named_parameters() if not torch.equal(p, before[name])]


def _classifier(width: int = 16, classes: int = 5) -> torch.nn.Sequential:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(8, width), torch.nn.BatchNorm1d(width), torch.nn.ReLU(), torch.nn.Linear(width, classes)]
    return torch.nn.Sequential(*layers)


def test_stored_logits_are_the_teachers_in_eval_mode_for_any_rows() -> None:
    teacher = _classifier()
    # Trained a little, so that BatchNorm's running statistics differ from a batch's own.
    trained_on = {"x": np.random.default_rng(0).normal(loc=1.0, size=(64, 8)).astype(np.float32)}
    fit_classifier(teacher, trained_on, np.arange(64) % 5, epochs=1, lr=1e-2)
    inputs = {"x": np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)}
    rows = np.array([299, 0, 17, 256, 255])  # across the 256-row passes, in any order
    batch = [torch.from_numpy(inputs["x"][rows])]
    stored = StoredLogits(teacher, inputs, batch_size=256).batch(rows, batch)
    live = LiveLogits(teacher).batch(rows, batch)
    with torch.no_grad():
        expected = teacher.eval()(batch[0])
    assert stored.shape == (5, 5)
    torch.testing.assert_close(stored, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(live, expected)
    assert not teacher.training


def test_logits_that_would_not_fit_are_computed_per_batch_and_distil_the_same_loop() -> None:
    teacher = _classifier(classes=1000)
    inputs = {"x": np.random.default_rng(2).normal(size=(1000, 8)).astype(np.float32)}  # 4 MB of logits
    assert isinstance(classifier_targets(teacher, inputs, available_bytes=20 * 2**20), StoredLogits)
    assert isinstance(classifier_targets(teacher, inputs, available_bytes=None), StoredLogits)
    live = classifier_targets(teacher, inputs, available_bytes=10 * 2**20)
    assert isinstance(live, LiveLogits)
    student = torch.nn.Linear(8, 1000)
    before = student.weight.detach().clone()
    fit_classifier(student, inputs, np.arange(1000), epochs=1, lr=1e-2, teacher=live)
    assert not torch.equal(student.weight, before)


def test_bf16_fine_tuning_keeps_fp32_weights_and_learns() -> None:
    teacher = load_minilm()
    inputs = _token_rows()
    states = TeacherStates(teacher, inputs)
    student = copy.deepcopy(teacher)
    student.layers = torch.nn.ModuleList([student.layers[0], student.layers[5]])
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    fit_encoder(student, states, inputs, epochs=2, lr=1e-3, batch_size=8, bf16=True)
    assert all(p.dtype == torch.float32 for p in student.parameters())
    moved = [name for name, p in student.named_parameters() if not torch.equal(p, before[name])]
    assert len(moved) > len(before) // 2


class _CountedStates:
    """The teacher's stored states, recording the rows of every batch asked of them; each
    batch moves `clock` on by a second (a batch's time, for the progress estimate)."""

    def __init__(self, states: TeacherStates, clock: FakeClock | None = None) -> None:
        self.states, self.num_layers, self.clock = states, states.num_layers, clock
        self.rows: list[list[int]] = []

    def batch(self, rows: np.ndarray, length: int) -> torch.Tensor:
        self.rows.append(sorted(rows.tolist()))
        if self.clock is not None:
            self.clock.advance(1.0)
        return self.states.batch(rows, length)


@pytest.mark.parametrize(("epochs", "batches"), [(0.5, 2), (1, 4), (1.5, 6), (2, 8)])
def test_a_fractional_epoch_trains_on_that_share_of_the_batches(epochs: float, batches: int) -> None:
    teacher = load_minilm()
    inputs = _token_rows(rows=32)
    clock = FakeClock()
    counted = _CountedStates(TeacherStates(teacher, inputs), clock)
    student = copy.deepcopy(teacher)
    student.layers = torch.nn.ModuleList([student.layers[0]])
    progress = ModelProgress("minilm", clock)
    progress.stage("pruned", "prune")
    progress.expect(epochs + 1)  # as if a whole epoch followed
    fit_encoder(student, counted, inputs, epochs=epochs, lr=1e-3, batch_size=8, progress=progress)
    assert len(counted.rows) == batches
    # A part epoch counts as that part of one: an epoch of 4 batches, a second each, is left.
    assert progress.line().remaining_s == pytest.approx(4.0)
    # Whole epochs see every row once each; a part of one, distinct rows of a random half.
    seen = [row for batch in counted.rows for row in batch]
    whole = math.floor(epochs)
    assert sorted(seen[: whole * 32]) == sorted(list(range(32)) * whole)
    assert len(set(seen[whole * 32 :])) == len(seen) - whole * 32
