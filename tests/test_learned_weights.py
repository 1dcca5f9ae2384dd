"""Learned parameter-group weights: groups, per-group contributions, the objective and the public API."""

import itertools
import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from dahp.attribution.attributors import make_params, scorer
from dahp.attribution.spectral import eigendecompose
from dahp.core.config import InvalidParameterError
from dahp.data.targets import correct_class_margin
from dahp.methods.learned_weights import (
    ParameterGroup,
    group_products,
    learn_group_weights,
    parameter_groups,
    predicted_labels,
    setting_contributions,
    spectral_contributions,
)
from dahp.methods.weight_fit import (
    GroupWeightConfig,
    fit_weights,
    objective,
    query_objective,
    relative_weights,
    weighted_scores,
)
from dahp.training.train import train_full
from helpers import small

QUERIES = torch.arange(0, 500, 50)  # 10 test queries for the comparisons with dattri


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours.double() - theirs.double()).norm() / theirs.double().norm()).item()


# --------------------------------------------------------------------------------------------
# Groups


def test_groups_cover_the_flattened_gradient_in_named_parameters_order():
    model = small("mnist_mlp").make_model()
    tensors = parameter_groups(model, "tensor")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert [g.name for g in tensors] == names
    assert tensors[0].start == 0 and tensors[-1].stop == sum(p.numel() for p in model.parameters())
    assert all(a.stop == b.start for a, b in itertools.pairwise(tensors))
    assert [g.size for g in tensors] == [p.numel() for p in model.parameters()]
    layers = parameter_groups(model, "layer")
    assert [g.name for g in layers] == ["fc1", "fc2", "fc3"]
    assert [g.tensors for g in layers] == [(f"fc{i}.weight", f"fc{i}.bias") for i in (1, 2, 3)]
    assert [(g.start, g.stop) for g in layers] == [(tensors[2 * i].start, tensors[2 * i + 1].stop) for i in range(3)]


# --------------------------------------------------------------------------------------------
# Σ_j C_j is the attributor's own score


@pytest.mark.parametrize("name", ["mnist_lr", "mnist_mlp"])
def test_iffim_contributions_sum_to_its_scores_at_every_lambda(cache, name):
    setting = small(name, epochs=2)
    contributions = setting_contributions(setting, "iffim", split="test", cache=cache)
    reference = scorer(setting, "iffim", make_params("iffim"), "test", cache, progress=False)
    for lam in (1e-5, 1e-2, 1.0):
        c = contributions.at(lam)
        assert c.shape == (len(parameter_groups(setting.make_model(), "tensor")), 400, 500)
        assert relative_error(c.sum(0), reference.scores(lam)) <= 1e-10, lam


@pytest.mark.parametrize(
    "name,attributor", [("mnist_lr", "grad_dot"), ("mnist_mlp", "grad_dot"), ("mnist_lr", "tracin")]
)
def test_dot_contributions_sum_to_dattris_scores(cache, name, attributor):
    setting = small(name, epochs=2)  # TracIn's last10 then sums both epochs
    contributions = setting_contributions(setting, attributor, split="test", cache=cache).at()
    params = make_params(attributor)
    theirs = scorer(setting, attributor, params, "test", cache, progress=False, query_index=QUERIES).scores(0.0)
    # dattri works in float32; ours sums float64 products of the same float32 gradients
    assert relative_error(contributions.sum(0)[:, QUERIES], theirs) <= 1e-4


@pytest.mark.parametrize(
    "name,proj_dim", [("mnist_lr", 256), ("mnist_lr", 1024), ("mnist_lr", None), ("mnist_mlp", 512)]
)  # primal (p < n = 400), dual, unprojected, and the MLP
def test_trak_contributions_sum_to_its_scores_with_its_single_projection(cache, name, proj_dim):
    setting = small(name, epochs=2)
    params = make_params("trak", proj_dim=proj_dim, ensemble_size=2)
    contributions = setting_contributions(setting, "trak", params, split="test", cache=cache)
    reference = scorer(setting, "trak", params, "test", cache, progress=False)
    for lam in (1e-3, 1e-1):
        # the per-group projections are float32 products summed in another order than dattri's
        assert relative_error(contributions.at(lam).sum(0), reference.scores(lam)) <= 1e-5, lam


