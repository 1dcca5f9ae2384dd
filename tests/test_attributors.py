"""Spectral attributors agree with dattri's own attributors at every λ; bad input is refused early."""

import pytest
import torch

from dahp.attribution import dattri_bridge
from dahp.attribution.attributors import (
    ATTRIBUTORS,
    TRAKParams,
    checkpoint_spec,
    hyperparameter_names,
    make_params,
    scorer,
    trak_scorer,
)
from dahp.core.config import InvalidParameterError
from dahp.data.settings import get_setting
from dahp.training.train import train_full
from helpers import as_float64, small

QUERIES = torch.arange(0, 500, 25)  # 20 test queries


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours.double() - theirs.double()).norm() / theirs.double().norm()).item()


@pytest.mark.parametrize("proj_dim", [256, 1024])  # primal (p < n = 400) and dual (p > n) forms
def test_trak_equals_dattri_at_every_lambda(cache, proj_dim):
    setting = small("mnist_mlp", epochs=2)
    states = [as_float64(train_full(setting, seed, cache, progress=False).state()) for seed in range(2)]
    specs = [{**checkpoint_spec(setting, k, 2), "dtype": "float64"} for k in range(2)]
    ours = trak_scorer(setting, states, specs, TRAKParams(proj_dim=proj_dim, ensemble_size=2), "test", cache)
    top = max(m.eigenvalues.max().item() for m in ours.members)
    lambdas = [1e-4 * top, top] if proj_dim > 400 else [0.0, 1e-2 * top]
    for lam in lambdas:
        theirs = dattri_bridge.run_trak(setting, states, proj_dim, lam, "test", query_index=QUERIES)
        assert relative_error(ours.scores(lam)[:, QUERIES], theirs) <= 1e-4, lam


def test_if_explicit_equals_dattri_on_mnist_lr(cache):
    from dattri.algorithm import IFAttributorExplicit

    setting = small("mnist_lr", epochs=2)
    ours = scorer(setting, "if_explicit", make_params("if_explicit"), "test", cache, progress=False)
    state = as_float64(train_full(setting, 0, cache, progress=False).state())
    for lam in (1e-5, 1e-2):
        attr = IFAttributorExplicit(dattri_bridge.task(setting, [state]), regularization=lam)
        theirs = -dattri_bridge._attribute_inner_product(attr, setting, "test", torch.float64, QUERIES)
        assert relative_error(ours.scores(lam)[:, QUERIES], theirs) <= 1e-4, lam


def test_iffim_equals_a_direct_solve_with_the_empirical_fisher(cache):
    from dahp.attribution.features import gradient_features

    setting = small("mnist_lr", epochs=2)
    ours = scorer(setting, "iffim", make_params("iffim", proj_dim=512), "test", cache, progress=False)
    state = train_full(setting, 0, cache, progress=False).state()
    spec = checkpoint_spec(setting, 0, 2)
    G = gradient_features(setting, state, spec, "train", "loss", (512,), cache=cache, progress=False)[512].double()
    g = gradient_features(setting, state, spec, "test", "target", (512,), cache=cache, progress=False)[512].double()
    fisher = G.T @ G / len(G)
    for lam in (1e-4, 1e-1):
        expected = -G @ torch.linalg.solve(fisher + lam * torch.eye(512, dtype=torch.float64), g.T)
        assert relative_error(ours.scores(lam), expected) <= 1e-8


def test_every_attributor_has_the_papers_hyperparameters():
    assert set(ATTRIBUTORS) == {
        "iffim",
        "trak",
        "if_explicit",
        "if_cg",
        "if_lissa",
        "tracin",
        "grad_dot",
        "grad_cos",
        "logra",
    }
    assert make_params("trak").regularization == 0.0 and make_params("trak").proj_dim == 512
    assert make_params("trak").ensemble_size == 10
    assert make_params("if_explicit").regularization == 1e-5
    cg = make_params("if_cg")
    assert (cg.regularization, cg.max_iteration) == (1e-2, 10)
    lissa = make_params("if_lissa")
    assert (lissa.regularization, lissa.scaling, lissa.recursion_depth, lissa.batch_size) == (1e-3, 5.0, 1000, 50)
    tracin = make_params("tracin")
    assert (tracin.normalization, tracin.proj_dim, tracin.checkpoint_selection) == (False, None, "last10")
    assert make_params("logra").regularization == 1e-3
    assert "training_epoch" in hyperparameter_names("trak")
    assert make_params("tracin").epochs(50) == list(range(41, 51))
    assert make_params("tracin", checkpoint_selection="every10").epochs(50) == [10, 20, 30, 40, 50]


