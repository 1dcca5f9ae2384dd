"""The robustness study: its table recomputed by hand on tiny problems with stand-in rules,
leave-families-out fitting, input checks before compute, and the record's summaries and files."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pandas as pd
import pytest
import rules_standin
from scipy.stats import spearmanr

from dahp.core.cache import Cache
from dahp.core.config import InvalidParameterError
from dahp.core.statistics import fraction_summary
from dahp.experiments import robustness, suite
from dahp.experiments.robustness import ROBUSTNESS_COLUMNS, SelectorRobustnessRecord
from helpers import assert_nested_close

TWO_FAMILIES = ["suite_iris_lr_sgd", "suite_gauss_mix_lr_sgd"]


def by_hand_lds(scores, targets, subsets) -> float:
    """Mean over queries of scipy's Spearman correlation between subset sums and retrained targets."""
    scores, targets, subsets = (np.asarray(t, dtype=float) for t in (scores, targets, subsets))
    membership = np.zeros((len(subsets), len(scores)))
    for j, chosen in enumerate(subsets.astype(int)):
        membership[j, chosen] = 1.0
    sums = membership @ scores
    q = scores.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.atleast_2d(spearmanr(sums, targets, axis=0).statistic)
    per_query = np.diag(matrix[:q, q:]) if matrix.shape[0] > 1 else matrix.ravel()
    return float(np.nanmean(per_query))


#: Tiny curves: 6 retrained models, TRAK on one model.
TINY = suite.CurveConfig(n_models=6, trak_ensemble=1)


