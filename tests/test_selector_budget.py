"""Issue 21: the adaptive budget search (never more retrainings than stated, finds a clear peak, states
its uncertainty), the retraining-free "don't know" flag, and sealed families reported apart."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch

from dahp.attribution.spectral import factorize
from dahp.core.config import InvalidParameterError
from dahp.experiments import robustness, suite
from dahp.selection import adaptive, rules, selector
from dahp.selection.rules import RuleInput, RulePick

GRID = list(np.logspace(-6, 2, 33))  # 4 per decade


class CountingModels:
    """Retrained models made lazily: ``validation_sums`` counts every model it ever had to make."""

    def __init__(self, peak: int, noise: float, queries: int = 60, seed: int = 0, budget: int = 50) -> None:
        rng = np.random.default_rng(seed)
        self.targets = rng.normal(size=(budget, queries))
        self.noise = rng.normal(size=(len(GRID), budget, queries))
        self.peak, self.scale = peak, noise
        self.made = 0

    def __call__(self, models: int, lambdas) -> tuple[np.ndarray, np.ndarray]:
        self.made = max(self.made, models)
        index = [GRID.index(lam) for lam in lambdas]
        # the subset sums track the retrained outputs best at the peak, ever worse away from it
        distance = np.abs(np.arange(len(GRID)) - self.peak)[index][:, None, None]
        sums = self.targets[None, :models] + self.scale * (1 + distance) * self.noise[index][:, :models]
        return sums, self.targets[:models]


@pytest.mark.parametrize("maximum", [2, 3, 5, 8])
def test_the_search_never_uses_more_models_than_its_maximum(maximum):
    models = CountingModels(peak=10, noise=50.0)  # so noisy the search would want every model
    found = adaptive.adaptive_search(models, GRID, max_models=maximum)
    assert models.made <= maximum and found.models == models.made == maximum


def test_a_clear_peak_is_found_within_one_grid_step_and_early():
    for peak in (5, 16, 27):
        models = CountingModels(peak=peak, noise=0.3, seed=peak)
        found = adaptive.adaptive_search(models, GRID, max_models=8)
        assert abs(found.index - peak) <= 1, (peak, found.index)
        assert found.models < 8  # clear: it stops before the maximum
        low, high = found.ratio_interval
        assert 0.9 <= low <= found.ratio <= high <= 1.0


def test_the_prior_breaks_ties_but_never_bounds_the_search():
    # a peak five decades above the estimates' span is still found
    models = CountingModels(peak=28, noise=0.3, seed=1)
    found = adaptive.adaptive_search(models, GRID, estimates=[GRID[4], GRID[6]], max_models=8)
    assert abs(found.index - 28) <= 1
    # on a flat curve, the prior decides: inside the estimates' span
    flat = CountingModels(peak=0, noise=0.0, seed=2)
    found = adaptive.adaptive_search(flat, GRID, estimates=[GRID[12], GRID[14]], max_models=4)
    assert 12 <= found.index <= 14
    penalty = adaptive.prior_penalty(GRID, [GRID[12], GRID[16]])
    assert penalty[12:17].max() == 0 and penalty[8] == pytest.approx(adaptive.PRIOR_PENALTY)


def test_bad_search_arguments_are_refused():
    with pytest.raises(InvalidParameterError, match="max_models"):
        adaptive.adaptive_search(CountingModels(3, 0.1), GRID, max_models=1)
    with pytest.raises(InvalidParameterError, match="statistic"):
        adaptive.adaptive_search(CountingModels(3, 0.1), GRID, statistic="kendall")


def _input(spectrum_decades: float = 2.0) -> RuleInput:
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(40, 6, generator=gen, dtype=torch.float64) * torch.logspace(0, -spectrum_decades, 6)
    members = [factorize(g, torch.randn(5, 6, generator=gen, dtype=torch.float64), scale=1 / 40)]
    return RuleInput("iffim", members, GRID)


def _parts(monkeypatch, *lambdas: float) -> None:
    picks = {f"estimate_{k}": RulePick(f"estimate_{k}", lam, "", 0, 0.0) for k, lam in enumerate(lambdas)}
    monkeypatch.setattr(rules, "median_parts", lambda inp: picks)


def test_the_dont_know_flag_fires_when_the_recipe_leaves_the_xi_bracket_and_not_when_it_is_inside(monkeypatch):
    from dahp.selection.recipe import RecipeFacts

    recipe = RecipeFacts(lr=0.1, steps=100, n_train=40, n_params=6)
    inp = dataclasses.replace(_input(), recipe=recipe)
    curve = np.asarray(rules.xi_bar_curve(inp.members, inp.grid))
    assert curve.min() < 0.7 < curve.max()  # ξ̄ crosses 0.7: only the estimates can raise the flag
    # (the ξ̄ crossing, ξ̄'s saturation, the recipe's estimate)
    _parts(monkeypatch, 1e-4, 1e-2, 3e-3)  # inside the 2-decade bracket: the wide span alone is no reason
    assert selector.outside_bracket_decades(inp) == 0.0
    assert selector.dont_know(inp, threshold=0.7) is None
    _parts(monkeypatch, 1e-4, 1e-2, 1.5e-2)  # 0.18 decades outside: within one grid step
    assert selector.dont_know(inp, threshold=0.7) is None
    _parts(monkeypatch, 1e-4, 1e-2, 1e-1)  # a decade above the bracket
    assert selector.outside_bracket_decades(inp) == pytest.approx(1.0)
    flag = selector.dont_know(inp, threshold=0.7)
    assert flag is not None and "1.00 decades outside" in flag and "retrain=" in flag
    assert str(selector.BUDGET_TYPICAL_TRAININGS) in flag and "\n" not in flag
    _parts(monkeypatch, 1e-4, 1e-2, 1e-5)  # and below it
    assert selector.outside_bracket_decades(inp) == pytest.approx(1.0)
    # without a recipe there is no independent estimate: only ξ̄ can raise the flag
    assert selector.outside_bracket_decades(dataclasses.replace(inp, recipe=None)) is None
    assert selector.dont_know(dataclasses.replace(inp, recipe=None), threshold=0.7) is None
    # ξ̄ never crossing raises it even when the estimates agree
    _parts(monkeypatch, 1e-3, 2e-3, 1.5e-3)
    assert "never crosses 0.3" in selector.dont_know(inp, threshold=0.3)


def test_sealed_families_exist_are_new_and_have_problems():
    assert len(suite.SEALED_FAMILIES) >= 2 and set(suite.SEALED_FAMILIES) & set(suite.NEW_FAMILIES)
    assert set(suite.SEALED_FAMILIES) <= set(suite.FAMILIES)
    assert set(suite.DEVELOPMENT_FAMILIES).isdisjoint(suite.SEALED_FAMILIES)
    for size in ("small", "default"):
        families = {p.family for p in suite.suite_problems(size)}
        assert set(suite.SEALED_FAMILIES) <= families and set(suite.NEW_FAMILIES) <= families
        assert all(p.sealed == (p.family in suite.SEALED_FAMILIES) for p in suite.suite_problems(size))


@dataclasses.dataclass(frozen=True)
class FakeInput:
    grid: list[float]
    fitted: dict = dataclasses.field(default_factory=dict)
    recipe: None = None


def _case(family: str, k: int) -> robustness.Case:
    problem = types.SimpleNamespace(family=family, name=f"suite_{family}_{k}", model="lr", recipe="sgd")
    curves = types.SimpleNamespace(
        problem=problem,
        attributor="iffim",
        proj_dim=None,
        grid=[1.0, 2.0, 3.0],
        val_lds=np.zeros(3),
        xi_bar=np.zeros(3),
        best=0.5,
        best_regularization=1.0,
        factor_seconds=0.0,
        lds_at=lambda lam: 0.5 if lam == 1.0 else 0.25,
        seconds_per_training=lambda: 1.0,
        paired_se=lambda lam: 0.01,
    )
    inp = FakeInput([1.0, 2.0, 3.0])
    return robustness.Case(curves, inp, "don't know" if k == 0 else None)


def test_sealed_rows_are_reported_apart_and_never_fitted_on():
    fitted_on = []

    def fit(name, rows):
        fitted_on.append({r["family"] for r in rows})
        return {}

    families = ["digits", "iris", "teacher", "wine", *suite.SEALED_FAMILIES]
    cases = [_case(f, k) for f in families for k in range(2)]
    pick = lambda lam: lambda inp: RulePick("x", lam, "", 0, 0.0)
    rule_set = robustness.RuleSet({"good": pick(1.0), "bad": pick(2.0)}, frozenset({"bad"}), fit)
    table = robustness.judge(cases, rule_set)
    assert fitted_on and all(seen.isdisjoint(suite.SEALED_FAMILIES) for seen in fitted_on)
    record = robustness.SelectorRobustnessRecord(table, table.iloc[:0])
    sealed, developed = record.rows_of("sealed"), record.rows_of("development")
    assert set(sealed.family) == set(suite.SEALED_FAMILIES) and (sealed.half == robustness.SEALED_HALF).all()
    assert set(developed.family) == {"digits", "iris", "teacher", "wine"} and len(sealed) + len(developed) == len(table)
    head = record.headline()
    assert head["sealed"]["good"]["n"] == 2 * len(suite.SEALED_FAMILIES) and head["sealed"]["bad"]["worst"] == 0.5
    assert head["development"]["good"]["count_ok_or_2se"] == 8
    assert record.flag_check("bad", group="sealed") == {
        "cases": 4,
        "below": 4,
        "below_flagged": 2,
        "flagged": 2,
    }


def test_the_stated_interval_includes_the_models_noise():
    # the same search, the same pick: the interval over models and queries is never narrower here than the
    # stopping rule's over queries alone, and is clearly wider when the few models disagree
    widths = []
    for seed in range(4):
        models = CountingModels(peak=12, noise=3.0, seed=seed)
        found = adaptive.adaptive_search(models, GRID, max_models=4)
        sums, targets = models(found.models, GRID)
        kernel = adaptive.smoothing_kernel(GRID)
        penalty = np.zeros(len(GRID))
        smoothed = adaptive.smooth(adaptive.per_query_statistic(sums, targets), kernel)
        _, (q_low, q_high) = adaptive.ratio_interval(smoothed, found.index, penalty)
        low, high = found.ratio_interval
        assert 0.0 <= low <= found.ratio <= high <= 1.0
        widths.append((high - low, q_high - q_low))
    assert all(both >= queries - 1e-12 for both, queries in widths)
    assert np.mean([both for both, _ in widths]) > 1.5 * np.mean([queries for _, queries in widths])


def test_interval_check_counts_the_cases_whose_interval_held_the_test_ratio():
    import pandas as pd

    table = pd.DataFrame(
        {
            "rule": ["budget_smooth_8"] * 3 + ["median_xi_recipe"],
            "sealed": [False, False, True, False],
            "lds_over_best": [0.95, 0.70, 0.99, 0.5],
            "expected_ratio_low": [0.90, 0.80, 0.97, float("nan")],
            "expected_ratio_high": [1.0, 1.0, 1.0, float("nan")],
        }
    )
    record = robustness.SelectorRobustnessRecord(table, pd.DataFrame(), {}, "default")
    assert record.interval_check("budget_smooth_8", group="development") == {
        "cases": 2,
        "covered": 1,
        "mean_width": pytest.approx(0.15),
    }
    assert record.interval_check("budget_smooth_8", group="sealed")["covered"] == 1
    assert record.interval_check("median_xi_recipe")["cases"] == 0  # no interval: nothing claimed
