"""Small, fast variants of the embedded settings for tests."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from dahp.config import TrainingRecipe
from dahp.settings import Setting, get_setting


def quick(name: str, **recipe: float) -> Setting:
    """The embedded setting ``name`` with a short recipe (same data, same model)."""
    base = get_setting(name)
    fields = {"epochs": 2, "batch_size": 64, "lr": 0.05, **recipe}
    return dataclasses.replace(base, recipe=TrainingRecipe(**fields))


class TinyBatchNormNet(nn.Module):
    """A model with buffers, which the vmap path cannot train: exercises the sequential fallback."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)
        self.norm = nn.BatchNorm1d(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x.view(x.shape[0], -1)))


def _every_tenth_training_point(root):
    from dahp.settings import SplitData, load_mnist_embedded

    full = load_mnist_embedded(root)
    return SplitData(full.x_train[::10], full.y_train[::10], full.x_val, full.y_val, full.x_test, full.y_test)


def small(name: str, **recipe: float) -> Setting:
    """:func:`quick` on 400 training points (every tenth, all classes): for comparisons with dattri."""
    return dataclasses.replace(quick(name, **recipe), load=_every_tenth_training_point)


def as_float64(state: dict) -> dict:
    """A copy of a state dict in float64."""
    return {k: v.double() for k, v in state.items()}


def registered(setting: Setting, name: str) -> str:
    """Register ``setting`` under ``name`` (once per process) so name-based APIs can use it.

    Test settings end in ``_quick``, so that tests of the registry can tell them from the paper's.
    """
    from dahp.settings import _SETTINGS, register

    assert name.endswith("_quick"), f"test settings are named *_quick, got {name!r}"

    if name not in _SETTINGS:
        register(dataclasses.replace(setting, name=name))
    return name
