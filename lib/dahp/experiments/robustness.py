"""When does λ selection work? Every rule on every problem of the robustness suite (issue 13).

For every problem of :mod:`dahp.experiments.suite` and every attributor configuration run on it
(:func:`dahp.experiments.suite.attributor_configs`), each rule of ``dahp.selection.rules`` (or of a rules dict passed in)
picks λ from a :class:`dahp.selection.rules.RuleInput` -- the validation-query spectral factors, the dense λ
grid, the facts of the training recipe, the published default, and the validation-query LDS of the
first ``M'`` retrained models. The pick is judged by the exact test-query LDS there, divided by the
best test-query LDS over the dense grid (``lds_over_best``). Test queries never reach a rule.

Rules designed after the suite's results were seen (``DESIGNED_AFTER``) are marked in the column
``designed_after``: their numbers are not held out, whatever half their problem belongs to.

Sealed families (:data:`dahp.experiments.suite.SEALED_FAMILIES`, issue 21) were sealed before the
adaptive budget rule and the "don't know" flag were designed: their rows carry ``sealed`` and the
``half`` :data:`SEALED_HALF`, they are summarized apart (:meth:`SelectorRobustnessRecord.summary` with
``group="sealed"``), and fitted rules are fitted for them on every development family, never on them.
Each row also says whether the pick lies within two paired standard errors of the best
(``good_or_2se``), whether the retraining-free "don't know" flag fired on the case (``flagged``) and,
for the adaptive rule, its stated expected LDS ratio with interval.

Rules with constants fitted on data (``FITTED``) are judged leave-families-out: the families are
split in two halves (:func:`family_halves`); the rule is fitted (``fit_rule``) on the rows of one
half and reported on the problems of the other, both ways. Every row names the half its problem
belongs to and, for a fitted rule, the families it was fitted on.

Cost: ``seconds`` is the rule's own compute plus, for a rule that uses ``trainings`` retrained
models, that many times the measured training time of one retrained model; the factorization all
retraining-free rules share is in ``factor_seconds``.

Book: "When does the selector work?".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dahp.core.cache import Cache, default_cache
from dahp.core.config import InvalidParameterError
from dahp.core.device import resolve_device
from dahp.core.published import PUBLISHED_DEFAULTS
from dahp.core.results import matches, read_json, write_json
from dahp.core.statistics import fraction_summary
from dahp.experiments import suite
from dahp.experiments.profiles import get_profile
from dahp.selection import rules
from dahp.selection.rules import DEFAULT_NO_RETRAINING, RuleInput
from dahp.selection.selector import dont_know

#: The held-out halves' labels, in the order :func:`family_halves` returns them.
HALVES = ("A", "B")
#: The ``half`` label of a sealed family's rows (:data:`dahp.experiments.suite.SEALED_FAMILIES`): fitted
#: rules are fitted on every development family for them, and no rule was designed looking at them.
SEALED_HALF = "sealed"


def family_halves(families: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split families into two halves by alternating over their sorted names (A gets the 1st, 3rd, ...)."""
    ordered = sorted(set(families))
    if len(ordered) < 2:
        raise InvalidParameterError("families", ordered, "at least two families (one to fit on, one to report on)")
    return ordered[0::2], ordered[1::2]


@dataclasses.dataclass(frozen=True)
class RuleSet:
    """The rules judged: name -> rule, the fitted ones, and the function that fits one.

    A fitted rule is fitted by ``fit_rule(name, rows)`` (one row per case of the fitting half, see
    :func:`fit_rows`) and applied as ``rule(inp)`` with the constants in ``inp.fitted[name]``, as
    :mod:`dahp.selection.rules` defines.
    """

    rules: Mapping[str, Callable]
    fitted: frozenset[str]
    fit_rule: Callable[[str, list[dict]], Any] | None
    #: rules designed after the suite's results were seen: their rows are marked, not held out
    designed_after: frozenset[str] = frozenset()

    @classmethod
    def default(cls) -> RuleSet:
        """``dahp.selection.rules``'s rules (imported here, so the suite runs without it until it is asked for)."""

        return cls(dict(rules.RULES), frozenset(rules.FITTED), rules.fit_rule, frozenset(rules.DESIGNED_AFTER))

    def check(self) -> None:
        """Every rule callable; every fitted rule listed and fittable (before any compute)."""
        for name, rule in self.rules.items():
            if not callable(rule):
                raise InvalidParameterError(f"rules[{name!r}]", rule, "a callable RuleInput -> RulePick")
        unknown = sorted(self.fitted - set(self.rules))
        if unknown:
            raise InvalidParameterError("fitted", unknown, f"names among the rules {sorted(self.rules)}")
        if self.fitted and self.fit_rule is None:
            raise InvalidParameterError("fit_rule", None, "a function (name, rows) -> params for the fitted rules")

    def apply_fitted(self, name: str, params: Any, inp) -> Any:
        """A fitted rule's pick with the constants ``params`` (passed as ``inp.fitted[name]``)."""
        return self.rules[name](dataclasses.replace(inp, fitted={**inp.fitted, name: params}))

    def recipe_lambda(self, inp) -> float | None:
        """The plain recipe rule's λ on a case (what ``recipe_fitted`` scales), when there is one."""
        rule = self.rules.get("recipe")
        return None if rule is None or inp.recipe is None else float(rule(inp).regularization)