def test_layer_groups_add_their_tensors_and_predicted_labels_change_only_misclassified_queries(cache):
    setting = small("mnist_mlp", epochs=2)
    tensors = setting_contributions(setting, "grad_dot", split="val", cache=cache).at()
    layers = setting_contributions(
        setting, "grad_dot", split="val", config=GroupWeightConfig(grouping="layer"), cache=cache
    )
    # each group's product is taken in float32 (the training gradients are streamed, not stored)
    assert relative_error(layers.at(), tensors.reshape(3, 2, *tensors.shape[1:]).sum(1)) <= 1e-6
    predicted = setting_contributions(
        setting, "grad_dot", split="val", config=GroupWeightConfig(labels="predicted"), cache=cache
    ).at()
    state = train_full(setting, 0, cache, progress=False).state()
    x, y = setting.data().queries("val")
    right = predicted_labels(setting, state, x) == y
    assert 0 < int((~right).sum()) < len(y)
    assert relative_error(predicted[:, :, right], tensors[:, :, right]) <= 1e-6
    assert not torch.isclose(predicted[:, :, ~right], tensors[:, :, ~right]).all(dim=(0, 1)).any()


@pytest.mark.parametrize("n", [12, 40])  # dual (n <= p = 30) and primal (n > p) forms
def test_spectral_group_contribution_is_the_direct_solve_with_the_query_masked(n):
    torch.manual_seed(0)
    p, lam = 30, 0.3
    G, Q = torch.randn(n, p, dtype=torch.float64), torch.randn(5, p, dtype=torch.float64)
    groups = [ParameterGroup(name, a, b, (name,)) for name, a, b in (("a", 0, 10), ("b", 10, 25), ("c", 25, 30))]
    eig = eigendecompose(G, 1.0 / n)
    parts = spectral_contributions(eig, G, Q, groups, sign=-1.0).at(lam)
    fisher = G.T @ G / n + lam * torch.eye(p, dtype=torch.float64)
    for j, group in enumerate(groups):
        masked = torch.zeros_like(Q)
        masked[:, group.start : group.stop] = Q[:, group.start : group.stop]
        expected = -G @ torch.linalg.solve(fisher, masked.T)
        assert relative_error(parts[j], expected) <= 1e-10


# --------------------------------------------------------------------------------------------
# The objective


@pytest.mark.parametrize("block", [1, 3, 4, 100])
def test_group_products_in_column_blocks_equal_the_whole_products(block):
    torch.manual_seed(6)
    train, queries = torch.randn(9, 11), torch.randn(5, 11)
    groups = [ParameterGroup("a", 0, 4, ("a",)), ParameterGroup("b", 4, 11, ("b",))]
    whole = torch.stack([train.double()[:, g.start : g.stop] @ queries.double()[:, g.start : g.stop].T for g in groups])
    assert torch.allclose(group_products(train, queries, groups, block), whole, rtol=0, atol=1e-12)


def test_uniform_weights_reproduce_the_baseline_scores_exactly():
    torch.manual_seed(1)
    c = torch.randn(4, 50, 7, dtype=torch.float64)
    w = relative_weights(torch.zeros(4, dtype=torch.float64))
    assert torch.equal(w, torch.ones(4, dtype=torch.float64))
    assert torch.allclose(weighted_scores(c, w), c.sum(0), rtol=0, atol=1e-13)


def test_objective_is_bounded_by_one_over_root_k_and_reaches_it():
    torch.manual_seed(2)
    k = 5
    scores = torch.randn(100, 30, dtype=torch.float64) * torch.logspace(-3, 3, 30, dtype=torch.float64)
    losses = query_objective(scores, k)
    assert (losses.abs() <= 1 / math.sqrt(k) + 1e-12).all()
    planted = torch.zeros(100, 1, dtype=torch.float64)
    planted[:k] = 3.0  # k equal positive scores, the rest zero: the bound is attained
    assert query_objective(planted, k).item() == pytest.approx(-1 / math.sqrt(k), rel=1e-12)


def test_top_and_bottom_signal_by_hand_and_bounded():
    s = torch.tensor([[3.0], [1.0], [0.0], [-2.0]], dtype=torch.float64)  # ‖s‖ = √14
    assert query_objective(s, 1).item() == pytest.approx(-3 / math.sqrt(14), rel=1e-12)
    assert query_objective(s, 1, "top_and_bottom").item() == pytest.approx(-2.5 / math.sqrt(14), rel=1e-12)
    # k = 2: top mean (3 + 1)/2 = 2, bottom mean (0 - 2)/2 = -1, half their gap 1.5
    assert query_objective(s, 2, "top_and_bottom").item() == pytest.approx(-1.5 / math.sqrt(14), rel=1e-12)
    torch.manual_seed(2)
    k = 5
    scores = torch.randn(100, 30, dtype=torch.float64) * torch.logspace(-3, 3, 30, dtype=torch.float64)
    assert (query_objective(scores, k, "top_and_bottom").abs() <= 1 / math.sqrt(k) + 1e-12).all()
    with pytest.raises(InvalidParameterError):
        query_objective(scores, k, "bottom")


