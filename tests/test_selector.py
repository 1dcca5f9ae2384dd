"""The public selector works on a model this package does not define: a small CNN on sklearn digits."""

import functools
import re

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
from dahp.selection import selector as selector_module
from dahp.selection.rules import RecipeFacts
from dahp.selection.selector import select_regularization

#: the selector with its progress bars off, as the tests call it
select = functools.partial(select_regularization, progress=False)


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
    result = select(task, train_loader, val_loader, "iffim", lr=0.1, steps=steps)
    assert result.xi_pick.xi_bar == pytest.approx(0.5, abs=2e-3)
    assert np.all(np.diff(result.xi_bar) > -1e-9) and result.xi_bar.min() >= 0 and result.xi_bar.max() <= 1
    assert xi_bar_by_hand(model, state, x, y, xq, yq, result.xi_pick.regularization) == pytest.approx(0.5, abs=3e-3)
    # the default without retraining is the median of the three estimates; the paper's rule is rule="xi"
    assert result.rule == rules.DEFAULT_NO_RETRAINING == "median_xi_recipe"
    three = sorted(result.pick(n).regularization for n in ("xi_continuous", "xi_saturation_0.9", "recipe"))
    assert result.regularization == result.pick("median_xi_recipe").regularization == three[1]
    paper = select(task, train_loader, val_loader, "iffim", rule="xi", lr=0.1, steps=steps)
    assert paper.rule == "xi" and paper.regularization == result.xi_pick.regularization
    assert result.recipe_regularization == pytest.approx(1 / (0.1 * steps))
    recipe = select(task, train_loader, val_loader, "iffim", rule="recipe", lr=0.1, steps=steps)
    assert recipe.regularization == result.recipe_regularization and recipe.rule == "recipe"


def test_trak_selection_with_projection(digits_task):
    task, (train_loader, val_loader), _, _ = digits_task
    result = select(task, train_loader, val_loader, "trak", proj_dim=64)
    assert result.xi_pick.xi_bar == pytest.approx(0.5, abs=2e-3)
    assert result.grid_pick.regularization in result.candidates


def test_selector_bad_input(digits_task):
    task, (train_loader, val_loader), _, _ = digits_task
    with pytest.raises(InvalidParameterError, match="attributor='tracin'"):
        select(task, train_loader, val_loader, "tracin")
    with pytest.raises(InvalidParameterError, match="rule"):
        select(task, train_loader, val_loader, rule="recipe")
    with pytest.raises(InvalidParameterError, match="proj_dim=100000"):
        select(task, train_loader, val_loader, proj_dim=100_000)


