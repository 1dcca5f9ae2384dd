"""Algorithm 1, its continuous version and the zero-cost baselines, on problems with known answers."""

import numpy as np
import pytest
import torch

from dahp.attribution.spectral import factorize
from dahp.core.config import InvalidParameterError
from dahp.data.settings import get_setting
from dahp.selection.algorithm import (
    mean_eigenvalue_rule,
    mean_xi,
    select_continuous,
    select_on_grid,
    spectrum_quantile,
    xi_bar_curve,
)
from dahp.selection.rules import RULES, RecipeFacts, RuleInput
from helpers import quick


def recipe_regularization(setting, attributor: str) -> float:
    """The registry's recipe rule on ``setting``'s training recipe (the factors do not enter for SGD)."""
    facts = RecipeFacts.from_recipe(setting.recipe, setting.data().n_train, setting.n_params())
    return RULES["recipe"](RuleInput(attributor, [problem()], [1e-3, 1.0], recipe=facts)).regularization


def problem(seed=0, n=50, p=20):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -3, p, dtype=torch.float64)
    G = torch.randn(n, p, generator=gen, dtype=torch.float64) * scales
    Q = torch.randn(8, p, generator=gen, dtype=torch.float64) * scales
    return factorize(G, Q, scale=1 / n)


def test_algorithm_one_picks_the_candidate_closest_to_the_threshold():
    grid = [1e-3, 1e-2, 1e-1, 1.0]
    curve = [0.2, 0.45, 0.58, 0.9]
    assert select_on_grid(curve, grid).regularization == 1e-2
    assert select_on_grid(curve, grid, threshold=0.6).regularization == 1e-1
    assert select_on_grid(curve, grid, threshold=0.4).regularization == 1e-2


@pytest.mark.parametrize("threshold", [0, 1, 1.2, -0.1])
def test_threshold_outside_open_unit_interval(threshold):
    with pytest.raises(InvalidParameterError, match="threshold"):
        select_on_grid([0.5], [1.0], threshold)


def test_xi_bar_is_monotone_and_the_continuous_crossing_lies_between_grid_neighbours():
    members = [problem(0), problem(1)]
    grid = list(np.logspace(-6, 2, 33))
    curve = xi_bar_curve(members, grid)
    assert np.all(np.diff(curve) > 0)
    crossing = select_continuous(members, 0.5)
    assert crossing.xi_bar == pytest.approx(0.5, abs=2e-3)
    below = max(lam for lam, v in zip(grid, curve) if v < 0.5)
    above = min(lam for lam, v in zip(grid, curve) if v > 0.5)
    assert below < crossing.regularization < above
    assert mean_xi(members, crossing.regularization) == pytest.approx(crossing.xi_bar)


def test_spectrum_baselines_on_a_known_spectrum():
    G = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)).repeat(2, 1)  # n=8, p=4
    f = factorize(G, torch.ones(1, 4, dtype=torch.float64), scale=1 / 8)
    # F = GᵀG/8 = diag(16, 9, 4, 1) * 2 / 8
    assert sorted(f.eigenvalues.tolist()) == pytest.approx([0.25, 1.0, 2.25, 4.0])
    assert spectrum_quantile([f], 0.0) == pytest.approx(0.25)
    assert spectrum_quantile([f], 1.0) == pytest.approx(4.0)
    assert mean_eigenvalue_rule([f]) == pytest.approx(0.1 * 7.5 / 4)


def test_recipe_rule_from_the_training_recipe():
    lr = get_setting("mnist_lr")  # SGD lr 0.01, batch 32, 20 epochs on 4000 points: T = 2500
    assert recipe_regularization(lr, "iffim") == pytest.approx(1 / (0.01 * 2500))
    mlp = get_setting("mnist_mlp")  # lr 0.01, momentum 0.9, batch 64, 50 epochs: T = 50 * 63
    assert recipe_regularization(mlp, "iffim") == pytest.approx(0.1 / (0.01 * 50 * 63))
    assert recipe_regularization(mlp, "trak") == pytest.approx(0.1 / (0.01 * 50 * 63) * 4000 / 109_386)
    longer = quick("mnist_lr", epochs=40, batch_size=32, lr=0.01)
    assert recipe_regularization(longer, "iffim") == pytest.approx(recipe_regularization(lr, "iffim") / 2)
    with pytest.raises(InvalidParameterError, match="attributor"):
        recipe_regularization(lr, "tracin")
    adam = quick("mnist_lr", optimizer="adam")  # Adam's step is not η: the plain-SGD recipe would be wrong
    steps = adam.recipe.epochs * adam.recipe.steps_per_epoch(4000)
    assert recipe_regularization(adam, "iffim") != pytest.approx(1 / (adam.recipe.lr * steps), rel=0.1)


