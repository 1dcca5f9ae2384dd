"""The λ rules of :mod:`dahp.selection.rules` on problems whose answers are known by hand."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from dahp.attribution.spectral import SpectralFactors
from dahp.core.config import InvalidParameterError, TrainingRecipe
from dahp.selection.algorithm import mean_xi
from dahp.selection.rules import (
    DEFAULT_BUDGET,
    DESIGNED_AFTER,
    FITTED,
    RETRAINING,
    RULES,
    RecipeFacts,
    RuleInput,
    all_picks,
    bracket,
    fit_rule,
    recipe_lambda_effective,
    schedule_sum,
    xi_floor,
)


def diagonal(eigenvalues, weights, dimension=None):
    """Dual-form factors with one query whose weight on eigen-direction k is ``weights[k]`` (c_k)."""
    e = torch.tensor(eigenvalues, dtype=torch.float64)
    right = torch.tensor(weights, dtype=torch.float64).sqrt().unsqueeze(1)
    return SpectralFactors(torch.eye(len(e), dtype=torch.float64), e, right, 1.0, "dual", dimension or len(e))


def xi_two(a, b, lam, ca=1.0, cb=1.0):
    """ξ of a query with weights ca, cb on eigenvalues a and b, by hand."""
    x, y = 1 / (a + lam), 1 / (b + lam)
    return (ca * x**2 + cb * y**2) / math.sqrt((ca * x + cb * y) * (ca * x**3 + cb * y**3))


#: weight 1 on eigenvalue 1 and 1e-8 on eigenvalue 1e-4: ξ rises monotonically from 0.02 to 1 around λ = 1e-3
SPREAD = ([1.0, 1e-4], [1.0, 1e-8])


GRID = [float(v) for v in np.logspace(-6, 2, 33)]


def test_xi_floor_and_the_whole_grid_above_the_threshold():
    inp = RuleInput("iffim", [diagonal([1.0, 4.0], [1.0, 1.0])], GRID)
    assert xi_floor(inp.members) == pytest.approx(xi_two(1, 4, 0), rel=1e-12)  # 0.943: close eigenvalues
    pick = RULES["xi_grid_0.5"](inp)
    # ξ dips slightly below its floor (0.94281 at λ = 0.1) before rising to 1: Algorithm 1 takes that dip
    lowest = GRID[int(np.argmin([xi_two(1, 4, lam) for lam in GRID]))]
    assert pick.regularization == lowest and pick.trainings == 0
    assert "ξ̄ > 0.5 over the whole grid" in pick.diagnosis and "lowest ξ̄" in pick.diagnosis
    low_end = RULES["xi_grid_0.5"](RuleInput("iffim", inp.members, GRID[20:]))  # from λ = 0.1 up ξ̄ rises
    assert low_end.regularization == GRID[20] and "the grid's low end" in low_end.diagnosis
    # the relative rule still lands on the transition: half-way from the floor to 1
    relative = RULES["xi_relative_0.5"](inp)
    level = xi_two(1, 4, 0) + 0.5 * (1 - xi_two(1, 4, 0))
    assert xi_two(1, 4, relative.regularization) == pytest.approx(level, abs=2e-4)
    assert GRID[0] < relative.regularization < GRID[-1]


def test_xi_crossing_on_a_spread_spectrum_and_the_grid_below_it():
    inp = RuleInput("iffim", [diagonal(*SPREAD)], GRID)
    curve = [xi_two(1, 1e-4, lam, 1, 1e-8) for lam in GRID]
    assert min(curve) < 0.5 < max(curve)
    pick = RULES["xi_grid_0.5"](inp)
    assert pick.regularization == GRID[int(np.argmin(np.abs(np.array(curve) - 0.5)))]
    assert pick.diagnosis.startswith("ξ̄ crosses 0.5 between")
    crossing = RULES["xi_continuous"](inp)
    assert xi_two(1, 1e-4, crossing.regularization, 1, 1e-8) == pytest.approx(0.5, abs=2e-3)
    small = RuleInput("iffim", inp.members, GRID[:3])  # every candidate far below the crossing
    low = RULES["xi_grid_0.5"](small)
    assert low.regularization == GRID[2] and "ξ̄ < 0.5 over the whole grid" in low.diagnosis


def test_max_slope_is_the_steepest_point_of_the_hand_curve():
    pick = RULES["xi_max_slope"](RuleInput("iffim", [diagonal(*SPREAD)], GRID))
    assert 1e-4 < pick.regularization < 1e-2
    fine = np.logspace(-6, 2, 4000)
    slopes = np.diff([xi_two(1, 1e-4, lam, 1, 1e-8) for lam in fine])
    steepest = math.sqrt(fine[np.argmax(slopes)] * fine[np.argmax(slopes) + 1])
    assert abs(math.log10(pick.regularization / steepest)) < 0.13  # within the rule's 1/8-decade step


@pytest.mark.parametrize("attributor", ["iffim", "trak"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_recipe_rule_for_sgd_is_one_over_the_effective_steps(attributor, momentum):
    facts = RecipeFacts.sgd(0.01, 1250, n_train=4000, n_params=7850, momentum=momentum)
    inp = RuleInput(attributor, [diagonal([1.0, 0.1], [1.0, 1.0])], GRID, recipe=facts)
    # (1 − μ)/(η T) on the mean-loss scale; TRAK's kernel is n/#params times larger
    expected = (1 - momentum) / (0.01 * 1250) * (4000 / 7850 if attributor == "trak" else 1.0)
    assert RULES["recipe"](inp).regularization == pytest.approx(expected, rel=1e-12)


def test_schedule_sums_by_hand():
    # linear, warm-up 2 of 6 steps: factors 0, 1/2, 1, 3/4, 1/2, 1/4
    assert schedule_sum("linear", 2, 6) == pytest.approx(3.0)
    # noam, warm-up 1: min(s^-1/2, s) for s = 1, 2, 3
    assert schedule_sum("noam", 1, 3) == pytest.approx(1 + 2**-0.5 + 3**-0.5)
    assert schedule_sum("constant", 0, 7) == 7.0
    facts = RecipeFacts("sgd", 0.5, 0.0, (0.9, 0.999), 1e-8, 0.0, "linear", 2, 6, 1, 10, 10)
    lam, text = recipe_lambda_effective(RuleInput("iffim", [diagonal([1.0], [1.0])], GRID, recipe=facts))
    assert lam == pytest.approx(1 / (0.5 * 3.0)) and "linear schedule" in text
    with pytest.raises(InvalidParameterError, match="schedule"):
        schedule_sum("cosine_typo", 0, 3)


def test_weight_decay_and_adam_effective_steps_by_hand():
    members = [diagonal([3.0, 1.0], [1.0, 1.0], dimension=4)]  # trace of the mean-loss Fisher: 4
    base = dict(momentum=0.0, betas=(0.9, 0.999), eps=1e-8, schedule="constant", warmup_steps=0, steps=100)
    sizes = dict(batch_size=1, n_train=8, n_params=4)
    sgd = RecipeFacts("sgd", lr=0.1, weight_decay=0.01, **base, **sizes)
    assert RULES["recipe"](RuleInput("iffim", members, GRID, sgd)).regularization == pytest.approx(0.01 + 1 / 10)
    # Adam: v ≈ tr(F) / (n_params · B) = 1, so η_eff = η / (1 + ε); coupled L2 adds wd
    adam = RecipeFacts("adam", lr=0.1, weight_decay=0.01, **base, **sizes)
    root = 1 + 1e-8
    assert RULES["recipe"](RuleInput("iffim", members, GRID, adam)).regularization == pytest.approx(0.01 + root / 10)
    # AdamW's decoupled decay is wd · (√v + ε) on the loss scale; a batch of 4 quarters v
    adamw = RecipeFacts("adamw", lr=0.1, weight_decay=0.01, **base, **{**sizes, "batch_size": 4})
    root = 0.5 + 1e-8
    pick = RULES["recipe"](RuleInput("iffim", members, GRID, adamw))
    assert pick.regularization == pytest.approx(0.01 * root + root / 10)
    # TRAK: the same on its scale, n / n_params = 2, with v from tr(ΦᵀΦ) / n
    trak = RULES["recipe"](RuleInput("trak", members, GRID, adam)).regularization
    root = math.sqrt(4 / 8) + 1e-8
    assert trak == pytest.approx(2 * (0.01 + root / 10))


def test_recipe_facts_from_a_training_recipe():
    recipe = TrainingRecipe(epochs=3, batch_size=64, lr=0.01, momentum=0.9)
    facts = RecipeFacts.from_recipe(recipe, n_train=1000, n_params=50)
    assert facts.steps == 3 * 16 and facts.momentum == 0.9 and facts.optimizer == "sgd"


def test_budget_rules_pick_the_validation_argmax_and_report_their_cost():
    calls = []
    peak = GRID[13]  # 1e-3, inside the transition

    def validation_lds(models, lambdas):
        calls.append((models, list(lambdas)))
        return -np.abs(np.log10(np.asarray(lambdas)) - math.log10(peak))

    inp = RuleInput("iffim", [diagonal(*SPREAD)], GRID, validation_lds=validation_lds)
    for models in (2, 5, 10):
        pick = RULES[f"budget_val_lds_{models}"](inp)
        assert pick.regularization == pytest.approx(peak) and pick.trainings == models
        assert calls[-1] == (models, GRID)
    pick = RULES["budget_bracket_5"](inp)
    chosen, _ = bracket(inp)
    assert calls[-1] == (5, chosen) and pick.trainings == 5 and len(chosen) >= 3
    assert chosen[0] <= peak <= chosen[-1] and pick.regularization == pytest.approx(peak)
    # the bracket runs from ξ̄ at 25% of its rise to 95%
    floor = xi_floor(inp.members)
    assert mean_xi(inp.members, chosen[0]) >= floor + 0.25 * (1 - floor) - 1e-12
    assert mean_xi(inp.members, chosen[-1]) <= floor + 0.95 * (1 - floor) + 1e-12


def test_budget_pick_at_the_grid_edge_is_flagged():
    inp = RuleInput("iffim", [diagonal([1.0], [1.0])], GRID, validation_lds=lambda m, lams: np.arange(len(lams)))
    pick = RULES["budget_val_lds_5"](inp)
    assert pick.regularization == GRID[-1] and "edge" in pick.diagnosis


def test_all_picks_skips_rules_without_their_inputs_and_refuses_named_ones():
    inp = RuleInput("iffim", [diagonal(*SPREAD)], GRID)
    names = [p.rule for p in all_picks(inp)]
    assert "recipe" not in names and "published_default" not in names
    assert not any(n.startswith("budget_") for n in names) and "xi_continuous" in names
    assert all(p.diagnosis and p.seconds >= 0 for p in all_picks(inp))
    with pytest.raises(InvalidParameterError, match="recipe"):
        all_picks(inp, ["recipe"])
    with pytest.raises(InvalidParameterError, match="rules"):
        all_picks(inp, ["xi_grid_0.55"])
    full = RuleInput(
        "iffim", inp.members, GRID, RecipeFacts.sgd(0.1, 10, 2, 2), 1e-5, lambda m, lams: np.ones(len(lams))
    )
    # recipe_gauss_newton converts to TRAK's kernel: for IFFIM it is not applicable; the adaptive budget
    # rule needs the retrained models' per-model sums, which this input does not have
    adaptive_rule = f"{DEFAULT_BUDGET}_8"
    assert adaptive_rule in RULES and not RULES[adaptive_rule].applicable(full)
    assert [p.rule for p in all_picks(full)] == [
        name for name in RULES if name not in ("recipe_gauss_newton", adaptive_rule)
    ]
    assert [p.rule for p in all_picks(dataclasses.replace(full, attributor="trak"))] == [
        name for name in RULES if name != adaptive_rule
    ]
    with pytest.raises(InvalidParameterError, match="validation_sums"):
        all_picks(full, [adaptive_rule])
    assert RULES["published_default"](full).regularization == 1e-5


def test_fit_rule_recovers_planted_constants():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(6):
        xi_bar = np.sort(rng.uniform(0, 1, len(GRID)))
        target = int(np.argmin(np.abs(xi_bar - 0.7)))  # the LDS peaks where ξ̄ is nearest 0.7
        recipe = GRID[target] / 10  # ... and ten times above the recipe rule
        rows.append({"grid": GRID, "xi_bar": xi_bar, "recipe": recipe, "lds": 1 - 0.1 * np.abs(np.arange(33) - target)})
    threshold = fit_rule("xi_fitted", rows)["threshold"]
    for row in rows:
        picked = min(range(33), key=lambda i: (abs(row["xi_bar"][i] - threshold), i))
        assert row["lds"][picked] == row["lds"].max()
    assert fit_rule("recipe_fitted", rows)["factor"] == pytest.approx(10.0)
    for k, row in enumerate(rows):  # TRAK's rows: best λ at 100 × the recipe rule, IFFIM's at 10 ×
        row["attributor"] = "trak" if k % 2 else "iffim"
        row["recipe"] = row["recipe"] / 10 if k % 2 else row["recipe"]
    per = fit_rule("recipe_fitted", rows)
    assert per["factor_iffim"] == pytest.approx(10.0) and per["factor_trak"] == pytest.approx(100.0)
    inp = RuleInput("iffim", [diagonal(*SPREAD)], GRID, RecipeFacts.sgd(0.1, 10, 2, 2))
    fitted = RuleInput(**{**inp.__dict__, "fitted": {"recipe_fitted": {"factor": 10.0, "factor_trak": 3.0}}})
    assert RULES["recipe_fitted"](fitted).regularization == pytest.approx(10 * RULES["recipe"](inp).regularization)
    trak = RuleInput(**{**fitted.__dict__, "attributor": "trak"})
    assert RULES["recipe_fitted"](trak).regularization == pytest.approx(3 * RULES["recipe"](trak).regularization)
    assert FITTED == {"xi_fitted", "recipe_fitted"}


def test_bad_input_refused():
    members = [diagonal([1.0], [1.0])]
    with pytest.raises(InvalidParameterError, match="attributor"):
        RuleInput("tracin", members, GRID)
    with pytest.raises(InvalidParameterError, match="ascending"):
        RuleInput("iffim", members, GRID[::-1])
    with pytest.raises(InvalidParameterError, match="members"):
        RuleInput("iffim", [], GRID)
    with pytest.raises(InvalidParameterError, match="optimizer"):
        RecipeFacts("rmsprop", 0.1, 0.0, (0.9, 0.999), 1e-8, 0.0, "constant", 0, 10, 1, 5, 5)
    with pytest.raises(InvalidParameterError, match="steps"):
        RecipeFacts.sgd(0.1, 0, 5, 5)
    with pytest.raises(InvalidParameterError, match="name"):
        fit_rule("recipe", [])
    with pytest.raises(InvalidParameterError, match="problems_rows"):
        fit_rule("xi_fitted", [{"grid": GRID, "lds": GRID}])


def test_median_rule_returns_the_middle_of_its_three_estimates():
    members = [diagonal(*SPREAD)]
    for lr in (1e-3, 10.0, 1e4):  # the recipe below, between and above the two ξ bounds
        inp = RuleInput("iffim", members, GRID, RecipeFacts.sgd(lr, 100, 2, 2))
        three = [RULES[name](inp).regularization for name in ("xi_continuous", "xi_saturation_0.9", "recipe")]
        pick = RULES["median_xi_recipe"](inp)
        assert pick.regularization == sorted(three)[1] and "median of" in pick.diagnosis
    without = RuleInput("iffim", members, GRID)
    three = [RULES[name](without).regularization for name in ("xi_continuous", "xi_saturation_0.9", "xi_max_slope")]
    assert RULES["median_xi_recipe"](without).regularization == sorted(three)[1]


def test_gauss_newton_conversion_of_traks_recipe_by_hand():
    # TRAK kernel diagonal (3, 1); margins 0 and log 3 give p = 1/2 and 3/4, p(1 − p) = 1/4 and 3/16
    facts = RecipeFacts.sgd(0.1, 10, n_train=2, n_params=4)
    inp = RuleInput("trak", [diagonal([3.0, 1.0], [1.0, 1.0])], GRID, facts, train_margins=np.array([0.0, math.log(3)]))
    weight = (3 * 0.25 + 1 * 3 / 16) / 4
    pick = RULES["recipe_gauss_newton"](inp)
    assert pick.regularization == pytest.approx(RULES["recipe"](inp).regularization / weight)
    assert "p(1−p)" in pick.diagnosis
    # IFFIM, or TRAK without margins: the plain recipe rule, and the diagnosis says why
    for other in (
        RuleInput("iffim", inp.members, GRID, facts, train_margins=np.zeros(2)),
        RuleInput("trak", inp.members, GRID, facts),
    ):
        same = RULES["recipe_gauss_newton"](other)
        assert same.regularization == RULES["recipe"](other).regularization and "no conversion" in same.diagnosis
    with pytest.raises(InvalidParameterError, match="train_margins"):
        RuleInput("trak", inp.members, GRID, facts, train_margins=np.zeros(3))
    # the median rule uses the converted recipe for TRAK when the margins are known
    three = [RULES[n](inp).regularization for n in ("xi_continuous", "xi_saturation_0.9", "recipe_gauss_newton")]
    assert RULES["median_xi_recipe"](inp).regularization == sorted(three)[1]


def test_span_rule_searches_only_between_the_three_estimates_widened_by_half_a_decade():
    members = [diagonal(*SPREAD)]
    inp = RuleInput("iffim", members, GRID, RecipeFacts.sgd(1e-3, 100, 2, 2))  # recipe: λ = 1/(1e-3 · 100) = 10
    three = {name: RULES[name](inp).regularization for name in ("xi_continuous", "xi_saturation_0.9", "recipe")}
    assert three["recipe"] == pytest.approx(10.0) and max(three.values()) == three["recipe"]
    low = min(three.values()) / 10**0.5
    expected = [lam for lam in GRID if low * (1 - 1e-9) <= lam <= 10**1.5 * (1 + 1e-9)]
    assert expected[-1] == pytest.approx(10**1.5)  # the grid has 4 points a decade from 1e-6: 10^1.5 is on it
    calls = []
    for peak, pick_expected in ((GRID[-1], 10**1.5), (GRID[0], expected[0]), (1e-1, 1e-1)):

        def validation_lds(models, lambdas, peak=peak):
            calls.append((models, list(lambdas)))
            return -np.abs(np.log10(np.asarray(lambdas)) - math.log10(peak))

        pick = RULES["budget_span_5"](dataclasses.replace(inp, validation_lds=validation_lds))
        # a peak outside the span is never reached: the pick is the span's nearest end
        assert pick.regularization == pytest.approx(pick_expected) and pick.trainings == 5
        assert calls[-1] == (5, expected) and "span" in pick.diagnosis
    # the span beyond the grid: the grid λ nearest the median estimate
    high_grid = [1e4, 1e5, 1e6]
    far = RuleInput("iffim", members, high_grid, inp.recipe, validation_lds=lambda m, lams: np.zeros(len(lams)))
    assert RULES["budget_span_5"](far).regularization == 1e4
    assert "budget_span_5" in DESIGNED_AFTER and "budget_span_5" in RETRAINING


# ------------------------------------------------------------------------------------------------
# RecipeFacts by keyword, by optimizer and from torch.optim


def test_recipe_facts_by_keyword_equal_the_positional_form_and_the_constructors():
    positional = RecipeFacts("adam", 1e-3, 0.0, (0.9, 0.999), 1e-8, 0.0, "constant", 0, 100, 32, 500, 40)
    keyword = RecipeFacts(optimizer="adam", lr=1e-3, steps=100, batch_size=32, n_train=500, n_params=40)
    assert keyword == positional == RecipeFacts.adam(1e-3, 100, 32, 500, 40)
    adamw = RecipeFacts.adam(1e-3, 100, 32, 500, 40, betas=(0.8, 0.99), weight_decay=0.1, decoupled=True)
    assert (adamw.optimizer, adamw.betas, adamw.weight_decay) == ("adamw", (0.8, 0.99), 0.1)
    sgd = RecipeFacts(lr=0.1, steps=10, n_train=5, n_params=3)  # SGD needs no batch size
    assert sgd == RecipeFacts.sgd(0.1, 10, 5, 3) and sgd.batch_size is None and sgd.schedule == "constant"
    scheduled = RecipeFacts.sgd(0.1, 10, 5, 3, 0.9, weight_decay=0.01, schedule="cosine", warmup_steps=2)
    assert (scheduled.momentum, scheduled.weight_decay, scheduled.schedule, scheduled.warmup_steps) == (
        0.9,
        0.01,
        "cosine",
        2,
    )


def test_recipe_facts_read_from_torch_optimizers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    sgd = RecipeFacts.from_optimizer(
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4), 7, 8, 60
    )
    assert sgd == RecipeFacts.sgd(0.05, 7, 60, 12 + 8 + 2, 0.9, weight_decay=1e-4, batch_size=8)  # frozen bias left out
    adam = RecipeFacts.from_optimizer(
        torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.8, 0.9), eps=1e-6), 7, 8, 60
    )
    assert adam == RecipeFacts.adam(2e-3, 7, 8, 60, 22, betas=(0.8, 0.9), eps=1e-6)
    adamw = RecipeFacts.from_optimizer(torch.optim.AdamW(model.parameters(), lr=2e-3), 7, 8, 60, n_params=5)
    assert adamw == RecipeFacts.adam(2e-3, 7, 8, 60, 5, weight_decay=0.01, decoupled=True)  # AdamW's default decay
    cosine = RecipeFacts.from_optimizer(torch.optim.SGD(model.parameters(), lr=0.1), 7, 8, 60, schedule="cosine")
    assert cosine.schedule == "cosine"
    with pytest.raises(InvalidParameterError, match=r"optimizer='RMSprop'.*SGD.*Adam.*AdamW"):
        RecipeFacts.from_optimizer(torch.optim.RMSprop(model.parameters()), 7, 8, 60)
    with pytest.raises(InvalidParameterError, match="nesterov"):
        RecipeFacts.from_optimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True), 7, 8, 60)
    with pytest.raises(InvalidParameterError, match="param_groups"):
        groups = [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[1].parameters(), "lr": 0.2}]
        RecipeFacts.from_optimizer(torch.optim.SGD(groups, lr=0.1), 7, 8, 60)


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", 0.0),
        ("lr", None),
        ("lr", float("inf")),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("betas", (0.9,)),
        ("betas", (0.9, 1.0)),
        ("eps", 0.0),
        ("weight_decay", -1e-3),
        ("warmup_steps", -1),
        ("steps", -3),
        ("steps", 0),
        ("steps", 10.0),
        ("steps", True),
        ("batch_size", None),  # Adam's step depends on it
        ("batch_size", 0),
        ("n_train", 0),
        ("n_params", None),
        ("optimizer", "rmsprop"),
        ("schedule", "step"),
    ],
)
def test_every_recipe_field_is_checked_with_one_clear_error(field, value):
    good = dict(optimizer="adam", lr=1e-3, steps=100, batch_size=32, n_train=500, n_params=40)
    with pytest.raises(InvalidParameterError, match=f"^invalid {field}=") as refused:
        RecipeFacts(**{**good, field: value})
    assert refused.value.parameter == field and refused.value.value == value
