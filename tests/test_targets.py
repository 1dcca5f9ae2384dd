"""The margin log(p / (1 - p)) of the correct class, including confident predictions."""

import math

import pytest
import torch

from dahp.data.targets import correct_class_margin, correct_class_probability


def logits_with_probability(p: float, n_classes: int = 10, dtype=torch.float64) -> torch.Tensor:
    """Logits whose class-0 probability is exactly p, the rest spread evenly."""
    rest = (1 - p) / (n_classes - 1)
    return torch.log(torch.tensor([[p] + [rest] * (n_classes - 1)], dtype=dtype))


@pytest.mark.parametrize("p", [1e-9, 1e-4, 0.1, 0.5, 0.9, 1 - 1e-4, 1 - 1e-9])
def test_margin_is_log_odds_of_correct_class(p):
    logits = logits_with_probability(p)
    margin = correct_class_margin(logits, torch.tensor([0]))
    assert margin.item() == pytest.approx(math.log(p / (1 - p)), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("p", [1e-9, 1 - 1e-9])
def test_margin_and_gradient_finite_for_confident_float32_predictions(p):
    # Build the float32 logits directly: z_0 - z_j = log(p / rest) for every other class j.
    rest = (1 - p) / 9
    logits = torch.zeros(1, 10)
    logits[0, 0] = math.log(p) - math.log(rest)
    logits.requires_grad_(True)
    margin = correct_class_margin(logits, torch.tensor([0]))
    margin.sum().backward()
    assert torch.isfinite(margin).all() and torch.isfinite(logits.grad).all()
    assert margin.item() == pytest.approx(math.log(p / (1 - p)), rel=1e-5)
    # d margin / d z_0 = 1 and the other classes share -1 (softmax over the other classes).
    assert logits.grad[0, 0].item() == pytest.approx(1.0)
    assert logits.grad[0, 1:].sum().item() == pytest.approx(-1.0, rel=1e-6)


def test_naive_formula_breaks_where_ours_does_not():
    logits = torch.tensor([[40.0, 0.0, 0.0]])
    p = correct_class_probability(logits, torch.tensor([0]))
    assert not torch.isfinite(torch.log(p / (1 - p))).all()  # float32 p rounds to 1
    assert correct_class_margin(logits, torch.tensor([0])).item() == pytest.approx(40 - math.log(2))


def test_margin_gradient_matches_autograd_of_log_odds_in_float64():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 1])
    ours = torch.autograd.grad(correct_class_margin(logits, labels).sum(), logits)[0]
    p = correct_class_probability(logits, labels)
    naive = torch.autograd.grad(torch.log(p / (1 - p)).sum(), logits)[0]
    torch.testing.assert_close(ours, naive)
