"""Algorithm 1, its continuous version and the zero-cost baselines, on problems with known answers."""

import json

import numpy as np
import pytest
import torch

from dahp.config import InvalidParameterError
from dahp.selection import (
    mean_eigenvalue_rule,
    mean_xi,
    recipe_regularization,
    select_continuous,
    select_on_grid,
    spectrum_quantile,
    xi_bar_curve,
)
from dahp.settings import get_setting
from dahp.spectral import factorize
from helpers import quick


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


@pytest.mark.parametrize("name, attributor, proj_dim", [("mnist_lr", "iffim", None), ("mnist_mlp", "trak", 256),
                                                        ("mnist_mlp", "iffim", 256)])
def test_xi_bar_monotone_on_the_embedded_settings(cache, name, attributor, proj_dim):
    from dahp import attributors as attr
    from dahp.selection import default_grid
    from helpers import small

    setting = small(name)
    values = {"proj_dim": proj_dim, **({"ensemble_size": 2} if attributor == "trak" else {})}
    members = attr.scorer(setting, attributor, attr.make_params(attributor, **values), "val", cache, progress=False).members
    curve = xi_bar_curve(members, default_grid(setting, attributor))
    assert np.all(np.diff(curve) >= -1e-12)
    assert 0 <= curve[0] < curve[-1] <= 1


def test_selection_row_and_theorem_table_on_a_small_setting(cache):
    from dahp.config import GroundTruthConfig
    from dahp.selection import selection_row, theorem_check
    from helpers import small

    setting = small("mnist_lr")
    truth = GroundTruthConfig(n_models=8, models_per_chunk=8)
    grid = list(np.logspace(-5, 1, 13))
    row = selection_row(setting, "iffim", grid, ground_truth_config=truth, cache=cache, progress=False)
    assert row["lambda_selected"] in grid and row["lambda_best"] in grid
    assert row["lds_best"] >= row["lds_selected"] and row["lds_best"] >= row["lds_xi0.4"]
    assert abs(row["xi_selected"] - 0.5) <= min(abs(v - 0.5) for v in json.loads(row["xi_bar"])) + 1e-12
    assert row["lambda_recipe"] == pytest.approx(recipe_regularization(setting, "iffim"))
    assert row["grid_search_seconds"] > 0 and row["xi_seconds"] > 0
    table = theorem_check(setting, "iffim", grid, ground_truth_config=truth, cache=cache, progress=False)
    assert len(table) == 12 * 500 and set(table["premise"].unique()) <= {True, False}
    assert table["xi"].between(0, 1).all() and table["omega"].between(-1, 1).all()


def test_selection_table_reports_a_missing_setting_without_computing(tmp_path, monkeypatch):
    from dahp.selection import selection_table

    monkeypatch.setenv("DAHP_DATA_DIR", str(tmp_path))
    table = selection_table([("cifar2_resnet9", 512)], "iffim", 5)
    assert list(table.status) == [table.status.iloc[0]] and "cifar2_resnet9" in table.status.iloc[0]
    assert table.proj_dim.iloc[0] == 512 and "lds_selected" not in table
    with pytest.raises(InvalidParameterError, match="setting"):
        selection_table([("mnist_xl", None)], "iffim", 5)
