"""The learned-weights study's record (issue 12): tables, headline, round trip, the C13 rule, and ξ of weighted factors."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dahp.attribution.spectral import SpectralFactors
from dahp.core.config import InvalidParameterError
from dahp.core.results import _plain
from dahp.core.statistics import FAILS, HOLDS, NOT_RUN, PARTLY, paired_difference
from dahp.experiments.learned import (
    ABLATION_COLUMNS,
    LEARNED_COLUMNS,
    LearnedAblationRecord,
    LearnedWeightsRecord,
    StudySizes,
    learned_weights_study,
)
from dahp.experiments.status import c13
from dahp.methods.learned_weights import SpectralContributions, weighted_members
from dahp.methods.weight_fit import GroupWeightConfig
from dahp.selection.algorithm import xi_bar_curve
from helpers import assert_nested_close

RNG = np.random.default_rng(0)
GRID = (1e-3, 1e-1)


def _record(shifts, n=40, profile="quick"):
    """A record with Grad-Dot (no λ) and TRAK (two λ) on mnist_lr; ``shifts[attributor]`` is added to the
    learned weighting's per-query LDS at every λ. TRAK's uniform LDS is best at λ=1e-1."""
    per_query, groups, timing = [], [], []
    for attributor, grid in (("grad_dot", (None,)), ("trak", GRID)):
        for i, lam in enumerate(grid):
            base = RNG.normal(0.2 + 0.1 * i, 0.05, n)
            for weighting, values in (("uniform", base), ("learned", base + shifts[attributor])):
                per_query += [
                    {
                        "setting": "mnist_lr",
                        "attributor": attributor,
                        "regularization": lam,
                        "weighting": weighting,
                        "query": q,
                        "lds": v,
                    }
                    for q, v in enumerate(values)
                ]
            groups += [
                {
                    "setting": "mnist_lr",
                    "attributor": attributor,
                    "regularization": lam,
                    "group": g,
                    "size": s,
                    "weight": w,
                }
                for g, s, w in (("linear.weight", 7840, 1.5), ("linear.bias", 10, 0.5))
            ]
        timing.append(
            {
                "setting": "mnist_lr",
                "attributor": attributor,
                "attributor_seconds": 2.0,
                "contributions_seconds": 1.0,
                "fit_seconds": 0.5,
                "n_fits": len(grid),
            }
        )
    picks = pd.DataFrame(
        [
            {
                "setting": "mnist_lr",
                "attributor": "trak",
                "weighting": "uniform",
                "regularization": GRID[0],
                "xi_bar": 0.4,
            },
            {
                "setting": "mnist_lr",
                "attributor": "trak",
                "weighting": "learned",
                "regularization": GRID[1],
                "xi_bar": 0.6,
            },
        ]
    )
    frames = {
        "per_query": pd.DataFrame(per_query),
        "groups": pd.DataFrame(groups),
        "picks": picks,
        "timing": pd.DataFrame(timing),
    }
    return LearnedWeightsRecord.from_per_query(frames, {"n_lambdas": 2}, profile)


def test_table_headline_and_round_trip(tmp_path):
    record = _record({"grad_dot": 0.1, "trak": 0.0})
    table = record.table()
    assert list(table.columns) == list(LEARNED_COLUMNS)
    assert len(table) == 2 * (1 + len(GRID))  # Grad-Dot's one point and TRAK's two, each weighting
    assert table.regularization.isna().sum() == 2  # Grad-Dot has no λ
    head = record.headline()
    assert set(head) == {"mnist_lr grad_dot", "mnist_lr trak"}
    gd = head["mnist_lr grad_dot"]
    assert gd["lambda_uniform"] is None and "xi" not in gd
    assert gd["learned_minus_uniform"].value == pytest.approx(0.1) and gd["learned_minus_uniform"].se < 1e-12
    trak = head["mnist_lr trak"]
    assert trak["lambda_uniform"] == GRID[1] and trak["lambda_learned"] == GRID[1]
    uniform = record.per_query_at("mnist_lr", "trak", GRID[1], "uniform")
    assert trak["lds_uniform"].value == pytest.approx(uniform.mean())
    assert trak["lds_uniform"].se == pytest.approx(uniform.std(ddof=1) / np.sqrt(len(uniform)))
    # the ξ picks: learned at 1e-1 against uniform at 1e-3, paired over the same queries
    expected = paired_difference(
        record.per_query_at("mnist_lr", "trak", GRID[1], "learned"),
        record.per_query_at("mnist_lr", "trak", GRID[0], "uniform"),
    )
    assert trak["xi"]["learned_minus_uniform"] == expected
    assert record.weights_at("mnist_lr", "trak", GRID[0]).to_dict() == {"linear.weight": 1.5, "linear.bias": 0.5}
    assert gd["seconds"] == {"contributions": 1.0, "fit": 0.5}

    record.save(tmp_path)
    saved = pd.read_csv(tmp_path / "learned_weights.csv")
    assert list(saved.columns) == list(LEARNED_COLUMNS)
    loaded = LearnedWeightsRecord.load(tmp_path)
    assert loaded is not None and loaded.profile == "quick" and loaded.config == {"n_lambdas": 2}
    # the headline computed from the files equals the one saved beside them, value for value
    assert_nested_close(
        _plain(loaded.headline()), json.loads((tmp_path / "learned_weights.json").read_text())["headline"]
    )
    assert_nested_close(_plain(loaded.headline()), _plain(head))
    assert LearnedWeightsRecord.load(tmp_path / "nowhere") is None


def test_c13_rule(tmp_path):
    assert c13(tmp_path).holds == NOT_RUN
    _record({"grad_dot": 0.1, "trak": 0.1}).save(tmp_path)
    verdict = c13(tmp_path)
    assert verdict.holds == HOLDS and "mnist_lr trak: uniform" in verdict.ours
    assert verdict.numbers["learned_weights"]["mnist_lr trak"]["learned_minus_uniform"]["value"] == pytest.approx(0.1)
    _record({"grad_dot": 0.1, "trak": 0.0}).save(tmp_path)
    assert c13(tmp_path).holds == PARTLY
    _record({"grad_dot": -0.1, "trak": 0.0}).save(tmp_path)  # worse, and no established change
    assert c13(tmp_path).holds == FAILS


def test_weighted_factors_reproduce_xi_at_uniform_weights_and_refuse_a_foreign_split():
    torch.manual_seed(0)
    n, r, q, m = 12, 5, 7, 3
    rights = torch.randn(m, r, q, dtype=torch.float64)
    left, eig = torch.randn(n, r, dtype=torch.float64), torch.rand(r, dtype=torch.float64) + 0.1
    member = SpectralFactors(left, eig, rights.sum(0), sign=-1.0)
    split = SpectralContributions(left, eig, rights, sign=-1.0)
    grid = [1e-2, 1e-1, 1.0]
    (same,) = weighted_members([member], split, torch.ones(m))
    assert torch.allclose(same.right, member.right)
    assert np.allclose(xi_bar_curve([same], grid), xi_bar_curve([member], grid))
    weights = torch.tensor([2.0, 0.5, 0.5], dtype=torch.float64)
    (weighted,) = weighted_members([member], split, weights)
    # the weighted factors score exactly Σ_j w_j C_j
    assert torch.allclose(weighted.scores(0.1), torch.einsum("m,mnq->nq", weights, split.at(0.1)))
    other = SpectralFactors(left, eig, rights.sum(0) + 1.0, sign=-1.0)
    with pytest.raises(InvalidParameterError, match="contributions"):
        weighted_members([other], split, torch.ones(m))


def test_bad_arguments_are_refused_before_any_compute():
    with pytest.raises(InvalidParameterError, match="attributor"):
        learned_weights_study(attributors=("if_cg",))
    with pytest.raises(InvalidParameterError, match="n_lambdas"):
        learned_weights_study(n_lambdas=1)
    with pytest.raises(InvalidParameterError, match="fit_queries"):
        learned_weights_study(fit_queries=1)
    with pytest.raises(InvalidParameterError, match="left_out"):
        learned_weights_study(settings=("mnist_lr",), left_out=("mnist_mlp iffim",))
    with pytest.raises(InvalidParameterError, match="setting"):
        learned_weights_study(settings=("cifar2_resnet9",))


# --------------------------------------------------------------------------------------------
# The checks' record (issue 23)


def _ablation_record(n=30):
    """mnist_mlp trak: learned = uniform + 0.05; k=5 is learned - 0.02; both tails learned + 0.01; TRAK's
    per-group projection has its own uniform row (uniform + 0.1) and learned at uniform + 0.1; two groups."""
    uniform = RNG.normal(0.2, 0.05, n)
    learned = uniform + 0.05
    fit = "300 steps at lr 0.05"
    rows = [
        ("uniform", "shared", uniform),
        ("uniform", "per_group", uniform + 0.1),
        ("fit", fit, learned),
        ("k", "5", learned - 0.02),
        ("k", "10", learned),
        ("signal", "top", learned),
        ("signal", "top_and_bottom", learned + 0.01),
        ("projection", "shared", learned),
        ("projection", "per_group", uniform + 0.1),
        ("weight_penalty", "0", learned),
        ("weight_penalty", "0.001", learned),
        ("group", "fc1.weight", uniform - 0.1),
        ("group", "fc3.weight", uniform + 0.01),
    ]
    per_query = pd.DataFrame(
        [
            {
                "setting": "mnist_mlp",
                "attributor": "trak",
                "regularization": 0.01,
                "check": a,
                "value": v,
                "split": "test",
                "query": 10 * q,
                "lds": x,
            }
            for a, v, values in rows
            for q, x in enumerate(values)
        ]
    )
    weights = pd.DataFrame(
        [
            {
                "setting": "mnist_mlp",
                "attributor": "trak",
                "regularization": 0.01,
                "check": a,
                "value": v,
                "group": g,
                "weight": w,
            }
            for a, v in (("fit", fit), ("k", "5"))
            for g, w in (("fc1.weight", 0.4), ("fc3.weight", 1.6))
        ]
    )
    return LearnedAblationRecord(per_query, weights, {"weights": GroupWeightConfig().as_dict()}, "quick")


def test_ablation_table_headline_and_round_trip(tmp_path):
    record = _ablation_record()
    table = record.table()
    assert list(table.columns) == list(ABLATION_COLUMNS) and len(table) == 11  # every row but the uniform ones
    assert list(table.value[table.check == "weight_penalty"]) == ["0", "0.001"]
    per_group = table[(table.check == "projection") & (table.value == "per_group")].iloc[0]
    # paired with its own uniform row: no difference, though 0.05 above the shared projection's learned row
    assert per_group.difference == pytest.approx(0.0) and per_group.lds_uniform == pytest.approx(per_group.lds_learned)
    head = record.headline()["mnist_mlp trak"]
    assert head["regularization"] == 0.01
    assert head["learned_minus_uniform"].value == pytest.approx(0.05) and head["learned_minus_uniform"].se < 1e-12
    assert head["k"]["base"] == "10" and head["weight_penalty"]["base"] == "0" and head["signal"]["base"] == "top"
    assert head["k"]["minus_base"]["5"].value == pytest.approx(-0.02)
    assert head["k"]["rows"]["5"]["difference"].value == pytest.approx(0.03)
    assert head["signal"]["minus_base"]["top_and_bottom"].value == pytest.approx(0.01)
    assert head["projection"]["minus_base"]["per_group"].value == pytest.approx(0.05)
    assert head["group"]["best_alone"] == "fc3.weight" and head["group"]["largest_weight"] == "fc3.weight"
    assert "labels" not in head  # not run in this record
    record.save(tmp_path)
    saved = pd.read_csv(tmp_path / "learned_weights_ablations.csv", dtype={"value": str})
    assert list(saved.columns) == list(ABLATION_COLUMNS) and "0.001" in set(saved.value)
    loaded = LearnedAblationRecord.load(tmp_path)
    assert loaded is not None and loaded.profile == "quick" and loaded.config == record.config
    saved_headline = json.loads((tmp_path / "learned_weights_ablations.json").read_text())["headline"]
    assert_nested_close(_plain(loaded.headline()), saved_headline)
    assert_nested_close(_plain(loaded.headline()), _plain(record.headline()))
    assert LearnedAblationRecord.load(tmp_path / "nowhere") is None


def test_checks_refuse_bad_sizes_before_compute():
    with pytest.raises(InvalidParameterError, match="ks"):
        learned_weights_study(settings=("mnist_lr",), sizes=StudySizes(ks=(0,)), checks=True)
    with pytest.raises(InvalidParameterError, match="penalties"):
        learned_weights_study(settings=("mnist_lr",), sizes=StudySizes(penalties=(-1e-3,)), checks=True)
    with pytest.raises(InvalidParameterError, match="k"):
        learned_weights_study(settings=("mnist_lr",), sizes=StudySizes(ks=(5000,)), checks=True)  # 4,000 points