def test_only_both_tails_reward_a_group_of_strong_negative_scores():
    """Group 0 holds k strongly negative scores per query (and zeros), group 1 Gaussian noise: the top-k
    signal sees group 0 only in the norm and turns it down; the two-tailed signal turns it up."""
    torch.manual_seed(5)
    n, q, k = 200, 20, 10
    negative = torch.zeros(n, q, dtype=torch.float64)
    for col in range(q):
        negative[torch.randperm(n)[:k], col] = -3.0
    c = torch.stack([negative, torch.randn(n, q, dtype=torch.float64)])
    both = fit_weights(c, GroupWeightConfig(k=k, steps=100, signal="top_and_bottom"))
    top = fit_weights(c, GroupWeightConfig(k=k, steps=100))
    assert both.weights[0] > 1.2 and top.weights[0] < 0.8
    assert both.trace[-1] < both.trace[0] and top.trace[-1] < top.trace[0]


def test_objective_is_scale_invariant_and_shift_invariant_in_theta():
    torch.manual_seed(3)
    c = torch.randn(3, 60, 9, dtype=torch.float64)
    theta = torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64)
    base = objective(theta, c, k=4)
    assert objective(theta, 17.0 * c, k=4).item() == pytest.approx(base.item(), rel=1e-12)
    assert objective(theta + 2.5, c, k=4).item() == pytest.approx(base.item(), rel=1e-12)


@pytest.mark.parametrize("signal", ["top", "top_and_bottom"])
@pytest.mark.parametrize("penalty", [0.0, 0.01])
def test_fit_objective_equals_the_reference_objective_and_its_gradient(signal, penalty):
    # the fit's gathered form (top-k columns, per-query Gram) against the definition on the full score matrix
    from dahp.methods.weight_fit import _FitObjective

    torch.manual_seed(5)
    c = torch.randn(4, 150, 12, dtype=torch.float64)
    c[:, :, 3] = 0.0  # a query with no scores at all: L_q = 0, and a finite gradient
    theta = torch.tensor([0.2, -0.7, 0.4, 1.1], dtype=torch.float64)
    fast_theta = theta.clone().requires_grad_(True)
    reference_theta = theta.clone().requires_grad_(True)
    fast = _FitObjective(c, k=5, weight_penalty=penalty, signal=signal)(fast_theta)
    reference = objective(reference_theta, c, k=5, weight_penalty=penalty, signal=signal)
    fast.backward()
    reference.backward()
    assert fast.item() == pytest.approx(reference.item(), rel=1e-12)
    assert torch.isfinite(fast_theta.grad).all()
    torch.testing.assert_close(fast_theta.grad, reference_theta.grad, rtol=1e-10, atol=1e-14)


def test_fit_upweights_the_group_that_carries_the_signal():
    torch.manual_seed(4)
    n, q, k = 200, 20, 10
    signal = torch.zeros(n, q, dtype=torch.float64)
    for col in range(q):
        signal[torch.randperm(n)[:k], col] = 1.0
    noise = torch.randn(n, q, dtype=torch.float64)
    fit = fit_weights(torch.stack([signal, noise]), GroupWeightConfig(k=k, steps=100))
    assert fit.weights[0] > 1.5 > fit.weights[1]
    assert fit.weights.sum().item() == pytest.approx(2.0)
    assert len(fit.trace) == 101 and fit.trace[-1] < fit.trace[0] - 0.1


# --------------------------------------------------------------------------------------------
# A user's AttributionTask (a model this package does not define)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 12)
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(x)))


@pytest.fixture(scope="module")
def digits_task():
    from dattri.task import AttributionTask

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(40):
        for start in range(0, 150, 50):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[start : start + 50]), y[start : start + 50]).backward()
            optimizer.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def loss(params, data):
        xb, yb = data
        return nn.functional.cross_entropy(functional_call(model, params, (xb.reshape(-1, 64),)), yb.reshape(-1))

    def target(params, data):
        xb, yb = data
        return correct_class_margin(functional_call(model, params, (xb.reshape(-1, 64),)), yb.reshape(-1)).sum()

    task = AttributionTask(loss_func=loss, model=model, checkpoints=state, target_func=target)
    train, val = TensorDataset(x[:150], y[:150]), TensorDataset(x[150:180], y[150:180])
    return task, DataLoader(train, batch_size=64), DataLoader(val, batch_size=64), (x, y, state)


def explicit_gradients(state, xs, ys, fn) -> torch.Tensor:
    """Per-example gradients by backward passes, one example at a time (an independent path)."""
    model = TinyNet()
    model.load_state_dict(state)
    rows = []
    for xi, yi in zip(xs, ys):
        model.zero_grad()
        fn(model(xi[None]), yi[None]).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    return torch.stack(rows)