@pytest.mark.parametrize(
    "name, attributor, proj_dim", [("mnist_lr", "iffim", None), ("mnist_mlp", "trak", 256), ("mnist_mlp", "iffim", 256)]
)
def test_xi_bar_monotone_on_the_embedded_settings(cache, name, attributor, proj_dim):
    from dahp.attribution import attributors as attr
    from dahp.experiments.cases import default_grid
    from helpers import small

    setting = small(name)
    values = {"proj_dim": proj_dim, **({"ensemble_size": 2} if attributor == "trak" else {})}
    members = attr.scorer(
        setting, attributor, attr.make_params(attributor, **values), "val", cache, progress=False
    ).members
    curve = xi_bar_curve(members, default_grid(setting, attributor))
    assert np.all(np.diff(curve) >= -1e-12)
    assert 0 <= curve[0] < curve[-1] <= 1


def test_a_case_judges_every_pick_by_the_per_query_lds_of_its_own_lambda(cache):
    from dahp.attribution import attributors as attr
    from dahp.attribution.lds import lds
    from dahp.core.config import GroundTruthConfig
    from dahp.experiments.cases import run_case
    from dahp.training.ground_truth import ground_truth
    from helpers import small

    setting = small("mnist_lr")
    truth = GroundTruthConfig(n_models=8, models_per_chunk=8)
    grid = list(np.logspace(-5, 1, 13))
    case = run_case(setting, "iffim", grid, ground_truth_config=truth, cache=cache, progress=False)
    # Algorithm 1 recomputed independently from the validation scorer
    members = attr.scorer(setting, "iffim", attr.make_params("iffim"), "val", cache, progress=False).members
    curve = xi_bar_curve(members, grid)
    np.testing.assert_allclose(case.xi_bar, curve)
    assert case.regularization("xi_grid_0.5") == grid[int(np.argmin(np.abs(curve - 0.5)))]
    assert case.regularization("recipe") == pytest.approx(recipe_regularization(setting, "iffim"))
    # an off-grid pick gets the LDS of its own λ, not of a neighbouring candidate
    gt = ground_truth(setting, truth, cache, progress=False)
    test = attr.scorer(setting, "iffim", attr.make_params("iffim"), "test", cache, progress=False)
    for rule in ("recipe", "published_default", "xi_continuous", "median_xi_recipe"):
        expected = lds(test.scores(case.regularization(rule)), gt.targets("test"), gt.subsets).per_query
        np.testing.assert_allclose(case.per_query(rule), expected)
    expected = lds(test.scores(grid[4]), gt.targets("test"), gt.subsets).per_query
    np.testing.assert_allclose(case.lds_grid[4], expected)
    assert case.regularization("best") == grid[int(np.nanargmax(np.nanmean(case.lds_grid, axis=1)))]
    assert case.xi_trainings == 1 and case.grid_search_trainings == 8 and case.grid_search_seconds > 0


def test_a_study_keeps_a_missing_setting_as_a_reason_and_reuses_cached_cases(cache, tmp_path, monkeypatch):
    from dahp.experiments import cases as cases_module
    from dahp.experiments.cases import SelectionStudy
    from helpers import registered, small

    name = registered(small("mnist_lr"), "mnist_lr_small_selection_quick")
    study = cases_module.selection_study(
        "selection_iffim", [(name, None), ("cifar2_resnet9", 512)], "iffim", 5, n_models=6, cache=cache
    )
    ran, missing = study.cases
    assert ran.ok and not missing.ok
    assert "data not supplied" in missing.status and "cifar-10-batches-py" in missing.status
    assert missing.setting == "cifar2_resnet9" and missing.proj_dim == 512 and not missing.picks
    monkeypatch.setattr(cases_module, "run_case", lambda *a, **k: pytest.fail("a cached case was recomputed"))
    again = cases_module.selection_study("selection_iffim", [(name, None)], "iffim", 5, n_models=6, cache=cache)
    np.testing.assert_array_equal(again.cases[0].lds_grid, ran.lds_grid)
    study.save(tmp_path)
    loaded = SelectionStudy.load(tmp_path, "selection_iffim")
    assert [c.status for c in loaded.cases] == [c.status for c in study.cases]
    np.testing.assert_allclose(loaded.cases[0].lds_grid, ran.lds_grid)
    assert loaded.headline() == study.headline()
    with pytest.raises(InvalidParameterError, match="setting"):
        cases_module.selection_study("x", [("mnist_xl", None)], "iffim", 5)
