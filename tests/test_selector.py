"""The public selector works on a model this package does not define: a small CNN on sklearn digits."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from dahp.core.config import InvalidParameterError
from dahp.data.targets import correct_class_margin
from dahp.selection import rules
from dahp.selection.rules import RecipeFacts
from dahp.selection.selector import select_regularization


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
    assert xi_bar_by_hand(model, state, x, y, xq, yq, result.xi_pick.regularization) == pytest.approx(0.5, abs=3e-3)
    # the default without retraining is the median of the three estimates; the paper's rule is rule="xi"
    assert result.rule == rules.DEFAULT_NO_RETRAINING == "median_xi_recipe"
    three = sorted(result.pick(n).regularization for n in ("xi_continuous", "xi_saturation_0.9", "recipe"))
    assert result.regularization == result.pick("median_xi_recipe").regularization == three[1]
    paper = select_regularization(task, train_loader, val_loader, "iffim", rule="xi", lr=0.1, steps=steps)
    assert paper.rule == "xi" and paper.regularization == result.xi_pick.regularization
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


def test_default_mode_reports_every_rule_with_a_diagnosis(digits_task):
    task, (train_loader, val_loader), _, steps = digits_task
    result = select_regularization(task, train_loader, val_loader, "iffim", lr=0.1, steps=steps)
    names = [p.rule for p in result.picks]
    assert result.mode == "no_retraining" and result.trainings == 0
    assert {"xi_grid_0.5", "xi_continuous", "recipe", "published_default", "mean_eig_0.1"} <= set(names)
    assert not any(n.startswith("budget_") for n in names) and "xi_fitted" not in names
    assert all(p.diagnosis and p.trainings == 0 for p in result.picks)
    assert result.pick("xi_continuous").regularization == pytest.approx(result.xi_pick.regularization)
    assert result.pick("xi_grid_0.5").regularization == result.grid_pick.regularization
    assert result.pick("recipe").regularization == pytest.approx(1 / (0.1 * steps))
    chosen = select_regularization(task, train_loader, val_loader, "iffim", rule="xi_saturation_0.9")
    assert chosen.regularization == chosen.pick("xi_saturation_0.9").regularization


def brute_force_validation_lds(model_template, states, subsets, x, y, xq, yq, grid):
    """Mean validation LDS at each λ from explicit gradients, an explicit inverse and SciPy's Spearman."""
    from scipy.stats import spearmanr

    def grads(xs, ys, state, fn):
        rows = []
        for xi_, yi in zip(xs, ys):
            model_template.load_state_dict(state)
            model_template.zero_grad()
            fn(model_template(xi_[None]), yi[None]).sum().backward()
            rows.append(torch.cat([p.grad.reshape(-1) for p in model_template.parameters()]).double())
        return torch.stack(rows)

    full, retrained = states
    G, Q = grads(x, y, full, nn.functional.cross_entropy), grads(xq, yq, full, correct_class_margin)
    F = G.T @ G / len(G)
    outputs = []
    for state in retrained:
        model_template.load_state_dict(state)
        with torch.no_grad():
            outputs.append(correct_class_margin(model_template(xq), yq).double())
    outputs = torch.stack(outputs).numpy()
    values = []
    for lam in grid:
        scores = -(G @ torch.linalg.solve(F + lam * torch.eye(F.shape[0], dtype=F.dtype), Q.T)).numpy()
        sums = np.stack([scores[s].sum(0) for s in subsets])
        values.append(np.nanmean([spearmanr(sums[:, k], outputs[:, k])[0] for k in range(len(yq))]))
    return np.array(values)