def test_task_weights_at_zero_steps_give_the_plain_attributors(digits_task):
    task, train, val, (x, y, state) = digits_task
    G = explicit_gradients(state, x[:150], y[:150], nn.functional.cross_entropy)
    g = explicit_gradients(state, x[150:180], y[150:180], correct_class_margin)
    frozen = GroupWeightConfig(steps=0)
    grad_dot = learn_group_weights(task, train, val, "grad_dot", config=frozen)
    assert torch.equal(grad_dot.weights, torch.ones(4, dtype=torch.float64))
    assert relative_error(grad_dot.score(val), -G @ g.T) <= 1e-5
    lam = 1e-2
    iffim = learn_group_weights(task, train, val, "iffim", regularization=lam, config=frozen)
    fisher = G.T @ G / len(G) + lam * torch.eye(G.shape[1], dtype=torch.float64)
    assert relative_error(iffim.score(val), -G @ torch.linalg.solve(fisher, g.T)) <= 1e-4


@pytest.mark.parametrize("attributor", ["grad_dot", "iffim"])
def test_task_weights_are_learned_and_score_new_queries(digits_task, attributor):
    task, train, val, (x, y, _) = digits_task
    result = learn_group_weights(task, train, val, attributor, config=GroupWeightConfig(steps=60))
    assert list(result.weights_by_group()) == ["hidden.weight", "hidden.bias", "head.weight", "head.bias"]
    assert (result.weights > 0).all() and result.weights.sum().item() == pytest.approx(4.0)
    assert result.trace[-1] <= result.trace[0]
    new = DataLoader(TensorDataset(x[180:200], y[180:200]), batch_size=8)
    scores = result.score(new)
    assert scores.shape == (150, 20)
    uniform = learn_group_weights(task, train, val, attributor, config=GroupWeightConfig(steps=0)).score(new)
    assert not torch.allclose(scores, uniform)


def test_task_weights_with_predicted_labels_by_layer(digits_task):
    task, train, val, _ = digits_task
    config = GroupWeightConfig(steps=20, labels="predicted", grouping="layer")
    result = learn_group_weights(task, train, val, config=config)
    assert list(result.weights_by_group()) == ["hidden", "head"]


# --------------------------------------------------------------------------------------------
# Bad input, before any compute


@pytest.mark.parametrize(
    "field,value",
    [("k", 0), ("k", 2.5), ("grouping", "module"), ("labels", "soft"), ("steps", -1), ("lr", 0.0), ("signal", "x")],
)
def test_bad_config_is_refused(field, value):
    with pytest.raises(InvalidParameterError) as raised:
        GroupWeightConfig(**{field: value})
    assert raised.value.parameter == field


class _NoGradients:
    """A task whose gradient functions must never be reached."""

    def __init__(self, task) -> None:
        self._task = task

    def get_model(self):
        return self._task.get_model()

    def __getattr__(self, name):
        raise AssertionError(f"computed before the input was checked ({name})")


@pytest.mark.parametrize(
    "kwargs,parameter",
    [
        ({"attributor": "trak"}, "attributor"),
        ({"attributor": "grad_dot", "regularization": 0.1}, "regularization"),
        ({"attributor": "iffim", "regularization": -1.0}, "regularization"),
        ({"config": GroupWeightConfig(k=151)}, "k"),
    ],
)
def test_bad_task_input_is_refused_before_compute(digits_task, kwargs, parameter):
    task, train, val, _ = digits_task
    with pytest.raises(InvalidParameterError) as raised:
        learn_group_weights(_NoGradients(task), train, val, **kwargs)
    assert raised.value.parameter == parameter


@pytest.mark.parametrize(
    "attributor,kwargs,parameter",
    [
        ("if_cg", {}, "attributor"),
        ("grad_cos", {}, "attributor"),
        # IFFIM and TRAK may be projected (per-group contributions of projected features); Grad-Dot may not
        ("grad_dot", {"params": make_params("grad_dot", proj_dim=64)}, "proj_dim"),
        ("grad_dot", {"config": GroupWeightConfig(k=401)}, "k"),
    ],
)
def test_bad_setting_input_is_refused_before_compute(cache, attributor, kwargs, parameter):
    with pytest.raises(InvalidParameterError) as raised:
        setting_contributions(small("mnist_lr"), attributor, cache=cache, **kwargs)
    assert raised.value.parameter == parameter
    assert not [f for f in cache.root.rglob("*") if f.is_file()]


def test_k_above_the_training_set_is_refused():
    with pytest.raises(InvalidParameterError) as raised:
        fit_weights(torch.zeros(2, 8, 3, dtype=torch.float64), GroupWeightConfig(k=9))
    assert raised.value.parameter == "k"