def test_unknown_attributor_and_hyperparameter_list_the_valid_ones():
    with pytest.raises(InvalidParameterError, match=r"attributor='trak2'.*'trak'"):
        make_params("trak2")
    with pytest.raises(InvalidParameterError, match=r"regularisation.*'regularization'"):
        make_params("trak", regularisation=1.0)


@pytest.mark.parametrize(
    "attributor, values, pattern",
    [
        ("trak", {"regularization": -1.0}, "regularization=-1.0"),
        ("iffim", {"proj_dim": 0}, "proj_dim=0"),
        ("logra", {"proj_dim": 1000}, "perfect square"),
        ("tracin", {"checkpoint_selection": "first3"}, "checkpoint_selection"),
    ],
)
def test_bad_hyperparameter_values(attributor, values, pattern):
    with pytest.raises(InvalidParameterError, match=pattern):
        make_params(attributor, **values)


def test_setting_dependent_checks_run_before_any_compute(monkeypatch):
    monkeypatch.setattr(
        "dahp.attribution.attributors.train_full", lambda *a, **k: pytest.fail("computed despite bad input")
    )
    mlp = get_setting("mnist_mlp")
    with pytest.raises(InvalidParameterError, match=r"proj_dim=200000.*109386"):
        scorer(mlp, "trak", make_params("trak", proj_dim=200_000))
    with pytest.raises(InvalidParameterError, match=r"epoch=51.*1\.\.50"):
        scorer(mlp, "iffim", make_params("iffim", training_epoch=51))
    with pytest.raises(InvalidParameterError, match="if_explicit"):
        scorer(mlp, "if_explicit", make_params("if_explicit"))


def test_dattri_projector_settings_do_not_leak_between_instances(cache):
    # dattri 0.3.0 merges projector kwargs into a shared module-level dict; the bridge always
    # passes a complete fresh dict, so a sweep over dimensions does not depend on its order.
    setting = small("mnist_mlp", epochs=1)
    state = train_full(setting, 0, cache, progress=False).state()
    first = dattri_bridge.run_trak(setting, [state], 128, 0.0, "test", query_index=QUERIES[:5])
    dattri_bridge.run_trak(setting, [state], 256, 0.0, "test", query_index=QUERIES[:5])
    again = dattri_bridge.run_trak(setting, [state], 128, 0.0, "test", query_index=QUERIES[:5])
    torch.testing.assert_close(first, again)


def test_closed_form_softmax_regression_hessian_equals_autodiff():
    """The fast path of IF explicit's Hessian is the same matrix as differentiating twice."""
    import dataclasses

    from dahp.attribution.attributors import mean_loss_hessian
    from dahp.data.targets import cross_entropy
    from dahp.training.train import train_full

    setting = small("mnist_lr")
    state = {k: v.double() for k, v in train_full(setting, 0, progress=False).state().items()}
    closed_form = mean_loss_hessian(setting, state)
    # a loss that is not the registered cross-entropy object forces the autodiff route
    generic = mean_loss_hessian(dataclasses.replace(setting, loss=lambda z, y: cross_entropy(z, y)), state)
    torch.testing.assert_close(closed_form, generic, rtol=0, atol=1e-12)
    assert closed_form.shape == (7850, 7850)


# --------------------------------------------------------------------------------------------
# LoGra through the bridge


def test_loss_reporting_model_is_the_bare_model():
    """Same modules in the same order (so dattri hooks the same layers with the same projection seeds),
    same state-dict keys, same outputs; given labels it reports the setting's loss."""
    setting = get_setting("mnist_mlp")
    bare = setting.init_model(0).eval()
    wrapped = dattri_bridge.LossReportingModel(setting.make_model(), setting.loss)
    assert [name for name, _ in wrapped.named_modules()] == [name for name, _ in bare.named_modules()]
    wrapped.load_state_dict(bare.state_dict())
    wrapped.eval()
    assert not wrapped.inner.training and not any(m.training for m in wrapped.modules())
    x, y = setting.data().x_test[:5], setting.data().y_test[:5]
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), bare(x), rtol=0, atol=0)
        torch.testing.assert_close(wrapped(x, labels=y).loss, setting.loss(bare(x), y), rtol=0, atol=0)

    class OwnWeight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

    with pytest.raises(ValueError, match="scale"):
        dattri_bridge.LossReportingModel(OwnWeight(), setting.loss)


