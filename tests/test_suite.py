"""The robustness suite: deterministic problems, disjoint splits, input checks before compute, and
curves that agree with the LDS computed directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dahp.attribution.lds import lds
from dahp.core.config import InvalidParameterError, TrainingRecipe
from dahp.data.settings import get_setting
from dahp.experiments import suite
from dahp.training.train import train_full

TINY = suite.CurveConfig(n_models=6, trak_ensemble=2)


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


def test_default_suite_has_at_least_30_problems_over_every_family_and_quick_a_handful():
    default, quick = suite.suite_problems("default"), suite.suite_problems("quick")
    assert len(default) >= 30
    assert {p.family for p in default} == set(suite.FAMILIES)
    assert 2 <= len(quick) <= 6 and len({p.family for p in quick}) >= 2
    assert all(p.name == f"suite_{p.family}_{p.variant}" and get_setting(p.name) is p.setting for p in default)
    recipes = [p.setting.recipe for p in default]
    assert {r.optimizer for r in recipes} == {"sgd", "adam", "adamw"}
    assert any(r.momentum > 0 for r in recipes) and any(r.weight_decay > 0 for r in recipes)
    assert {r.schedule for r in recipes} >= {"constant", "linear", "cosine"}
    assert len({r.epochs for r in recipes if r.optimizer == "sgd"}) >= 3  # short and long training
    assert {p.model for p in default} == set(suite.MODELS) | set(suite.CONV_MODELS)  # widths, depths, convolutions


@pytest.mark.parametrize(
    "name",
    [
        "suite_iris_lr_sgd",
        "suite_digits_lr_sgd",
        "suite_gauss_mix_hard_lr_sgd",
        "suite_teacher_lr_sgd",
        "suite_spirals_gelu4_adam",
        "suite_cancer_wide512_sgd",
        "suite_wine_lr_long",
        "suite_conv_digits_conv4_sgd",
    ],
)
def test_problems_are_deterministic_and_their_splits_disjoint(name, tmp_path):
    setting = get_setting(name)
    first, again = setting.load(tmp_path), setting.load(tmp_path)  # built afresh, not the loaded copy
    assert first.fingerprint == again.fingerprint
    train, val, test = _rows(first.x_train), _rows(first.x_val), _rows(first.x_test)
    if name != "suite_iris_lr_sgd":  # iris holds repeated flowers; its split is checked by index below
        assert len(train) == first.n_train and not (train & val) and not (train & test) and not (val & test)
    assert len(first.y_val) and len(first.y_test)


def test_iris_split_takes_every_flower_once():
    from sklearn.datasets import load_iris

    from dahp.data.settings import _split_by_class

    y = load_iris().target
    parts = _split_by_class(y, {"train": 30, "val": 10, "test": 10}, suite.SUITE_SEED)
    together = np.concatenate(list(parts.values()))
    assert len(together) == len(set(together)) == 150


def test_mnist_subsets_are_class_balanced_and_nested_in_the_embedded_training_split(tmp_path):
    from dahp.data.settings import load_mnist_embedded

    full = load_mnist_embedded(tmp_path)
    small = suite.load_mnist_subset(tmp_path, 1000)
    assert small.n_train == 1000 and torch.bincount(small.y_train).tolist() == [100] * 10
    assert _rows(small.x_train) <= _rows(full.x_train)
    assert _rows(small.x_test) <= _rows(full.x_test) and _rows(small.x_val) <= _rows(full.x_val)


def test_bad_names_and_values_are_refused():
    with pytest.raises(InvalidParameterError, match="problem"):
        suite.get_problem("suite_iris_svm")
    with pytest.raises(InvalidParameterError, match="suite"):
        suite.suite_problems("huge")
    with pytest.raises(InvalidParameterError, match="family"):
        suite.suite_problems("default", families=["cifar"])
    with pytest.raises(InvalidParameterError, match="recipe"):
        suite.recipe_variant(TrainingRecipe(epochs=1, batch_size=1, lr=0.1), "rmsprop")
    with pytest.raises(InvalidParameterError, match="n_models"):
        suite.CurveConfig(n_models=1)
    with pytest.raises(InvalidParameterError, match="per_decade"):
        suite.CurveConfig(per_decade=0)


def test_curves_refuse_bad_input_before_any_compute(monkeypatch):
    def no_compute(*args, **kwargs):
        raise AssertionError("computed before the input was checked")

    monkeypatch.setattr(suite.attr, "scorer", no_compute)
    monkeypatch.setattr(suite, "ground_truth", no_compute)
    with pytest.raises(InvalidParameterError, match="attributor"):
        suite.problem_curves("suite_iris_lr_sgd", "lissa")
    with pytest.raises(InvalidParameterError, match="proj_dim"):
        suite.problem_curves("suite_iris_lr_sgd", "iffim", proj_dim=64)  # 15 parameters
    with pytest.raises(InvalidParameterError, match="problem"):
        suite.problem_curves("suite_nope", "iffim")
    with pytest.raises(InvalidParameterError, match="device"):
        suite.problem_curves("suite_iris_lr_sgd", "iffim", device="tpu")


def test_the_dense_grid_has_four_points_a_decade_over_twelve_decades_ending_above_the_spectrum():
    grid = suite.CurveConfig().grid(2.0)
    assert len(grid) == 49 and grid[-1] == pytest.approx(20.0) and grid[0] == pytest.approx(2e-11)
    assert np.allclose(np.diff(np.log10(grid)), 0.25)


def test_projection_is_added_only_where_the_model_is_big_enough():
    assert suite.attributor_configs(suite.get_problem("suite_iris_lr_sgd")) == [("iffim", None), ("trak", None)]
    big = suite.attributor_configs(suite.get_problem("suite_digits_wide_sgd"))
    assert big == [("iffim", None), ("iffim", suite.IFFIM_PROJ_DIM), ("trak", suite.TRAK_PROJ_DIM)]


def test_recipe_facts_count_the_optimizer_steps_of_the_full_data_training():
    problem = suite.get_problem("suite_digits_mlp_cosine")
    facts = suite.recipe_facts(problem.setting)
    recipe = problem.setting.recipe
    assert facts.steps == recipe.epochs * math.ceil(1100 / recipe.batch_size)
    assert (facts.optimizer, facts.schedule, facts.momentum) == ("sgd", "cosine", 0.9)
    assert facts.warmup_steps == recipe.warmup_steps > 0
    assert (facts.n_train, facts.n_params) == (1100, 64 * 32 + 32 + 32 * 10 + 10)


@pytest.mark.parametrize("attributor", ["iffim", "trak"])
def test_curves_agree_with_the_lds_of_the_scores(attributor):
    curves = suite.problem_curves("suite_iris_lr_sgd", attributor, None, TINY)
    truth = curves.truth
    assert truth.n_models == TINY.n_models and len(curves.members) == (2 if attributor == "trak" else 1)
    top = max(float(m.eigenvalues.max()) for m in curves.members)
    assert curves.grid == pytest.approx(TINY.grid(top))
    for k in (0, 20, 40):
        lam = curves.grid[k]
        expected = lds(curves.test.scores(lam), truth.targets("test"), truth.subsets).mean
        assert curves.test_lds[k] == pytest.approx(expected, abs=1e-12)
        assert curves.lds_at(lam) == pytest.approx(expected, abs=1e-12)
        val = lds(curves.validation.scores(lam), truth.targets("val"), truth.subsets).mean
        assert curves.val_lds[k] == pytest.approx(val, abs=1e-12)
        three = lds(curves.validation.scores(lam), truth.targets("val")[:3], truth.subsets[:3]).mean
        assert curves.validation_lds(3, [lam])[0] == pytest.approx(three, abs=1e-12)
    assert curves.best == pytest.approx(np.nanmax(curves.test_lds))
    model = get_setting("suite_iris_lr_sgd").make_model()
    model.load_state_dict(train_full(get_setting("suite_iris_lr_sgd"), len(curves.members) - 1).state())
    data = get_setting("suite_iris_lr_sgd").data()
    logits = model.eval()(data.x_train).double()
    own = logits.gather(1, data.y_train[:, None])[:, 0]
    others = logits.scatter(1, data.y_train[:, None], float("-inf")).logsumexp(1)
    np.testing.assert_allclose(curves.train_margins[-1], (own - others).detach().numpy(), rtol=1e-5, atol=1e-5)
    again = suite.problem_curves("suite_iris_lr_sgd", attributor, None, TINY)  # read back from the cache
    np.testing.assert_array_equal(again.test_lds, curves.test_lds)
    with pytest.raises(InvalidParameterError, match="n_models"):
        curves.validation_lds(1, curves.grid[:2])
    with pytest.raises(InvalidParameterError, match="n_models"):
        curves.validation_lds(TINY.n_models + 1, curves.grid[:2])


@pytest.mark.parametrize("name", ["suite_iris_mlp_momentum"])
def test_full_data_models_trained_together_equal_those_trained_alone_bit_for_bit(name, tmp_path):
    from dahp.core.cache import Cache
    from dahp.training.train import train_full, train_full_many

    setting = suite.get_problem(name).setting
    alone = Cache(tmp_path / "alone")
    together = Cache(tmp_path / "together")
    train_full(setting, 1, together, False, device="cpu")  # one seed cached already: the others train in a batch
    batched = train_full_many(setting, [0, 1, 2], together, False, device="cpu")
    assert [c.seed for c in batched] == [0, 1, 2] and len(list((tmp_path / "together").rglob("*.pt"))) == 3
    for checkpoints in batched:
        single = train_full(setting, checkpoints.seed, alone, False, device="cpu")
        assert single.states.keys() == checkpoints.states.keys()
        assert all(torch.equal(single.states[k], checkpoints.states[k]) for k in single.states)
    # a second call trains nothing: every entry is read back
    assert all(
        torch.equal(a.states["1.weight"], b.states["1.weight"])
        for a, b in zip(batched, train_full_many(setting, [0, 1, 2], together, False, device="cpu"))
    )


@pytest.mark.parametrize("family", ["conv_digits", "spirals", "cancer", "wine"])
def test_the_new_families_models_take_their_data(family, tmp_path):
    for problem in suite.suite_problems("default", [family]):
        setting = problem.setting
        data = setting.load(tmp_path)
        out = setting.make_model()(data.x_train[:4])
        assert out.shape == (4, int(data.y_train.max()) + 1)
        assert problem.sealed == (family in suite.SEALED_FAMILIES)
    if family == "conv_digits":
        assert any(isinstance(m, torch.nn.Conv2d) for m in setting.make_model().modules())
    if family == "spirals":
        assert any(isinstance(m, torch.nn.GELU) for m in setting.make_model().modules())