def test_default_mode_reports_every_rule_with_a_diagnosis(digits_task):
    task, (train_loader, val_loader), _, steps = digits_task
    result = select(task, train_loader, val_loader, "iffim", lr=0.1, steps=steps)
    names = [p.rule for p in result.picks]
    assert result.mode == "no_retraining" and result.trainings == 0
    assert {"xi_grid_0.5", "xi_continuous", "recipe", "published_default", "mean_eig_0.1"} <= set(names)
    assert not any(n.startswith("budget_") for n in names) and "xi_fitted" not in names
    assert all(p.diagnosis and p.trainings == 0 for p in result.picks)
    assert result.pick("xi_continuous").regularization == pytest.approx(result.xi_pick.regularization)
    assert result.pick("xi_grid_0.5").regularization == result.grid_pick.regularization
    assert result.pick("recipe").regularization == pytest.approx(1 / (0.1 * steps))
    chosen = select(task, train_loader, val_loader, "iffim", rule="xi_saturation_0.9")
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
    result = select(task, train_loader, val_loader, "iffim", candidates=grid, retrain=retrain, max_retrainings=4)
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
    # the frame's validation LDS at the pick is the brute-force mean there, with a standard error over queries
    mean, se = result.validation_lds["budget_val_lds_4"]
    assert mean == pytest.approx(np.nanmax(expected), abs=1e-9) and 0 < se < 1
    row = result.to_frame().set_index("rule").loc["budget_val_lds_4"]
    assert (row.validation_lds, row.validation_lds_se, row.trainings) == (mean, se, 4)
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
        select(task, train_loader, val_loader, retrain=retrain, max_retrainings=1)
    with pytest.raises(InvalidParameterError, match="retrain"):
        select(task, train_loader, val_loader, retrain="not a function")
    with pytest.raises(InvalidParameterError, match="alpha"):
        select(task, train_loader, val_loader, retrain=retrain, alpha=1.0)
    with pytest.raises(InvalidParameterError, match="budget"):
        select(task, train_loader, val_loader, rule="budget_bracket_5")
    with pytest.raises(InvalidParameterError, match="rule"):
        select(task, train_loader, val_loader, retrain=retrain, rule="budget_val_lds_10")
    with pytest.raises(InvalidParameterError, match="candidates"):
        select(task, train_loader, val_loader, candidates=[1.0, 0.1])
    with pytest.raises(InvalidParameterError, match=r"recipe\.n_train"):
        select(task, train_loader, val_loader, recipe=RecipeFacts.sgd(0.1, 10, n_train=299, n_params=410))
    with pytest.raises(InvalidParameterError, match="fitted"):
        select(task, train_loader, val_loader, fitted={"recipe": {"factor": 2.0}})
    with pytest.raises(InvalidParameterError, match="retrain"):
        select(task, train_loader, val_loader, retrain=retrain, max_retrainings=2)  # returns None
    assert len(calls) == 1  # the only call: the one whose None result was refused


def test_trak_margins_and_the_gauss_newton_recipe(digits_task):
    from dahp.selection.selector import train_margins

    task, (train_loader, val_loader), (x, y, _, _, state, model), steps = digits_task
    model.load_state_dict(state)
    with torch.no_grad():
        expected = correct_class_margin(model(x), y).double().numpy()
    margins = train_margins(task, train_loader, "cpu")
    assert margins.shape == (1, 300) and np.allclose(margins[0], expected, atol=1e-5)
    result = select(task, train_loader, val_loader, "trak", proj_dim=64, lr=0.1, steps=steps)
    converted, plain = result.pick("recipe_gauss_newton"), result.pick("recipe")
    assert converted.regularization > plain.regularization  # divided by a mean p(1 − p) <= 1/4
    iffim = select(task, train_loader, val_loader, "iffim", lr=0.1, steps=steps)
    assert "recipe_gauss_newton" not in [p.rule for p in iffim.picks]


# ------------------------------------------------------------------------------------------------
# every bad argument refused before any gradient is computed


def _retrain_never(train_indices, seed):
    raise AssertionError("retrain was called despite a bad argument")


def _shuffled(loader):
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True)