def _logra_on_bare_model(setting, state, proj_dim: int, lam: float) -> torch.Tensor:
    """dattri's LoGra as the bridge ran it before dict batches: the bare model, tuple batches of 500
    with a singleton axis per example (its compressor set-up runs the model on one example)."""
    import tempfile

    from dattri.algorithm import LoGraAttributor
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    def loss(model, batch, device="cpu"):
        x, y = batch
        return setting.loss(model(x.reshape(len(y), -1)), y)

    task = AttributionTask(loss_func=loss, model=setting.make_model(), checkpoints=[state])
    with tempfile.TemporaryDirectory() as scratch:
        attr = LoGraAttributor(task, damping=lam, proj_dim=proj_dim, offload="none", cache_dir=scratch)
        data = setting.data()
        x_query, y_query = data.queries("test")
        train = DataLoader(TensorDataset(data.x_train.unsqueeze(1), data.y_train), batch_size=500, shuffle=False)
        query = DataLoader(TensorDataset(x_query[QUERIES].unsqueeze(1), y_query[QUERIES]), batch_size=500)
        attr.cache(train)
        return attr.attribute(train, query).detach()


def test_logra_on_mnist_is_unchanged_and_independent_of_the_batch_size(cache):
    """The bridge's LoGra (dict batches, the setting's loss) gives dattri's LoGra on the bare model bit
    for bit; batches of 150 (400 = 150 + 150 + 100) give the same scores to rounding; a λ sweep gives
    what fresh attributors give; the grid's scorer is this scorer."""
    setting = small("mnist_mlp", epochs=2)
    state = train_full(setting, 0, cache, progress=False).state()
    sweep = dattri_bridge.LoGraScorer(setting, state, 64, "test", QUERIES)
    at_small, at_large = sweep.scores(1e-4), sweep.scores(1e-1)
    assert torch.equal(at_large, _logra_on_bare_model(setting, state, 64, 1e-1))
    assert torch.equal(at_small, _logra_on_bare_model(setting, state, 64, 1e-4))
    assert relative_error(at_small, at_large) > 1e-2  # λ matters

    ragged = dattri_bridge.LoGraScorer(setting, state, 64, "test", QUERIES, batch_size=150).scores(1e-1)
    assert relative_error(ragged, at_large) <= 1e-5

    grid_scorer = scorer(setting, "logra", make_params("logra", proj_dim=64), "test", cache, False, QUERIES)
    assert isinstance(grid_scorer, dattri_bridge.LoGraScorer)
    assert torch.equal(grid_scorer.scores(1e-1), at_large)
    params = make_params("logra", proj_dim=64, regularization=1e-4)
    assert torch.equal(dattri_bridge.run(setting, "logra", params, "test", cache, QUERIES), at_small)


def test_lissa_is_dattris_lissa_and_does_not_depend_on_the_global_generator(cache):
    """LiSSA samples its batches from torch's global generator: the bridge seeds it for the solve, so two
    runs after different draws agree bit for bit and equal dattri's own LiSSA run from that seed."""
    from dattri.algorithm import IFAttributorLiSSA

    setting = small("mnist_lr", epochs=2)
    params = make_params("if_lissa", recursion_depth=3, batch_size=50)
    queries = QUERIES[:4]
    torch.manual_seed(1)
    first = dattri_bridge.run(setting, "if_lissa", params, "test", cache, queries)
    torch.manual_seed(2)
    torch.rand(7)
    second = dattri_bridge.run(setting, "if_lissa", params, "test", cache, queries)
    assert torch.equal(first, second)

    state = train_full(setting, 0, cache, progress=False).state()
    attr = IFAttributorLiSSA(
        dattri_bridge.task(setting, [state]),
        batch_size=params.batch_size,
        recursion_depth=params.recursion_depth,
        damping=params.regularization,
        scaling=params.scaling,
    )
    full, query = dattri_bridge.loaders(setting, "test", torch.float32, query_index=queries)
    torch.manual_seed(dattri_bridge.LISSA_SAMPLE_SEED)
    attr.cache(full)
    theirs = -attr.attribute(full, query)
    assert relative_error(first, theirs) <= 1e-5
