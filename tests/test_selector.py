"""The public selector works on a model this package does not define: a small CNN on sklearn digits."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from dahp.config import InvalidParameterError
from dahp.selector import select_regularization
from dahp.targets import correct_class_margin


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=3)
        self.head = nn.Linear(4 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(nn.functional.max_pool2d(self.conv(x), 2))
        return self.head(h.flatten(1))


@pytest.fixture(scope="module")
def digits_task():
    from dattri.task import AttributionTask

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)
    train, val = slice(0, 300), slice(300, 360)
    torch.manual_seed(0)
    model = TinyCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoints, steps = [], 0
    for epoch in range(30):
        for start in range(0, 300, 50):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[start : start + 50]), y[start : start + 50]).backward()
            optimizer.step()
            steps += 1
        if epoch >= 28:
            checkpoints.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    def as_batch(data):
        xb, yb = data
        return xb.reshape(-1, 1, 8, 8), yb.reshape(-1)

    def loss(params, data):
        xb, yb = as_batch(data)
        return nn.functional.cross_entropy(functional_call(model, params, (xb,)), yb)

    def target(params, data):
        xb, yb = as_batch(data)
        return correct_class_margin(functional_call(model, params, (xb,)), yb).sum()

    task = AttributionTask(loss_func=loss, model=model, checkpoints=checkpoints[-1], target_func=target)
    loaders = (
        DataLoader(TensorDataset(x[train], y[train]), batch_size=100),
        DataLoader(TensorDataset(x[val], y[val]), batch_size=100),
    )
    return task, loaders, (x[train], y[train], x[val], y[val], checkpoints[-1], model), steps


def xi_bar_by_hand(model, state, x, y, xq, yq, lam):
    """ξ̄ from explicitly formed per-example gradients and Fisher (an independent path)."""

    def grads(xs, ys, fn):
        rows = []
        for xi_, yi in zip(xs, ys):
            model.load_state_dict(state)
            model.zero_grad()
            fn(model(xi_[None]), yi[None]).sum().backward()
            rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
        return torch.stack(rows)

    G = grads(x, y, nn.functional.cross_entropy)
    Q = grads(xq, yq, correct_class_margin)
    F = G.T @ G / len(G)
    A = torch.linalg.inv(F + lam * torch.eye(F.shape[0], dtype=F.dtype))
    values = []
    for g in Q:
        quad = lambda M: g @ F @ M @ g
        values.append(quad(A @ A) / torch.sqrt(quad(A) * quad(A @ A @ A)))
    return torch.stack(values).mean().item()


def test_iffim_selection_on_a_foreign_cnn(digits_task):
    task, (train_loader, val_loader), (x, y, xq, yq, state, model), steps = digits_task
    result = select_regularization(task, train_loader, val_loader, "iffim", lr=0.1, steps=steps)
    assert result.xi_pick.xi_bar == pytest.approx(0.5, abs=2e-3)
    assert np.all(np.diff(result.xi_bar) > -1e-9) and result.xi_bar.min() >= 0 and result.xi_bar.max() <= 1
    assert xi_bar_by_hand(model, state, x, y, xq, yq, result.regularization) == pytest.approx(0.5, abs=3e-3)
    assert result.recipe_regularization == pytest.approx(1 / (0.1 * steps))
    recipe = select_regularization(task, train_loader, val_loader, "iffim", rule="recipe", lr=0.1, steps=steps)
    assert recipe.regularization == result.recipe_regularization and recipe.rule == "recipe"


def test_trak_selection_with_projection(digits_task):
    task, (train_loader, val_loader), _, _ = digits_task
    result = select_regularization(task, train_loader, val_loader, "trak", proj_dim=64)
    assert result.xi_pick.xi_bar == pytest.approx(0.5, abs=2e-3)
    assert result.grid_pick.regularization in result.candidates


def test_selector_bad_input(digits_task):
    task, (train_loader, val_loader), _, _ = digits_task
    with pytest.raises(InvalidParameterError, match="attributor='tracin'"):
        select_regularization(task, train_loader, val_loader, "tracin")
    with pytest.raises(InvalidParameterError, match="rule"):
        select_regularization(task, train_loader, val_loader, rule="recipe")
    with pytest.raises(InvalidParameterError, match="proj_dim=100000"):
        select_regularization(task, train_loader, val_loader, proj_dim=100_000)