BAD_ARGUMENTS = [
    ({"attributor": "tracin"}, "attributor"),
    ({"rule": "no_such_rule"}, "rule"),
    ({"rule": "recipe"}, "rule"),  # the recipe rule without lr and steps
    ({"proj_dim": 0}, "proj_dim"),
    ({"proj_dim": 100_000}, "proj_dim"),
    ({"proj_dim": True}, "proj_dim"),
    ({"proj_seed": -1}, "proj_seed"),
    ({"threshold": 1.5}, "threshold"),
    ({"candidates": [1.0, 0.1]}, "candidates"),
    ({"lr": 0.1, "steps": -3}, "steps"),
    ({"lr": 0.1, "steps": 0}, "steps"),
    ({"lr": 0.1, "steps": 2.5}, "steps"),
    ({"lr": 0.0, "steps": 10}, "lr"),
    ({"lr": -0.1, "steps": 10}, "lr"),
    ({"lr": float("nan"), "steps": 10}, "lr"),
    ({"lr": 0.1}, "steps"),  # half a recipe
    ({"steps": 10}, "lr"),
    ({"lr": 0.1, "steps": 10, "momentum": 1.0}, "momentum"),
    ({"momentum": 0.9}, "momentum"),  # momentum alone would be ignored
    ({"recipe": "sgd"}, "recipe"),
    ({"recipe": RecipeFacts.sgd(0.1, 10, n_train=300, n_params=410), "lr": 0.1, "steps": 10}, "lr/steps/momentum"),
    ({"recipe": RecipeFacts.sgd(0.1, 10, n_train=299, n_params=410)}, "recipe.n_train"),
    ({"recipe": RecipeFacts.sgd(0.1, 10, n_train=300, n_params=409)}, "recipe.n_params"),
    ({"fitted": {"recipe": {"factor": 2.0}}}, "fitted"),
    ({"progress": "yes"}, "progress"),
    ({"retrain": "not a function"}, "retrain"),
    ({"retrain": lambda train_indices: None}, "retrain"),  # one argument short of retrain(train_indices, seed)
    ({"retrain": lambda train_indices, seed, model: None}, "retrain"),  # one too many
    ({"retrain": _retrain_never, "max_retrainings": 1}, "max_retrainings"),
    ({"retrain": _retrain_never, "max_retrainings": 0}, "max_retrainings"),
    ({"retrain": _retrain_never, "max_retrainings": True}, "max_retrainings"),
    ({"retrain": _retrain_never, "alpha": 1.0}, "alpha"),
    ({"retrain": _retrain_never, "retrain_seed": -1}, "retrain_seed"),
    ({"retrain": _retrain_never, "val_outputs": lambda: None}, "val_outputs"),
    ({"retrain": _retrain_never, "rule": "budget_val_lds_10"}, "rule"),  # more models than the budget
    ({"rule": "budget_bracket_5"}, "rule"),  # a budget rule without retrain=
    ({"retrain": _retrain_never, "train_loader": "shuffled"}, "train_loader"),
    ({"retrain": _retrain_never, "val_loader": "shuffled"}, "val_loader"),
    ({"attributor": "trak", "lr": 0.1, "steps": 10, "train_loader": "shuffled"}, "train_loader"),  # margins
    ({"train_loader": 3}, "train_loader"),
    ({"task": object()}, "task"),
]


@pytest.mark.parametrize("kwargs, parameter", BAD_ARGUMENTS, ids=[p + str(i) for i, (_, p) in enumerate(BAD_ARGUMENTS)])
def test_every_bad_argument_is_refused_before_any_gradient(digits_task, monkeypatch, kwargs, parameter):
    def no_gradients(*args, **kw):
        raise AssertionError("gradients were computed despite a bad argument")

    monkeypatch.setattr(selector_module, "task_gradient_rows", no_gradients)
    task, (train_loader, val_loader), _, _ = digits_task
    arguments = {"task": task, "train_loader": train_loader, "val_loader": val_loader, **kwargs}
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
        if arguments[name] == "shuffled":
            arguments[name] = _shuffled(loader)
    with pytest.raises(InvalidParameterError, match=f"^invalid {re.escape(parameter)}=") as refused:
        select(**arguments)
    assert refused.value.parameter == parameter and "\n" not in str(refused.value)