@pytest.fixture(scope="module")
def study_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def study(study_cache):
    """The study on two tiny problems of two families with the stand-in rules."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAHP_CACHE_DIR", str(study_cache))
        patch.setenv("DAHP_DEVICE", "cpu")
        rules_standin.FIT_CALLS.clear()
        record = robustness.robustness_study(
            "quick", rules_standin.RULES, rules_standin.FITTED, rules_standin.fit_rule, TWO_FAMILIES, TINY
        )
        yield record, list(rules_standin.FIT_CALLS)


def test_the_table_equals_a_computation_by_hand(study, study_cache, monkeypatch):
    record, _ = study
    monkeypatch.setenv("DAHP_CACHE_DIR", str(study_cache))  # the study's models, retrained models and factors
    table = record.table
    assert len(table) == 2 * 2 * 3  # problems x attributors (full gradients only here) x rules
    for (problem, attributor), rows in table.groupby(["problem", "attributor"]):
        curves = suite.problem_curves(problem, attributor, None, TINY)
        truth = curves.truth
        top = max(float(m.eigenvalues.max()) for m in curves.members)
        grid = [top * 10.0**e for e in np.linspace(-11, 1, 49)]
        test = [by_hand_lds(curves.test.scores(lam), truth.targets("test"), truth.subsets) for lam in grid]
        best = max(test)
        val2 = [by_hand_lds(curves.validation.scores(lam), truth.targets("val")[:2], truth.subsets[:2]) for lam in grid]
        expected_lambda = {"fourth_point": grid[3], "val_best_2": grid[int(np.nanargmax(val2))], "shifted": grid[46]}
        for _, row in rows.iterrows():
            lam = expected_lambda[row.rule]
            value = by_hand_lds(curves.test.scores(lam), truth.targets("test"), truth.subsets)
            assert row["lambda"] == pytest.approx(lam, rel=1e-12)
            assert row.lds == pytest.approx(value, abs=1e-10)
            assert row.best_lds == pytest.approx(best, abs=1e-10)
            assert row.lds_over_best == pytest.approx(value / best, abs=1e-10)
            trainings = 2 if row.rule == "val_best_2" else 0
            assert row.trainings == trainings
            assert row.seconds == pytest.approx(row.rule_seconds + trainings * truth.train_seconds / truth.n_models)


def test_fitted_rules_are_never_fitted_on_the_family_they_are_reported_on(study):
    record, calls = study
    fitted = record.table[record.table.rule == "shifted"]
    assert len(fitted) == 4  # every case once, from the fit on the other half
    for _, row in fitted.iterrows():
        assert row.family not in row.fitted_on.split(",") and row.fitted_on
    assert sorted(families for _, families, _ in [(c[0], tuple(sorted(c[1])), c[2]) for c in calls]) == [
        ("gauss_mix",),
        ("iris",),
    ]
    for _, _, rows in calls:  # what the fit saw: validation-query curves only
        for row in rows:
            curves = row["input"].validation_lds
            assert len(row["lds"]) == len(row["grid"]) == 49 and callable(curves)


def _fake_case(family: str, k: int) -> robustness.Case:
    """A case with a flat test LDS of 0.5 (every pick at 1.0 of best), no compute behind it."""
    problem = types.SimpleNamespace(family=family, name=f"suite_{family}_{k}", model="lr", recipe="sgd")
    curves = types.SimpleNamespace(
        problem=problem,
        attributor="iffim",
        proj_dim=None,
        grid=[1.0, 2.0, 3.0, 4.0, 5.0],
        val_lds=np.zeros(5),
        xi_bar=np.zeros(5),
        best=0.5,
        best_regularization=1.0,
        factor_seconds=0.0,
        lds_at=lambda lam: 0.5,
        seconds_per_training=lambda: 1.0,
        paired_se=lambda lam: 0.0,
    )
    return robustness.Case(curves, FakeInput([1.0, 2.0, 3.0, 4.0, 5.0]))


@dataclasses.dataclass(frozen=True)
class FakeInput:
    grid: list[float]
    fitted: dict = dataclasses.field(default_factory=dict)
    recipe: None = None


def test_leave_families_out_both_ways_over_four_families():
    rules_standin.FIT_CALLS.clear()
    families = ["teacher", "digits", "iris", "gauss_mix"]
    cases = [_fake_case(f, k) for f in families for k in range(2)]
    rule_set = robustness.RuleSet({"shifted": rules_standin.shifted}, frozenset({"shifted"}), rules_standin.fit_rule)
    table = robustness.judge(cases, rule_set)
    assert robustness.family_halves(families) == (["digits", "iris"], ["gauss_mix", "teacher"])
    assert [sorted(c[1]) for c in rules_standin.FIT_CALLS] == [["gauss_mix", "teacher"], ["digits", "iris"]]
    for _, row in table.iterrows():
        held_out = {"A": ["digits", "iris"], "B": ["gauss_mix", "teacher"]}[row.half]
        assert row.family in held_out and set(row.fitted_on.split(",")).isdisjoint(held_out)
    # 4 rows fitted on -> offset 1 -> index 5 - 5 + 1
    assert (table["lambda"] == 2.0).all() and len(table) == 8


def test_the_study_refuses_bad_input_before_any_compute(monkeypatch):
    def no_compute(*args, **kwargs):
        raise AssertionError("computed before the input was checked")

    monkeypatch.setattr(suite, "problem_curves", no_compute)
    with pytest.raises(InvalidParameterError, match="profile"):
        robustness.robustness_study("huge", rules_standin.RULES)
    with pytest.raises(InvalidParameterError, match="rules"):
        robustness.robustness_study("quick", {"broken": 3})
    with pytest.raises(InvalidParameterError, match="fitted"):
        robustness.robustness_study("quick", rules_standin.RULES, fitted={"nope"}, fit_rule=rules_standin.fit_rule)
    with pytest.raises(InvalidParameterError, match="fit_rule"):
        robustness.robustness_study("quick", rules_standin.RULES, fitted={"shifted"})
    with pytest.raises(InvalidParameterError, match="families"):
        robustness.robustness_study("quick", rules_standin.RULES, problems=["suite_iris_lr_sgd", "suite_iris_lr_adam"])
    with pytest.raises(InvalidParameterError, match="problem"):
        robustness.robustness_study("quick", rules_standin.RULES, problems=["suite_iris_lr_sgd", "mnist_lr"])


def test_fraction_summary_on_hand_checked_values():
    summary = fraction_summary([0.5, 0.96, 1.0, 0.97, 0.99])
    assert summary == {
        "worst": 0.5,
        "p10": pytest.approx(0.5 + 0.4 * (0.96 - 0.5)),
        "median": 0.97,
        "count_ge_095": 4,
        "n": 5,
    }
    with_nan = fraction_summary([1.0, float("nan")])
    assert np.isnan(with_nan["worst"]) and with_nan["count_ge_095"] == 1 and with_nan["median"] == 1.0


def test_the_record_round_trips_and_its_csv_leads_with_the_issues_columns(study, tmp_path):
    record, _ = study
    path = record.save(tmp_path)
    assert list(pd.read_csv(path).columns[: len(ROBUSTNESS_COLUMNS)]) == list(ROBUSTNESS_COLUMNS)
    loaded = SelectorRobustnessRecord.load(tmp_path)
    assert_nested_close(loaded.headline(), record.headline())
    head = record.headline()
    assert head["problems"] == 2 and head["cases"] == 4
    # two development families, no sealed one: the development group only
    assert set(head) == {"problems", "cases", "all", "held_out_A", "held_out_B", "development"}
    for rule in ("fourth_point", "val_best_2", "shifted"):
        rows = record.table[record.table.rule == rule].lds_over_best
        assert head["all"][rule]["worst"] == pytest.approx(rows.min())
        assert head["all"][rule]["count_ge_095"] == int((rows >= 0.95).sum())
        assert head["held_out_A"][rule]["n"] + head["held_out_B"][rule]["n"] == 4
    curve = loaded.curve("suite_iris_lr_sgd", "iffim", None)
    assert len(curve) == 49 and curve["lambda"].is_monotonic_increasing


def test_rules_designed_after_the_results_are_marked_in_every_row(study, study_cache, monkeypatch):
    record, _ = study
    assert not record.table.designed_after.any()  # the stand-in rules: none designed after
    from dahp.selection import rules

    assert robustness.RuleSet.default().designed_after == rules.DESIGNED_AFTER == {"budget_span_5"}
    monkeypatch.setenv("DAHP_DEVICE", "cpu")
    problems = [suite.get_problem(name) for name in TWO_FAMILIES]
    cases = robustness.build_cases(problems, TINY, Cache(study_cache))  # the study's cached curves
    late = {"fourth_point"}
    marked = robustness.RuleSet(
        rules_standin.RULES, frozenset(rules_standin.FITTED), rules_standin.fit_rule, frozenset(late)
    )
    table = robustness.judge(cases, marked)
    assert (table.designed_after == table.rule.isin(late)).all() and table.designed_after.sum() == len(cases)