def test_budget_mode_spends_at_most_its_budget_and_matches_a_brute_force_argmax(digits_task):
    task, (train_loader, val_loader), (x, y, xq, yq, state, _), _ = digits_task
    calls, states, seen = [], [], []

    def retrain(train_indices, seed):
        calls.append(seed)
        seen.append(train_indices)
        torch.manual_seed(seed)
        net = TinyCNN()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(30):
            for start in range(0, len(train_indices), 50):
                rows = torch.as_tensor(train_indices[start : start + 50])
                optimizer.zero_grad()
                nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
                optimizer.step()
        states.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        return net

    grid = [float(v) for v in np.logspace(-5, 1, 13)]
    result = select_regularization(
        task, train_loader, val_loader, "iffim", candidates=grid, retrain=retrain, max_retrainings=4
    )
    assert len(calls) == 4 == result.trainings and result.mode == "budget" and result.retrain_seconds > 0
    assert all(len(s) == 150 and len(set(s.tolist())) == 150 for s in seen)  # α = 0.5 of 300, no repeats
    default = f"{rules.DEFAULT_BUDGET}_4"
    assert result.rule == default and result.regularization == result.pick(default).regularization
    names = [p.rule for p in result.picks]
    assert {"budget_val_lds_2", "budget_val_lds_4", "budget_bracket_4", "budget_span_4"} <= set(
        names
    ) and "budget_val_lds_5" not in names
    assert all(p.trainings <= 4 for p in result.picks)

    expected = brute_force_validation_lds(TinyCNN(), (state, states), seen, x, y, xq, yq, grid)
    assert result.pick("budget_val_lds_4").regularization == grid[int(np.nanargmax(expected))]
    two = brute_force_validation_lds(TinyCNN(), (state, states[:2]), seen[:2], x, y, xq, yq, grid)
    assert result.pick("budget_val_lds_2").regularization == grid[int(np.nanargmax(two))]
    bracketed = result.pick("budget_bracket_4")
    low, high = (float(v) for v in bracketed.diagnosis.split("[")[1].split("]")[0].split(", "))
    inside = [k for k, lam in enumerate(grid) if low * (1 - 1e-2) <= lam <= high * (1 + 1e-2)]
    assert bracketed.regularization == grid[max(inside, key=lambda k: expected[k])]
    # the span rule: the argmax of the same brute-force LDS over the grid λ within half a decade of the
    # smallest and the largest of the three estimates
    three = [result.pick(n).regularization for n in ("xi_continuous", "xi_saturation_0.9", "xi_max_slope")]
    low, high = min(three) / 10**0.5, max(three) * 10**0.5
    inside = [k for k, lam in enumerate(grid) if low * (1 - 1e-9) <= lam <= high * (1 + 1e-9)]
    assert inside and result.pick("budget_span_4").regularization == grid[max(inside, key=lambda k: expected[k])]


def test_budget_mode_bad_input_refused_before_any_retraining(digits_task):
    task, (train_loader, val_loader), _, _ = digits_task
    calls = []

    def retrain(indices, seed):
        calls.append(seed)

    with pytest.raises(InvalidParameterError, match="max_retrainings"):
        select_regularization(task, train_loader, val_loader, retrain=retrain, max_retrainings=1)
    with pytest.raises(InvalidParameterError, match="retrain"):
        select_regularization(task, train_loader, val_loader, retrain="not a function")
    with pytest.raises(InvalidParameterError, match="alpha"):
        select_regularization(task, train_loader, val_loader, retrain=retrain, alpha=1.0)
    with pytest.raises(InvalidParameterError, match="budget"):
        select_regularization(task, train_loader, val_loader, rule="budget_bracket_5")
    with pytest.raises(InvalidParameterError, match="rule"):
        select_regularization(task, train_loader, val_loader, retrain=retrain, rule="budget_val_lds_10")
    with pytest.raises(InvalidParameterError, match="candidates"):
        select_regularization(task, train_loader, val_loader, candidates=[1.0, 0.1])
    with pytest.raises(InvalidParameterError, match=r"recipe\.n_train"):
        select_regularization(
            task, train_loader, val_loader, recipe=RecipeFacts.sgd(0.1, 10, n_train=299, n_params=410)
        )
    with pytest.raises(InvalidParameterError, match="fitted"):
        select_regularization(task, train_loader, val_loader, fitted={"recipe": {"factor": 2.0}})
    with pytest.raises(InvalidParameterError, match="retrain"):
        select_regularization(task, train_loader, val_loader, retrain=retrain, max_retrainings=2)  # returns None
    assert len(calls) == 1  # the only call: the one whose None result was refused


def test_trak_margins_and_the_gauss_newton_recipe(digits_task):
    from dahp.selection.selector import train_margins

    task, (train_loader, val_loader), (x, y, _, _, state, model), steps = digits_task
    model.load_state_dict(state)
    with torch.no_grad():
        expected = correct_class_margin(model(x), y).double().numpy()
    margins = train_margins(task, train_loader, "cpu")
    assert margins.shape == (1, 300) and np.allclose(margins[0], expected, atol=1e-5)
    result = select_regularization(task, train_loader, val_loader, "trak", proj_dim=64, lr=0.1, steps=steps)
    converted, plain = result.pick("recipe_gauss_newton"), result.pick("recipe")
    assert converted.regularization > plain.regularization  # divided by a mean p(1 − p) <= 1/4
    iffim = select_regularization(task, train_loader, val_loader, "iffim", lr=0.1, steps=steps)
    assert "recipe_gauss_newton" not in [p.rule for p in iffim.picks]
