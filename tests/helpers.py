"""Small, fast variants of the embedded settings for tests."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from dahp.core.config import TrainingRecipe
from dahp.data.settings import Setting, get_setting


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
    from dahp.data.settings import SplitData, load_mnist_embedded

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
    from dahp.data.settings import _SETTINGS, register

    assert name.endswith("_quick"), f"test settings are named *_quick, got {name!r}"

    if name not in _SETTINGS:
        register(dataclasses.replace(setting, name=name))
    return name


def assert_nested_close(found, expected, rel: float = 1e-12, path: str = "") -> None:
    """``found == expected`` for nested dicts/lists, floats to ``rel`` (a headline recomputed from a
    saved table may sum in another order than the one computed in memory: the last bit can differ
    between NumPy/pandas versions), everything else exactly."""
    import math

    if isinstance(expected, dict):
        assert isinstance(found, dict) and set(found) == set(expected), (path, sorted(found), sorted(expected))
        for key in expected:
            assert_nested_close(found[key], expected[key], rel, f"{path}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(found, (list, tuple)) and len(found) == len(expected), path
        for k, (a, b) in enumerate(zip(found, expected)):
            assert_nested_close(a, b, rel, f"{path}[{k}]")
    elif isinstance(expected, float) and not isinstance(found, bool) and isinstance(found, (int, float)):
        both_nan = math.isnan(expected) and math.isnan(found)
        assert both_nan or math.isclose(found, expected, rel_tol=rel, abs_tol=1e-15), (path, found, expected)
    else:
        assert found == expected, (path, found, expected)
