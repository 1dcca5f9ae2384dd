"""Sensitivity grids: validated up front, λ swept from one factorization, tidy tables on disk."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dahp.attribution import attributors
from dahp.cli import main
from dahp.core.config import GroundTruthConfig, InvalidParameterError
from dahp.core.results import results_dir
from dahp.data.settings import get_setting
from dahp.experiments.grid import GridRecord, make_grid_spec, parse_values, query_index, run_grid
from helpers import quick, registered

TINY_TRUTH = GroundTruthConfig(n_models=6, models_per_chunk=6)


@pytest.fixture()
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("DAHP_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data" / "results"


def lr_quick() -> str:
    return registered(quick("mnist_lr", epochs=2), "mnist_lr_quick")


def mlp_quick() -> str:
    return registered(quick("mnist_mlp", epochs=1), "mnist_mlp_quick")


def test_parse_values():
    assert parse_values("256,512") == [256, 512]
    assert parse_values("0,logspace(-2,0,3)") == [0, 0.01, 0.1, 1.0]
    assert parse_values("linspace(0,1,3)") == [0.0, 0.5, 1.0]
    assert parse_values("range(10,51,20)") == [10, 30, 50]
    assert parse_values("none,true,last5") == [None, True, "last5"]
    with pytest.raises(InvalidParameterError, match="grid values"):
        parse_values("logspace(1,2)")


def test_query_subset_is_evenly_spaced():
    assert list(query_index(10, 4)) == [0, 3, 6, 9]
    assert len(query_index(500, None)) == 500


@pytest.mark.parametrize(
    "vary, pattern",
    [
        ({"lambda_": [1.0]}, r"hyperparameter of iffim.*'regularization'"),
        ({"regularization": [0.1, -1.0]}, "regularization=-1.0"),
        ({"proj_dim": [100, 9000]}, r"proj_dim=9000.*1\.\.7850"),
        ({"training_epoch": [1, 3]}, r"epoch=3.*1\.\.2"),
        ({"proj_dim": [64], "regularization": [1.0], "proj_seed": [0]}, "one or two"),
    ],
)
def test_bad_grids_fail_before_compute(vary, pattern, monkeypatch):
    monkeypatch.setattr("dahp.experiments.grid.ground_truth", lambda *a, **k: pytest.fail("computed despite bad input"))
    with pytest.raises(InvalidParameterError, match=pattern):
        make_grid_spec(lr_quick(), "iffim", vary)


def test_unknown_setting_or_attributor():
    with pytest.raises(InvalidParameterError, match="setting"):
        make_grid_spec("mnist", "iffim", {"regularization": [1.0]})
    with pytest.raises(InvalidParameterError, match="attributor"):
        make_grid_spec("mnist_lr", "influence", {"regularization": [1.0]})


def test_grid_table_file_and_one_scorer_per_lambda_axis(results, monkeypatch):
    built = []
    real = attributors.scorer
    monkeypatch.setattr(attributors, "scorer", lambda *a, **k: built.append(a[2]) or real(*a, **k))
    spec = make_grid_spec(
        lr_quick(), "iffim", {"proj_dim": [128, 256], "lambda": [1e-3, 1e-1, 10.0]}, ground_truth_config=TINY_TRUTH
    )
    record = run_grid(spec, progress=False, profile="quick")
    table = record.table
    assert len(built) == 2  # one scorer (one factorization) per projection dimension, never per λ
    assert list(table.columns[:4]) == ["setting", "attributor", "proj_dim", "regularization"]
    assert len(table) == 6 and table["lds_mean"].between(-1, 1).all()
    # the summary is the mean of the per-query table, combination by combination
    for _, row in table.iterrows():
        values = record.per_query_at(proj_dim=row.proj_dim, regularization=row.regularization)
        assert len(values) == 500 and np.nanmean(values) == pytest.approx(row.lds_mean)
    record.save(results_dir("quick"))
    saved = pd.read_csv(results / "quick" / "grid_mnist_lr_quick_iffim_proj_dim_regularization.csv")
    pd.testing.assert_frame_equal(saved[["lds_mean"]], table[["lds_mean"]])
    config = json.loads((results / "quick" / "grid_mnist_lr_quick_iffim_proj_dim_regularization.json").read_text())
    assert config["spec"]["ground_truth"]["n_models"] == 6 and config["profile"] == "quick"
    loaded = GridRecord.load(results / "quick", record.stem)
    assert loaded.headline()["lds_best"] == record.headline()["lds_best"]


def test_trak_projection_sweep_is_order_independent(results):
    truth = TINY_TRUTH
    kw = dict(fixed={"ensemble_size": 2}, ground_truth_config=truth, n_queries=40)
    up = run_grid(
        make_grid_spec(mlp_quick(), "trak", {"proj_dim": [128, 256], "regularization": [0.0, 1e-2]}, **kw),
        progress=False,
    ).table
    down = run_grid(
        make_grid_spec(mlp_quick(), "trak", {"proj_dim": [256, 128], "regularization": [0.0, 1e-2]}, **kw),
        progress=False,
    ).table
    merged = up.merge(down, on=["proj_dim", "regularization"])
    np.testing.assert_allclose(merged["lds_mean_x"], merged["lds_mean_y"], rtol=1e-6)


def test_cli_grid_prints_table_and_path(results, capsys):
    code = main(
        [
            "grid",
            "--setting",
            lr_quick(),
            "--attributor",
            "grad_dot",
            "--vary",
            "checkpoint_selection=last1,last2",
            "--n-models",
            "6",
            "--queries",
            "50",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "checkpoint_selection" in out and "grid_mnist_lr_quick_grad_dot_checkpoint_selection.csv" in out
    assert (
        results / "cli" / "grid_mnist_lr_quick_grad_dot_checkpoint_selection.csv"
    ).exists()  # not a profile's folder
    assert main(["grid", "--setting", lr_quick(), "--attributor", "trak", "--vary", "projection_dim=99999"]) == 2
    assert "proj_dim=99999" in capsys.readouterr().err


def test_grid_mixing_full_and_projected_gradients(results):
    from helpers import small

    name = registered(small("mnist_lr"), "mnist_lr_small_quick")
    spec = make_grid_spec(
        name, "iffim", {"proj_dim": [None, 128], "regularization": [1e-3, 1e-1]}, ground_truth_config=TINY_TRUTH
    )
    table = run_grid(spec, progress=False).table
    assert len(table) == 4 and table["proj_dim"].isna().sum() == 2
    only_full = make_grid_spec(name, "iffim", {"proj_dim": [None]}, ground_truth_config=TINY_TRUTH)
    assert len(run_grid(only_full, progress=False).table) == 1


def test_scoring_a_subset_of_queries_gives_those_columns_of_the_full_scores(results):
    from dahp.attribution.attributors import make_params, scorer

    setting = get_setting(lr_quick())
    subset = torch.tensor([3, 17, 250, 499])
    for attributor, lam in (("iffim", 1e-3), ("grad_dot", 0.0)):
        params = make_params(attributor)
        full = scorer(setting, attributor, params, "test", progress=False).scores(lam)
        part = scorer(setting, attributor, params, "test", progress=False, query_index=subset).scores(lam)
        assert part.shape == (setting.data().n_train, 4)
        # the spectral route is float64 and slices columns; dattri's float32 route batches the
        # queries differently, so it agrees to float32 rounding of the scores' scale
        atol = 1e-10 if attributor == "iffim" else 1e-5 * float(full.abs().max())
        torch.testing.assert_close(part, full[:, subset].to(part.dtype), rtol=1e-6, atol=atol)
