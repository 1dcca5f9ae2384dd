"""One rule vocabulary: the Fig 2/3 cases, the robustness study, the selector and the CLI name and compute
every λ rule through :data:`dahp.selection.rules.RULES`."""

import re

import numpy as np
import pytest
import torch

from dahp.attribution import attributors as attr
from dahp.attribution import dattri_bridge, scales
from dahp.attribution.spectral import factorize
from dahp.core.config import InvalidParameterError
from dahp.selection import rules
from dahp.selection.algorithm import Selection
from dahp.selection.rules import RULES, RecipeFacts, Rule, RuleInput, RulePick
from dahp.selection.selector import SelectorResult, _free_rule_names, select_regularization


def _members(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(40, 6, generator=gen, dtype=torch.float64) * torch.logspace(0, -2, 6, dtype=torch.float64)
    return [factorize(G, torch.randn(5, 6, generator=gen, dtype=torch.float64), scale=1 / 40)]


# ------------------------------------------------------------------------------------------------
# (c) rules carry what they need and cost


def test_rules_expose_needs_and_trainings_as_fields_not_names():
    for name, rule in RULES.items():
        assert rule.name == name and callable(rule) and rule.description
        assert rule.retrains == ("retrained_models" in rule.needs) == (rule.trainings > 0)
    assert rules.RETRAINING == {n for n, r in RULES.items() if r.trainings > 0}
    assert RULES["budget_val_lds_10"].trainings == 10 and RULES["budget_span_5"].designed_after
    assert RULES["xi_grid_0.4"].threshold == 0.4 and RULES["recipe"].needs == {"recipe"}
    # a budget size not registered is built, not parsed
    built = rules.budget_rules(7)
    assert [r.name for r in built] == [
        "budget_val_lds_2",
        "budget_val_lds_5",
        "budget_val_lds_7",
        "budget_bracket_7",
        "budget_span_7",
        "budget_smooth_7",
    ]
    assert [r.trainings for r in built] == [2, 5, 7, 7, 7, 7] and built[-2].designed_after
    assert not built[-1].designed_after  # issue 21's adaptive rule: designed on development families only
    default = rules.default_budget_rule(4)
    assert default.name == "budget_smooth_4" and default.family == rules.DEFAULT_BUDGET == "budget_smooth"
    # applicable() reads needs, never the name
    inp = RuleInput("iffim", _members(), [1e-3, 1.0])
    pick = RulePick("x", 1.0, "", 0, 0.0)
    assert Rule("budget_like_name", lambda i: pick).applicable(inp)
    assert not Rule("plain", lambda i: pick, frozenset({"retrained_models"}), trainings=3).applicable(inp)
    assert not Rule("plain", lambda i: pick, frozenset({"recipe"})).applicable(inp)
    with pytest.raises(InvalidParameterError, match="needs"):
        Rule("bad", lambda i: pick, frozenset({"a_gpu"}))
    with pytest.raises(InvalidParameterError, match="trainings"):
        Rule("bad", lambda i: pick, frozenset({"retrained_models"}))


@pytest.mark.parametrize("attributor", ["iffim", "trak"])
def test_the_selector_and_the_cases_run_the_same_retraining_free_rules(attributor):
    facts = RecipeFacts.sgd(0.1, 10, n_train=40, n_params=6)
    inp = RuleInput(attributor, _members(), [1e-3, 1e-2, 1.0], facts, 0.0)
    assert rules.retraining_free(inp) == _free_rule_names(attributor, True, None)
    assert ("recipe_gauss_newton" in rules.retraining_free(inp)) == (attributor == "trak")


def test_every_scale_and_grid_lives_in_scales():
    assert scales.feature_scale("trak", 100) == 0.1 and scales.feature_scale("loss", 100) == 1.0
    assert scales.gram_scale("iffim", 50) == 1 / 50 and scales.gram_scale("trak", 50) == 1.0
    assert scales.from_mean_loss("trak", 2.0, 400, 800) == 1.0 and scales.from_mean_loss("iffim", 2.0, 400, 800) == 2.0
    grid = scales.case_grid("iffim", 10, 10)
    assert len(grid) == 33 and grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1e2)
    assert scales.case_grid("trak", 10, 40) == pytest.approx([v / 4 for v in grid], rel=1e-15)
    assert scales.selector_grid(2.0)[-1] == pytest.approx(20.0) and len(scales.selector_grid(2.0)) == 33
    with pytest.raises(InvalidParameterError, match="attributor"):
        scales.gram_scale("tracin", 10)


# ------------------------------------------------------------------------------------------------
# the summary the CLI prints


def _result(attributor: str, rule: str = rules.DEFAULT_NO_RETRAINING) -> SelectorResult:
    picks = (
        RulePick("xi_grid_0.5", 0.01, "ξ̄ crosses 0.5", 0, 0.0),
        RulePick("median_xi_recipe", 0.02, "median of three", 0, 0.0),
    )
    chosen = {p.rule: p.regularization for p in picks}
    return SelectorResult(
        attributor,
        chosen[rule],
        rule,
        Selection(0.012, 0.5, 0.5),
        Selection(0.01, 0.49, 0.5),
        [0.001, 0.01, 0.1],
        np.array([0.2, 0.49, 0.8]),
        0.03,
        0.6,
        picks,
    )