def test_a_shuffled_loader_without_retraining_warns_once_and_gives_the_same_lambda(digits_task):
    task, (train_loader, val_loader), _, steps = digits_task
    ordered = select(task, train_loader, val_loader, "iffim", lr=0.1, steps=steps)
    torch.manual_seed(1)
    with pytest.warns(UserWarning, match="train_loader is shuffled") as caught:
        shuffled = select(task, _shuffled(train_loader), val_loader, "iffim", lr=0.1, steps=steps)
    assert len([w for w in caught if "shuffled" in str(w.message)]) == 1
    assert len(str(caught[0].message).splitlines()) == 1
    # every retraining-free rule reads the Gram matrix and the query projections only: the order does not count
    assert shuffled.regularization == pytest.approx(ordered.regularization, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# the budget never exceeded


def _noisy_copy(task, counter):
    """A ``retrain`` that counts its calls and returns the task's model with seeded noise on its weights
    (cheap; the count is what is tested)."""
    base = task.get_model()
    state = {k: v.detach().clone() for k, v in task.get_checkpoints()[0].items()}

    def retrain(train_indices, seed):
        counter.append((len(train_indices), seed))
        gen = torch.Generator().manual_seed(int(seed))
        return {
            k: v + 0.05 * torch.randn(v.shape, generator=gen)
            for k, v in state.items()
            if k in dict(base.named_parameters())
        }

    return retrain


@pytest.mark.parametrize("budget, rule", [(2, None), (3, None), (3, "budget_val_lds_2"), (6, "budget_bracket_6")])
def test_budget_mode_never_calls_retrain_more_than_the_maximum(digits_task, budget, rule):
    task, (train_loader, val_loader), _, steps = digits_task
    calls = []
    result = select(
        task, train_loader, val_loader, "iffim", lr=0.1, steps=steps, retrain=_noisy_copy(task, calls),
        max_retrainings=budget, rule=rule,
    )  # fmt: skip
    assert 2 <= len(calls) <= budget and result.trainings == len(calls)
    assert len({seed for _, seed in calls}) == len(calls)  # each model its own seed
    assert all(p.trainings <= budget for p in result.picks)
    frame = result.to_frame()
    budget_rows = frame[frame.trainings > 0]
    assert len(budget_rows) and budget_rows.validation_lds.notna().all() and (budget_rows.validation_lds_se > 0).all()
    assert frame[frame.trainings == 0].validation_lds.isna().all()


# ------------------------------------------------------------------------------------------------
# what the result says


def test_result_repr_summary_and_frame(digits_task):
    task, (train_loader, val_loader), _, steps = digits_task
    result = select(task, train_loader, val_loader, "iffim", lr=0.1, steps=steps)
    text = repr(result)
    assert len(text.splitlines()) == 1 and len(text) < 200
    assert f"{result.regularization:.4g}" in text and result.rule in text and f"{len(result.picks)} rules" in text
    summary = result.summary()
    assert (
        summary.splitlines()[0]
        == f"use λ = {result.regularization:.4g}  [median_xi_recipe (the package default without retraining)]"
    )
    assert "why: median of" in summary and "scale: the mean-loss scale" in summary
    # the confidence line states the spread of the three estimates, in decades
    three = [result.pick(n).regularization for n in ("xi_continuous", "xi_saturation_0.9", "recipe")]
    spread = np.log10(max(three) / min(three))
    assert result.estimates == ("xi_continuous", "xi_saturation_0.9", "recipe")
    assert result.agreement_decades() == pytest.approx(spread)
    assert f"span {spread:.2f} decades" in summary
    # and whether the recipe's estimate supports the ξ̄ bracket: the "don't know" flag, in the same words
    assert ("supported:" in summary) == (result.dont_know is None)
    assert ("uncertain:" in summary) == (result.dont_know is not None)
    frame = result.to_frame()
    assert list(frame.columns) == [
        "rule", "regularization", "diagnosis", "trainings", "seconds", "validation_lds", "validation_lds_se", "chosen",
    ]  # fmt: skip
    assert list(frame.rule) == [p.rule for p in result.picks]
    assert frame.set_index("rule").loc["recipe", "regularization"] == result.pick("recipe").regularization
    assert frame.chosen.sum() == 1 and frame[frame.chosen].rule.item() == result.rule
    assert (frame.trainings == 0).all() and frame.validation_lds.isna().all()


def test_progress_bars_only_when_asked(digits_task, monkeypatch, capsys):
    monkeypatch.delenv("DAHP_PROGRESS", raising=False)
    task, (train_loader, val_loader), _, _ = digits_task
    capsys.readouterr()
    select(task, train_loader, val_loader, "trak", proj_dim=16)
    assert capsys.readouterr().err == ""
    select_regularization(task, train_loader, val_loader, "trak", proj_dim=16)
    err = capsys.readouterr().err
    assert "gradients" in err and "4/4" in err  # 3 training + 1 validation batch, one checkpoint
