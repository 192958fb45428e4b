"""The distillation losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from slimserve.variants.distill import embedding_loss, hinton_loss, layer_map


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