@dataclasses.dataclass
class Case:
    """One (problem, attributor configuration) of the study: its curves and the rules' input."""

    curves: suite.Curves
    inp: Any  #: the dahp.selection.rules.RuleInput the rules see
    flag: str | None = None  #: the retraining-free "don't know" flag (:func:`dahp.selection.selector.dont_know`)

    @property
    def family(self) -> str:
        """The problem's family."""
        return self.curves.problem.family


def rule_input(curves: suite.Curves):
    """The :class:`dahp.selection.rules.RuleInput` of a case: validation-query information only."""

    return RuleInput(
        attributor=curves.attributor,
        members=curves.members,
        grid=list(curves.grid),
        recipe=curves.recipe_facts(),
        published_default=PUBLISHED_DEFAULTS[curves.attributor],
        validation_lds=curves.validation_lds,
        train_margins=curves.train_margins,
        validation_sums=curves.validation_sums,
    )


def _row(case: Case, name: str, pick, half: str, fitted_on: Sequence[str], designed_after: bool) -> dict[str, Any]:
    curves = case.curves
    problem = curves.problem
    lam = float(pick.regularization)
    value = curves.lds_at(lam)
    se = curves.paired_se(lam)
    ratio = pick.ratio if getattr(pick, "ratio", None) is not None else (float("nan"),) * 3
    return {
        "family": problem.family,
        "problem": problem.name,
        "model": problem.model,
        "recipe": problem.recipe,
        "attributor": curves.attributor,
        "proj_dim": curves.proj_dim,
        "rule": name,
        "lambda": lam,
        "lds": value,
        "lds_over_best": value / curves.best,
        "best_lds": curves.best,
        "best_lambda": curves.best_regularization,
        "seconds": float(pick.seconds) + pick.trainings * curves.seconds_per_training(),
        "rule_seconds": float(pick.seconds),
        "trainings": int(pick.trainings),
        "factor_seconds": curves.factor_seconds,
        "half": half,
        "fitted_on": ",".join(fitted_on),
        "designed_after": designed_after,
        "sealed": problem.family in suite.SEALED_FAMILIES,
        "paired_se": se,
        # ≥ 0.95 of the best, or within two paired standard errors of it (over test queries)
        "good_or_2se": bool(value / curves.best >= TARGET_EVERY_CASE or curves.best - value <= 2 * se),
        # the retraining-free "don't know" flag on this case (the same for every rule of the case)
        "flagged": case.flag is not None,
        "expected_ratio": ratio[0],
        "expected_ratio_low": ratio[1],
        "expected_ratio_high": ratio[2],
        "diagnosis": pick.diagnosis,
    }


def _curve_rows(curves: suite.Curves) -> list[dict[str, Any]]:
    return [
        {
            "problem": curves.problem.name,
            "attributor": curves.attributor,
            "proj_dim": curves.proj_dim,
            "lambda": lam,
            "xi_bar": float(xi),
            "test_lds": float(value),
            "val_lds": float(val),
        }
        for lam, xi, value, val in zip(curves.grid, curves.xi_bar, curves.test_lds, curves.val_lds)
    ]


def fit_rows(cases: Sequence[Case], rule_set: RuleSet) -> list[dict[str, Any]]:
    """What a fitted rule is fitted on, one row per case: the grid, the *validation*-query LDS of all M
    retrained models at every grid λ (never the test queries), ξ̄ and the recipe rule's λ."""
    return [
        {
            "family": case.family,
            "problem": case.curves.problem.name,
            "attributor": case.curves.attributor,
            "proj_dim": case.curves.proj_dim,
            "grid": list(case.curves.grid),
            "lds": case.curves.val_lds,
            "xi_bar": case.curves.xi_bar,
            "recipe": rule_set.recipe_lambda(case.inp),
            "input": case.inp,
        }
        for case in cases
    ]