@pytest.mark.parametrize("attributor", ["iffim", "trak"])
def test_the_summary_puts_the_default_first_with_its_scale_and_the_paper_pick_beside_it(attributor):
    text = _result(attributor).summary()
    first, *rest = text.splitlines()
    assert first == "use λ = 0.02  [median_xi_recipe (the package default without retraining)]"
    assert any(line.startswith("the paper's pick (ξ̄ = 0.5): λ = 0.01 [xi_grid_0.5") for line in rest)
    assert "xi_continuous" in text and "λ = 0.012" in text and "[recipe]" in text
    scale = next(line for line in rest if line.startswith("  scale:"))
    assert ("sqrt(#parameters)" in scale) == (attributor == "trak")
    assert ("mean training loss" in scale) == (attributor == "iffim")
    with_curve = _result(attributor).summary(curve=True).splitlines()
    assert with_curve[2].endswith("<- Algorithm 1") and with_curve[4].startswith("use λ")


# ------------------------------------------------------------------------------------------------
# (a) and (b) on a small trained model


def _small_state(setting, cache):
    return attr.full_data_state(setting, 0, setting.recipe.epochs, cache, False, torch.device("cpu"))[0]


@pytest.mark.slow
def test_cases_robustness_and_selector_share_names_and_the_recipe(cache):
    from dahp.core.config import GroundTruthConfig
    from dahp.experiments import robustness, suite
    from dahp.experiments.cases import case_rule_input, case_scores, default_grid, run_case, setting_selection
    from helpers import small

    setting = small("mnist_lr")
    members = attr.scorer(setting, "iffim", attr.make_params("iffim"), "val", cache, progress=False).members
    grid = default_grid(setting, "iffim")
    inp = case_rule_input(setting, "iffim", members, grid)
    names = rules.retraining_free(inp)
    recipe = RULES["recipe"](inp).regularization
    # the cases store their picks under exactly these registry names
    case = run_case(
        setting, "iffim", grid, ground_truth_config=GroundTruthConfig(n_models=4), cache=cache, progress=False
    )
    assert list(case.picks) == names and case.regularization("recipe") == recipe
    # the removal table's picks come from the same registry rules on the same input
    picked = case_scores(setting, "iffim", None, cache=cache)
    assert {rule: lam for rule, (lam, _) in picked.items()} == {
        rule: case.picks[rule] for rule in ("published_default", "xi_grid_0.5")
    }
    with pytest.raises(InvalidParameterError, match="rules_used"):
        case_scores(setting, "iffim", None, rules_used=("budget_span_5",), cache=cache)
    # the robustness study judges the registry's own rules, on the same recipe facts
    rule_set = robustness.RuleSet.default()
    assert list(rule_set.rules) == list(RULES) and all(rule_set.rules[n] is RULES[n] for n in names)
    assert suite.recipe_facts(setting) == inp.recipe and rule_set.recipe_lambda(inp) == recipe
    # the selector, on the same model and candidates, runs the same rules with the same recipe λ
    result = setting_selection(setting, "iffim", cache=cache)
    assert [p.rule for p in result.picks] == names
    assert result.candidates == grid and result.recipe_regularization == recipe
    assert result.pick("recipe").regularization == recipe
    # its factors are the scorer's to rounding: every pick agrees with the case's
    for name in ("xi_continuous", "median_xi_recipe", "spectrum_q0.5"):
        assert result.pick(name).regularization == pytest.approx(case.picks[name], rel=1e-4)


@pytest.mark.slow
def test_cli_select_prints_the_selector_default_as_the_lambda_to_use(capsys):
    from dahp.cli import main
    from dahp.core.cache import default_cache
    from dahp.data.settings import get_setting
    from dahp.experiments.cases import default_grid
    from helpers import registered, small

    name = registered(small("mnist_lr"), "mnist_lr_cli_select_quick")
    main(["select", "--setting", name, "--attributor", "iffim"])
    printed = capsys.readouterr().out
    used = re.search(r"^use λ = (\S+)  \[median_xi_recipe", printed, re.MULTILINE)
    assert used, printed
    assert re.search(r"^the paper's pick \(ξ̄ = 0\.5\): λ = \S+ \[xi_grid_0\.5", printed, re.MULTILINE)
    # the same model, data, candidates and recipe given to select_regularization directly
    setting = get_setting(name)
    state = _small_state(setting, default_cache())
    task = dattri_bridge.task(setting, [state], "loss")
    train_loader, val_loader = dattri_bridge.loaders(setting, "val", next(iter(state.values())).dtype)
    facts = RecipeFacts.from_recipe(setting.recipe, setting.data().n_train, setting.n_params())
    result = select_regularization(
        task, train_loader, val_loader, "iffim", candidates=default_grid(setting, "iffim"), recipe=facts, progress=False
    )
    assert result.rule == rules.DEFAULT_NO_RETRAINING
    assert float(used.group(1)) == pytest.approx(result.regularization, rel=1e-3)  # printed to 4 digits
