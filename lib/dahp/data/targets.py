"""The attribution target and the training loss (spec: "Notation").

The target of attribution for a query is the margin ``log(p / (1 - p))`` of its correct class,
where ``p`` is the predicted probability of that class. Going through ``p`` (or through
``log1p(-exp(log p))``) overflows for confident predictions in float32 and turns gradients into
NaN, so the margin is computed directly from the logits as ``z_c - logsumexp_{j != c} z_j``,
which is finite and has a finite gradient at any confidence.

Book: "Data attribution and the LDS".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def correct_class_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Margin ``log(p_c / (1 - p_c))`` of the correct class, computed stably from logits.

    Args:
        logits: shape ``(batch, n_classes)``.
        labels: shape ``(batch,)``, integer class indices.

    Returns:
        Shape ``(batch,)``.
    """
    correct = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    # a comparison mask rather than F.one_hot, which cannot run under vmap
    is_correct = labels.unsqueeze(-1) == torch.arange(logits.shape[-1], device=logits.device)
    others = logits.masked_fill(is_correct, float("-inf"))
    return correct - torch.logsumexp(others, dim=-1)


def correct_class_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Predicted probability of the correct class, shape ``(batch,)`` (used by TRAK's weights)."""
    return torch.softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch: the training loss of every classification setting."""
    return F.cross_entropy(logits, labels)


def correct_prediction(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where the top class is the label, else 0.0, shape ``(batch,)`` (test accuracy per example)."""
    return (logits.argmax(-1) == labels).float()