def judge(cases: Sequence[Case], rule_set: RuleSet) -> pd.DataFrame:
    """Every rule's row on every case; fitted rules leave-families-out, both ways."""
    rule_set.check()
    developed = [c.family for c in cases if c.family not in suite.SEALED_FAMILIES]
    halves = dict(zip(HALVES, family_halves(developed)))
    half_of = {family: label for label, families in halves.items() for family in families}
    half_of.update({c.family: SEALED_HALF for c in cases if c.family in suite.SEALED_FAMILIES})
    rows = []
    for case in cases:
        for name, rule in rule_set.rules.items():
            if name not in rule_set.fitted:
                late = name in rule_set.designed_after
                rows.append(_row(case, name, rule(case.inp), half_of[case.family], (), late))
    sealed = [c for c in cases if c.family in suite.SEALED_FAMILIES]
    for name in sorted(rule_set.fitted):
        for label, held_out in halves.items():
            train = sorted(f for f, h in half_of.items() if f not in held_out and h != SEALED_HALF)
            params = rule_set.fit_rule(name, fit_rows([c for c in cases if c.family in train], rule_set))
            for case in cases:
                if case.family in held_out:
                    pick = rule_set.apply_fitted(name, params, case.inp)
                    rows.append(_row(case, name, pick, label, train, name in rule_set.designed_after))
        if sealed:  # fitted on every development family, never on a sealed one
            params = rule_set.fit_rule(name, fit_rows([c for c in cases if half_of[c.family] != SEALED_HALF], rule_set))
            for case in sealed:
                pick = rule_set.apply_fitted(name, params, case.inp)
                rows.append(_row(case, name, pick, SEALED_HALF, sorted(halves["A"] + halves["B"]), False))
    return pd.DataFrame(rows)


def build_cases(
    problems: Sequence[suite.Problem],
    config: suite.CurveConfig,
    cache: Cache | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> list[Case]:
    """The curves and rule input of every attributor configuration of every problem."""
    cases = []
    for problem in problems:
        for attributor, proj_dim in suite.attributor_configs(problem):
            curves = suite.problem_curves(problem, attributor, proj_dim, config, cache, progress, device)
            inp = rule_input(curves)
            cases.append(Case(curves, inp, dont_know(inp)))
    return cases


def robustness_study(
    profile: str = "quick",
    rules: Mapping[str, Callable] | None = None,
    fitted: Iterable[str] | None = None,
    fit_rule: Callable[[str, list[dict]], Any] | None = None,
    problems: Sequence[str] | None = None,
    config: suite.CurveConfig | None = None,
    cache: Cache | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> SelectorRobustnessRecord:
    """The study at the profile's suite size; rules default to ``dahp.selection.rules``.

    Args:
        rules, fitted, fit_rule: the rules judged (default: ``dahp.selection.rules.RULES``, ``FITTED`` and
            ``fit_rule``); with ``rules`` given, ``fitted`` defaults to none.
        problems: problem names (default: the profile's suite); at least two families.
        config: the curves' sizes (default: the profile's ``suite_models`` and ``suite_trak_ensemble``).
    """
    sizes = get_profile(profile)
    rule_set = RuleSet.default() if rules is None else RuleSet(dict(rules), frozenset(fitted or ()), fit_rule)
    rule_set.check()
    chosen = (
        [suite.get_problem(name) for name in problems] if problems is not None else suite.suite_problems(sizes.suite)
    )
    family_halves(p.family for p in chosen if not p.sealed)
    config = config or suite.CurveConfig(n_models=sizes.suite_models, trak_ensemble=sizes.suite_trak_ensemble)
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    started = time.perf_counter()
    cases = build_cases(chosen, config, cache, progress, device)
    table = judge(cases, rule_set)
    curves = pd.DataFrame([row for case in cases for row in _curve_rows(case.curves)])
    halves = dict(zip(HALVES, family_halves(p.family for p in chosen if not p.sealed)))
    study = {
        "suite": sizes.suite,
        "problems": [p.name for p in chosen],
        "curves": dataclasses.asdict(config),
        "halves": halves,
        "sealed_families": sorted({p.family for p in chosen if p.sealed}),
        "rules": list(rule_set.rules),
        "fitted": sorted(rule_set.fitted),
        "designed_after": sorted(rule_set.designed_after),
        "device": str(device),
        "wall_seconds": time.perf_counter() - started,
    }
    return SelectorRobustnessRecord(table, curves, study, profile)


# --------------------------------------------------------------------------------------------
# The record


#: Issue 13's target for a rule: at least this fraction of the best LDS on every case ...
TARGET_EVERY_CASE = 0.95
#: ... and at least this in the worst case.
TARGET_WORST_CASE = 0.9
#: The selector's two modes and the most retrained models a rule of each may use (issue 21: at most 8,
#: at most 5 on average).
MODES = {"no retraining": 0, "a budget of at most 8 retrained models": 8}
#: The groups of families reported apart: those rules were designed on, and the sealed ones.
GROUPS = ("development", "sealed")


#: The columns of ``selector_robustness.csv`` that come first (issue 13's list; more follow).
ROBUSTNESS_COLUMNS = (
    "family",
    "problem",
    "recipe",
    "attributor",
    "rule",
    "lambda",
    "lds",
    "lds_over_best",
    "seconds",
    "trainings",
)


@dataclasses.dataclass
class SelectorRobustnessRecord:
    """Every λ rule on every problem of the robustness suite (:mod:`dahp.experiments.robustness`).

    ``table``: one row per (problem, attributor configuration, rule) with the rule's λ, the test-query
    LDS there, LDS / best (best over the dense grid), its cost in seconds and in retrained models,
    the held-out half its family belongs to and, for a fitted rule, the families it was fitted on.
    ``curves``: per (problem, attributor configuration, grid λ) ξ̄ on the validation queries and
    the test-query LDS.
    """

    table: pd.DataFrame
    curves: pd.DataFrame
    study: dict = dataclasses.field(default_factory=dict)
    profile: str | None = None
    stem: str = "selector_robustness"

    @property
    def rules(self) -> list[str]:
        """The rules judged, in the table's order."""
        return list(dict.fromkeys(self.table.rule))

    def rows_of(self, group: str | None = None) -> pd.DataFrame:
        """The table's rows of one of :data:`GROUPS` (development or sealed families), or all rows."""
        if group is None:
            return self.table
        if group not in GROUPS:
            raise InvalidParameterError("group", group, GROUPS)
        sealed = self.table.sealed.astype(bool) if "sealed" in self.table else pd.Series(False, index=self.table.index)
        return self.table[sealed == (group == "sealed")]

    def summary(self, half: str | None = None, group: str | None = None) -> dict[str, dict[str, Any]]:
        """Per rule :func:`fraction_summary` over all rows, or over the rows of one held-out half and/or one
        of :data:`GROUPS`; with the count within two paired SE (``count_ok_or_2se``), the mean and the most
        retrained models and the mean seconds."""
        rows = self.rows_of(group)
        rows = rows if half is None else rows[rows.half == half]
        found = {}
        for rule in self.rules:
            mine = rows[rows.rule == rule]
            found[rule] = {
                **fraction_summary(mine.lds_over_best),
                "count_ok_or_2se": int(mine.good_or_2se.astype(bool).sum()) if "good_or_2se" in mine else 0,
                "trainings_mean": float(mine.trainings.mean()) if len(mine) else float("nan"),
                "trainings_max": int(mine.trainings.max()) if len(mine) else 0,
                "seconds_mean": float(mine.seconds.mean()) if len(mine) else float("nan"),
            }
        return found

    def summary_table(self, half: str | None = None, group: str | None = None) -> pd.DataFrame:
        """:meth:`summary` as a frame, one row per rule, best worst case first."""
        frame = pd.DataFrame.from_dict(self.summary(half, group), orient="index")
        frame.index.name = "rule"
        return frame.sort_values(["worst", "median"], ascending=False)

    def flag_check(self, rule: str = DEFAULT_NO_RETRAINING, below: float = 0.8, group: str | None = None) -> dict:
        """How the "don't know" flag covers ``rule``'s failures: cases below ``below`` of the best, how many
        of them were flagged, and how many cases were flagged in all."""
        rows = self.rows_of(group)
        rows = rows[rows.rule == rule]
        if "flagged" not in rows:
            return {"cases": 0, "below": 0, "below_flagged": 0, "flagged": 0}
        low = rows[rows.lds_over_best < below]
        return {
            "cases": len(rows),
            "below": len(low),
            "below_flagged": int(low.flagged.astype(bool).sum()),
            "flagged": int(rows.flagged.astype(bool).sum()),
        }

    def interval_check(self, rule: str, group: str | None = None) -> dict:
        """How often ``rule``'s stated interval of LDS(pick) / LDS(best) (budget rules) held the ratio measured
        on the test queries: cases with an interval, how many it covered, and its mean width."""
        rows = self.rows_of(group)
        rows = rows[(rows.rule == rule)]
        if "expected_ratio_low" not in rows:
            return {"cases": 0, "covered": 0, "mean_width": float("nan")}
        rows = rows[rows.expected_ratio_low.notna()]
        covered = (rows.lds_over_best >= rows.expected_ratio_low - 1e-9) & (
            rows.lds_over_best <= rows.expected_ratio_high + 1e-9
        )
        width = rows.expected_ratio_high - rows.expected_ratio_low
        return {
            "cases": len(rows),
            "covered": int(covered.sum()),
            "mean_width": float(width.mean()) if len(rows) else float("nan"),
        }

    def worst_cases(self, rule: str, count: int = 3) -> pd.DataFrame:
        """The rows where ``rule`` did worst (lowest LDS / best)."""
        rows = self.table[self.table.rule == rule]
        return rows.sort_values("lds_over_best").head(count)

    def curve(self, problem: str, attributor: str, proj_dim: int | None) -> pd.DataFrame:
        """ξ̄ and the test LDS over the dense grid of one case."""
        rows = self.curves[matches(self.curves, {"problem": problem, "attributor": attributor, "proj_dim": proj_dim})]
        if rows.empty:
            raise InvalidParameterError("case", (problem, attributor, proj_dim), "a case of the study")
        return rows.sort_values("lambda")

    def headline(self) -> dict[str, Any]:
        """Per rule: worst, 10th percentile, median LDS / best and the count ≥ 0.95, over all problems and
        over each held-out half; the number of problems and cases."""
        halves = sorted(self.table.half.dropna().unique())
        groups = [g for g in GROUPS if len(self.rows_of(g))] if "sealed" in self.table else []
        return {
            "problems": int(self.table.problem.nunique()),
            "cases": int(self.table.groupby(["problem", "attributor", "proj_dim"], dropna=False).ngroups),
            "all": self.summary(),
            **{f"held_out_{half}": self.summary(half) for half in halves},
            **{group: self.summary(group=group) for group in groups},
        }

    def meets_target(self, rule: str) -> bool:
        """Issue 13's target: ``rule`` reaches :data:`TARGET_EVERY_CASE` of the best LDS on every case and
        :data:`TARGET_WORST_CASE` in its worst case."""
        found = self.summary()[rule]
        return found["count_ge_095"] == found["n"] and found["worst"] >= TARGET_WORST_CASE

    def mode_rules(self, mode: str) -> list[str]:
        """The rules of one of the selector's :data:`MODES` (those using at most its retrained models;
        the budget mode: at least one), in the table's order."""
        if mode not in MODES:
            raise InvalidParameterError("mode", mode, list(MODES))
        limit = MODES[mode]
        most = self.table.groupby("rule", sort=False).trainings.max()
        return [r for r in self.rules if most[r] <= limit and (limit == 0 or most[r] > 0)]

    def best_worst_case(self, candidates: Sequence[str]) -> str | None:
        """Among ``candidates``, the rule with the best worst case over the held-out halves (ties: the
        better median over all cases); None when none ran."""
        head = self.headline()
        scored = []
        for rule in candidates:
            halves = [head[f"held_out_{h}"][rule] for h in HALVES if rule in head.get(f"held_out_{h}", {})]
            if not halves:
                continue
            scored.append((min(s["worst"] for s in halves), head["all"][rule]["median"], rule))
        return max(scored)[2] if scored else None

    def save(self, folder: Path) -> Path:
        """Write ``selector_robustness.csv``, ``selector_robustness_curves.csv`` and ``selector_robustness.json``."""
        path = folder / f"{self.stem}.csv"
        columns = [*ROBUSTNESS_COLUMNS, *[c for c in self.table.columns if c not in ROBUSTNESS_COLUMNS]]
        self.table.reindex(columns=columns).to_csv(path, index=False)
        self.curves.to_csv(folder / f"{self.stem}_curves.csv", index=False)
        write_json(
            folder / f"{self.stem}.json",
            {
                "record": "selector_robustness",
                "profile": self.profile,
                "study": self.study,
                "headline": self.headline(),
            },
        )
        return path

    @classmethod
    def load(cls, folder: Path, stem: str = "selector_robustness") -> SelectorRobustnessRecord | None:
        """The record saved under ``folder``, or None."""
        if not (folder / f"{stem}.json").exists():
            return None
        meta = read_json(folder / f"{stem}.json")
        return cls(
            pd.read_csv(folder / f"{stem}.csv", keep_default_na=False, na_values=[""]),
            pd.read_csv(folder / f"{stem}_curves.csv"),
            meta.get("study", {}),
            meta.get("profile"),
            stem,
        )
