"""λ-selection cases: the ξ rule and every baseline, judged by the LDS on the test queries (Fig 2, 3, 5, 6).

A *case* is one (setting, attributor, projection, TRAK ensemble, subset fraction α). The ξ rule
(:mod:`dahp.selection.algorithm`) sees only the validation queries and the full-data model(s); the LDS that
judges it uses the test queries and the retrained models. Every rule's pick gets its per-query
test LDS, so the records (:class:`dahp.experiments.cases.SelectionCase`) compare picks paired,
query by query. Cases are cached whole, so Fig 2/3/5/6 and the removal table share them. Every
computation runs on ``device`` (:func:`dahp.core.device.resolve_device`), which is not part of a
case's key: its numbers do not depend on it beyond rounding.

Book: "Fig 2", "Fig 3", "Fig 5", "Fig 6".
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dahp.attribution import attributors as attr
from dahp.attribution.lds import lds
from dahp.core.cache import Cache, default_cache
from dahp.core.config import GroundTruthConfig, InvalidParameterError
from dahp.core.device import resolve_device
from dahp.core.published import PUBLISHED_DEFAULTS
from dahp.core.results import _int_or_none, matches, read_json, write_json
from dahp.core.statistics import Estimate, mean_estimate, paired_difference, paired_ratio
from dahp.data.settings import Setting, get_setting
from dahp.selection.algorithm import (
    mean_eigenvalue_rule,
    mean_xi,
    recipe_regularization,
    select_continuous,
    select_on_grid,
    spectrum_quantile,
    xi_bar_curve,
)
from dahp.training.ground_truth import ground_truth

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)  #: spectrum quantiles tried as λ
THRESHOLDS = (0.4, 0.5, 0.6)  #: ξ̄ targets of Algorithm 1

#: The cases of Fig 2, 3, 5 and 6: (setting, projection dimension); CIFAR-2 and MAESTRO need user data.
PAPER_CASES = (
    ("mnist_lr", None),
    ("mnist_lr", 2048),
    ("mnist_mlp", 512),
    ("mnist_mlp", 2048),
    ("cifar2_resnet9", 2048),
    ("maestro_mt", 2048),
)


def default_grid(setting: Setting, attributor: str, n_points: int = 33) -> list[float]:
    """The candidate λ of a case: ``n_points`` log-spaced values over 8 decades (33: four per decade).

    IFFIM: 1e-6 .. 1e2 (mean-loss scale). TRAK: the same span times ``n / #parameters``, the factor
    between the two scales (see :func:`dahp.selection.algorithm.recipe_regularization`).
    """
    if not (isinstance(n_points, int) and n_points >= 2):
        raise InvalidParameterError("n_points", n_points, "an integer >= 2")
    grid = np.logspace(-6, 2, n_points)
    if attributor == "trak":
        grid = grid * setting.data().n_train / setting.n_params()
    return [float(v) for v in grid]


def selection_params(attributor: str, proj_dim: int | None, ensemble_size: int | None = None):
    """The attributor's default hyperparameters with the projection given (and TRAK's ensemble size)."""
    values = {"proj_dim": proj_dim}
    if attributor == "trak" and ensemble_size is not None:
        values["ensemble_size"] = ensemble_size
    return attr.make_params(attributor, **values)


def _check_attributor(attributor: str) -> None:
    if attributor not in PUBLISHED_DEFAULTS:
        raise InvalidParameterError("attributor", attributor, list(PUBLISHED_DEFAULTS))


def run_case(
    setting: Setting,
    attributor: str,
    regularizations: Sequence[float],
    proj_dim: int | None = None,
    ensemble_size: int | None = None,
    ground_truth_config: GroundTruthConfig | None = None,
    cache: Cache | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> SelectionCase:
    """Compute one case: ξ̄ on the validation queries over ``regularizations``, every rule's pick, and the
    per-query test LDS at every candidate and every pick."""
    _check_attributor(attributor)
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    truth_config = ground_truth_config or GroundTruthConfig()
    params = selection_params(attributor, proj_dim, ensemble_size)
    grid = [float(v) for v in regularizations]

    # the attributor's own work (full-data model, training features, factorization, test features) comes
    # first, so the two timings below are what each way of choosing λ adds on top of running the attributor
    test = attr.scorer(setting, attributor, params, "test", cache, progress, device=device)

    started = time.perf_counter()
    validation = attr.scorer(setting, attributor, params, "val", cache, progress, device=device)
    curve = xi_bar_curve(validation.members, grid)
    picks = {f"xi{t}": select_on_grid(curve, grid, t).regularization for t in THRESHOLDS}
    picks["xi_continuous"] = select_continuous(validation.members, 0.5).regularization
    xi_seconds = time.perf_counter() - started
    picks["default"] = PUBLISHED_DEFAULTS[attributor]
    picks["recipe"] = recipe_regularization(setting, attributor)
    picks["mean_eig"] = mean_eigenvalue_rule(validation.members)
    picks.update({f"q{q}": spectrum_quantile(validation.members, q) for q in QUANTILES})

    def per_query(lam: float) -> np.ndarray:
        return lds(test.scores(lam), truth.targets("test"), truth.subsets, device=device).per_query

    started = time.perf_counter()
    truth = ground_truth(setting, truth_config, cache, progress, device=device)
    lds_grid = np.stack([per_query(lam) for lam in grid])
    # retraining is timed when it runs (a cached ground truth keeps its recorded training time)
    grid_search_seconds = truth.train_seconds + time.perf_counter() - started - truth.seconds
    pick_lds = {rule: lds_grid[grid.index(lam)] if lam in grid else per_query(lam) for rule, lam in picks.items()}
    pick_xi = {
        rule: float(curve[grid.index(lam)]) if lam in grid else mean_xi(validation.members, lam)
        for rule, lam in picks.items()
    }
    return SelectionCase(
        setting.name,
        attributor,
        proj_dim,
        params.ensemble_size if attributor == "trak" else None,
        truth_config.alpha,
        grid=grid,
        xi_bar=np.asarray(curve, dtype=float),
        lds_grid=lds_grid,
        picks=picks,
        pick_xi=pick_xi,
        pick_lds=pick_lds,
        xi_seconds=xi_seconds,
        grid_search_seconds=grid_search_seconds,
        xi_trainings=len(validation.members),
        grid_search_trainings=truth.n_models,
    )


def _to_payload(case: SelectionCase) -> dict:
    """The cache's plain-container form of a computed case."""
    return {
        "grid": case.grid,
        "xi_bar": torch.from_numpy(case.xi_bar),
        "lds_grid": torch.from_numpy(case.lds_grid),
        "picks": case.picks,
        "pick_xi": case.pick_xi,
        "pick_lds": {k: torch.from_numpy(np.asarray(v)) for k, v in case.pick_lds.items()},
        "xi_seconds": case.xi_seconds,
        "grid_search_seconds": case.grid_search_seconds,
        "xi_trainings": case.xi_trainings,
        "grid_search_trainings": case.grid_search_trainings,
    }


def _from_payload(key: dict, payload: dict) -> SelectionCase:
    return SelectionCase(
        **key,
        grid=list(payload["grid"]),
        xi_bar=payload["xi_bar"].numpy(),
        lds_grid=payload["lds_grid"].numpy(),
        picks=dict(payload["picks"]),
        pick_xi=dict(payload["pick_xi"]),
        pick_lds={k: v.numpy() for k, v in payload["pick_lds"].items()},
        xi_seconds=payload["xi_seconds"],
        grid_search_seconds=payload["grid_search_seconds"],
        xi_trainings=payload["xi_trainings"],
        grid_search_trainings=payload["grid_search_trainings"],
    )


def selection_study(
    name: str,
    cases: Sequence[tuple[str, int | None]],
    attributor: str,
    n_points: int,
    ensemble_size: int | None = None,
    alphas: Sequence[float] = (0.5,),
    n_models: int = 50,
    seed: int = 0,
    cache: Cache | None = None,
    progress: bool = False,
    profile: str | None = None,
    device: str | torch.device | None = None,
) -> SelectionStudy:
    """Every ``(setting, proj_dim)`` case under every α, as one :class:`SelectionStudy` called ``name``.

    A case whose data is not supplied is kept with its ``status`` (the first line of the message
    saying what to put where) instead of stopping the others. Computed cases are cached by
    everything that determines them, so the pages that share a case compute it once (its wall
    times are those of the first computation).
    """
    _check_attributor(attributor)
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    configs = [GroundTruthConfig(alpha=alpha, n_models=n_models, seed=seed) for alpha in alphas]  # checked first
    settings = [get_setting(setting) for setting, _ in cases]  # unknown names fail before any compute
    members = ensemble_size if attributor == "trak" else None
    if attributor == "trak" and members is None:
        members = attr.make_params("trak").ensemble_size
    built = []
    for config in configs:
        for setting, (_, proj_dim) in zip(settings, cases):
            key = {
                "setting": setting.name,
                "attributor": attributor,
                "proj_dim": proj_dim,
                "ensemble_size": members,
                "alpha": config.alpha,
            }
            reason = setting.data_not_supplied()
            if reason:
                built.append(SelectionCase(**key, status=reason))
                continue
            grid = default_grid(setting, attributor, n_points)
            spec = {**setting.spec(), **key, "grid": grid, "ground_truth": config.as_dict()}

            def compute(setting=setting, grid=grid, proj_dim=proj_dim, config=config) -> dict:
                return _to_payload(
                    run_case(setting, attributor, grid, proj_dim, members, config, cache, progress, device)
                )

            built.append(_from_payload(key, cache.get_or_compute("selection_case", spec, compute)))
    config = {
        "attributor": attributor,
        "n_points": n_points,
        "ensemble_size": members,
        "alphas": list(alphas),
        "n_models": n_models,
        "seed": seed,
        "thresholds": list(THRESHOLDS),
        "quantiles": list(QUANTILES),
        "published_defaults": PUBLISHED_DEFAULTS,
    }
    return SelectionStudy(name, built, config, profile)


def case_scores(
    setting: Setting,
    attributor: str,
    proj_dim: int | None,
    rules: Sequence[str] = ("default", "xi0.5"),
    n_points: int = 33,
    ensemble_size: int | None = None,
    cache: Cache | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, tuple[float, torch.Tensor]]:
    """Test scores of ``attributor`` at the λ of each rule (``default``: the published default;
    ``xi0.5``: Algorithm 1 on the validation queries): rule -> (λ, scores)."""
    _check_attributor(attributor)
    device = resolve_device(device)
    params = selection_params(attributor, proj_dim, ensemble_size)
    chosen = {}
    for rule in rules:
        if rule == "default":
            chosen[rule] = PUBLISHED_DEFAULTS[attributor]
        elif rule.startswith("xi") and rule[2:].replace(".", "", 1).isdigit():
            validation = attr.scorer(setting, attributor, params, "val", cache, progress, device=device)
            grid = default_grid(setting, attributor, n_points)
            chosen[rule] = select_on_grid(xi_bar_curve(validation.members, grid), grid, float(rule[2:])).regularization
        else:
            raise InvalidParameterError("rule", rule, "'default' or 'xi<threshold>', e.g. 'xi0.5'")
    test = attr.scorer(setting, attributor, params, "test", cache, progress, device=device)
    return {rule: (lam, test.scores(lam)) for rule, lam in chosen.items()}


# --------------------------------------------------------------------------------------------
# The record


#: ξ̄ counts as non-decreasing when no step falls by more than this (rounding of float64 sums).
XI_MONOTONE_TOLERANCE = 1e-9


#: Columns that identify a selection case.
CASE_COLUMNS = ("setting", "attributor", "proj_dim", "ensemble_size", "alpha")


#: The ξ rule at threshold 0.5 on the grid (Algorithm 1) -- "the selected λ".
SELECTED = "xi0.5"


@dataclasses.dataclass
class SelectionCase:
    """One (setting, attributor, projection, ensemble, α): the ξ rule and every baseline, judged by the LDS.

    ``lds_grid`` is ``(len(grid), n_queries)``: the per-query test LDS at every candidate; each
    pick (rule -> λ) has its own per-query LDS in ``pick_lds``. A case whose data is not supplied
    has ``status`` set to the reason and nothing else.
    """

    setting: str
    attributor: str
    proj_dim: int | None
    ensemble_size: int | None
    alpha: float
    status: str = "ok"
    grid: list[float] = dataclasses.field(default_factory=list)
    xi_bar: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    lds_grid: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    picks: dict[str, float] = dataclasses.field(default_factory=dict)  #: rule -> λ
    pick_xi: dict[str, float] = dataclasses.field(default_factory=dict)  #: rule -> ξ̄ at its λ
    pick_lds: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  #: rule -> per-query LDS
    xi_seconds: float = float("nan")  #: wall time of the ξ selection (validation features, factorization, ξ̄)
    grid_search_seconds: float = float("nan")  #: retraining + test LDS over the grid
    xi_trainings: int = 0  #: models the ξ rule needs trained: the attributor's own full-data model(s)
    grid_search_trainings: int = 0  #: models the grid search retrains (the LDS ground truth)

    @property
    def ok(self) -> bool:
        """True when the case ran."""
        return self.status == "ok"

    @property
    def key(self) -> dict[str, Any]:
        """The columns that identify this case."""
        return {name: getattr(self, name) for name in CASE_COLUMNS}

    @property
    def label(self) -> str:
        """``mnist_mlp, p=512`` / ``mnist_lr, full gradients``."""
        return f"{self.setting}, " + ("full gradients" if self.proj_dim is None else f"p={int(self.proj_dim)}")

    def lds_curve(self) -> list[Estimate]:
        """Mean test LDS at every candidate λ, with standard errors over queries."""
        return [mean_estimate(row) for row in self.lds_grid]

    def best_index(self) -> int:
        """Grid index of the highest mean LDS (the oracle that needs retraining)."""
        return int(np.nanargmax([e.value for e in self.lds_curve()]))

    def per_query(self, rule: str) -> np.ndarray:
        """Per-query LDS of a rule's pick (``"best"`` is the grid's oracle)."""
        if rule == "best":
            return self.lds_grid[self.best_index()]
        return self.pick_lds[rule]

    def regularization(self, rule: str) -> float:
        """The λ a rule picks."""
        return self.grid[self.best_index()] if rule == "best" else self.picks[rule]

    def lds(self, rule: str) -> Estimate:
        """Test LDS at a rule's pick."""
        return mean_estimate(self.per_query(rule))

    def ratio_to_best(self, rule: str = SELECTED) -> Estimate:
        """LDS of a rule's pick over the best LDS on the grid (paired over queries)."""
        return paired_ratio(self.per_query(rule), self.per_query("best"))

    def gain(self, rule: str = SELECTED, over: str = "default") -> Estimate:
        """LDS of a rule's pick minus the LDS of another rule's pick (paired over queries)."""
        return paired_difference(self.per_query(rule), self.per_query(over))

    def peaks(self) -> int:
        """Local maxima of the LDS-vs-λ curve, ends included, ignoring steps that are not established
        (a step counts when the paired difference of neighbours exceeds two standard errors)."""
        signs = []
        for a, b in zip(self.lds_grid[:-1], self.lds_grid[1:]):
            step = paired_difference(b, a)
            if step.exceeds(0):
                signs.append(1)
            elif step.below(0):
                signs.append(-1)
        if not signs:
            return 1
        interior = sum(1 for a, b in itertools.pairwise(signs) if a > 0 and b < 0)
        return interior + int(signs[0] < 0) + int(signs[-1] > 0)

    def rises_from_smallest(self) -> bool:
        """True when the best LDS is established above the LDS at the smallest candidate."""
        return paired_difference(self.per_query("best"), self.lds_grid[0]).exceeds(0)

    def xi_monotone(self) -> bool:
        """True when ξ̄ never falls by more than :data:`XI_MONOTONE_TOLERANCE` along the grid."""
        return bool(np.all(np.diff(self.xi_bar) >= -XI_MONOTONE_TOLERANCE))

    def rank_of(self, rule: str = SELECTED) -> int:
        """1 + the number of candidates with a higher mean LDS than the rule's pick."""
        return int(sum(e.value > self.lds(rule).value for e in self.lds_curve())) + 1


@dataclasses.dataclass
class SelectionStudy:
    """Selection cases of one study: Fig 2 (IFFIM), Fig 3 (TRAK) or the α study of Fig 6."""

    name: str  #: file stem: ``selection_iffim``, ``selection_trak``, ``alpha_iffim``
    cases: list[SelectionCase]
    config: dict = dataclasses.field(default_factory=dict)  #: grid size, ground truth, thresholds...
    profile: str | None = None

    @property
    def ran(self) -> list[SelectionCase]:
        """The cases that ran."""
        return [c for c in self.cases if c.ok]

    @property
    def not_run(self) -> list[SelectionCase]:
        """The cases whose data was not supplied."""
        return [c for c in self.cases if not c.ok]

    def case(self, setting: str, proj_dim: int | None, alpha: float | None = None) -> SelectionCase:
        """The case of a setting and projection (and α when the study has several)."""
        for c in self.cases:
            if c.setting == setting and c.proj_dim == proj_dim and (alpha is None or c.alpha == alpha):
                return c
        raise InvalidParameterError(
            "case", (setting, proj_dim, alpha), [(c.setting, c.proj_dim, c.alpha) for c in self.cases]
        )

    def summary(self) -> pd.DataFrame:
        """One row per case that ran: selected and best λ, their LDS, the ratio and the gain over the default."""
        rows = []
        for c in self.ran:
            ratio, gain = c.ratio_to_best(), c.gain()
            rows.append(
                {
                    "case": c.label,
                    "alpha": c.alpha,
                    "λ selected": c.regularization(SELECTED),
                    "LDS selected": c.lds(SELECTED).text(),
                    "λ best": c.regularization("best"),
                    "LDS best": c.lds("best").text(),
                    "selected / best": ratio.text(2),
                    "gain over default": gain.text(3),
                    "LDS default": c.lds("default").text(),
                }
            )
        return pd.DataFrame(rows)

    def rules_table(self) -> pd.DataFrame:
        """Per case and rule: λ and the ratio of its LDS to the best (paired), for every baseline."""
        rows = []
        for c in self.ran:
            for rule in c.picks:
                rows.append(
                    {
                        "case": c.label,
                        "alpha": c.alpha,
                        "rule": rule,
                        "λ": c.regularization(rule),
                        "LDS": c.lds(rule).value,
                        "of best": c.ratio_to_best(rule).value,
                    }
                )
        return pd.DataFrame(rows)

    def monotone_count(self) -> tuple[int, int]:
        """Fig 5: ξ̄ curves that never fall, out of the cases that ran."""
        return sum(c.xi_monotone() for c in self.ran), len(self.ran)

    def alpha_robustness(self) -> pd.DataFrame:
        """Fig 6: per (setting, projection), how far the best λ moves across α (in grid steps) and the
        rank of the selected λ under each α."""
        rows = []
        groups: dict[tuple, list[SelectionCase]] = {}
        for c in self.ran:
            groups.setdefault((c.setting, c.proj_dim), []).append(c)
        for (_setting, _proj_dim), cases in groups.items():
            steps = [int(np.argmin(np.abs(np.log10(c.grid) - np.log10(c.regularization("best"))))) for c in cases]
            ranks = [c.rank_of() for c in cases]
            rows.append(
                {
                    "case": cases[0].label,
                    "alphas": [c.alpha for c in cases],
                    "best λ moves (grid steps)": max(steps) - min(steps),
                    "ranks of selected": ranks,
                }
            )
        return pd.DataFrame(rows)

    def headline(self) -> dict[str, Any]:
        """Per case: selected / best and the gain over the default (both paired), peaks, ξ̄ monotone."""
        return {
            c.label + (f", α={c.alpha}" if len({x.alpha for x in self.cases}) > 1 else ""): {
                "lambda_selected": c.regularization(SELECTED),
                "lds_selected": c.lds(SELECTED),
                "lambda_best": c.regularization("best"),
                "lds_best": c.lds("best"),
                "ratio_to_best": c.ratio_to_best(),
                "gain_over_default": c.gain(),
                "peaks": c.peaks(),
                "xi_monotone": c.xi_monotone(),
            }
            for c in self.ran
        }

    # -- files ---------------------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        """Write ``<name>_cases.csv``, ``<name>_curves.csv``, ``<name>_picks.csv``,
        ``<name>_per_query.csv`` and ``<name>.json``; returns the picks table's path."""
        cases, curves, picks, per_query = [], [], [], []
        for c in self.cases:
            cases.append(
                {
                    **c.key,
                    "status": c.status,
                    "xi_seconds": c.xi_seconds,
                    "grid_search_seconds": c.grid_search_seconds,
                    "xi_trainings": c.xi_trainings,
                    "grid_search_trainings": c.grid_search_trainings,
                }
            )
            if not c.ok:
                continue
            for i, (lam, xi_value, row) in enumerate(zip(c.grid, c.xi_bar, c.lds_grid)):
                estimate = mean_estimate(row)
                curves.append(
                    {
                        **c.key,
                        "regularization": lam,
                        "xi_bar": xi_value,
                        "lds_mean": estimate.value,
                        "lds_sem": estimate.se,
                    }
                )
                per_query += [{**c.key, "point": f"grid{i}", "query": q, "lds": v} for q, v in enumerate(row)]
            for rule, lam in c.picks.items():
                estimate, ratio = c.lds(rule), c.ratio_to_best(rule)
                picks.append(
                    {
                        **c.key,
                        "rule": rule,
                        "regularization": lam,
                        "xi_bar": c.pick_xi.get(rule),
                        "lds_mean": estimate.value,
                        "lds_sem": estimate.se,
                        "ratio_to_best": ratio.value,
                        "ratio_to_best_se": ratio.se,
                    }
                )
                per_query += [{**c.key, "point": rule, "query": q, "lds": v} for q, v in enumerate(c.pick_lds[rule])]
        frames = {"cases": cases, "curves": curves, "picks": picks, "per_query": per_query}
        for part, rows in frames.items():
            pd.DataFrame(rows, columns=None if rows else list(CASE_COLUMNS)).to_csv(
                folder / f"{self.name}_{part}.csv", index=False
            )
        write_json(
            folder / f"{self.name}.json",
            {"record": "selection", "profile": self.profile, "config": self.config, "headline": self.headline()},
        )
        return folder / f"{self.name}_picks.csv"

    @classmethod
    def load(cls, folder: Path, name: str) -> SelectionStudy | None:
        """The study saved as ``name`` under ``folder``, or None."""
        if not (folder / f"{name}.json").exists():
            return None
        meta = read_json(folder / f"{name}.json")
        tables = {
            part: pd.read_csv(folder / f"{name}_{part}.csv") for part in ("cases", "curves", "picks", "per_query")
        }
        cases = []
        for _, row in tables["cases"].iterrows():
            key = {
                "setting": row.setting,
                "attributor": row.attributor,
                "proj_dim": _int_or_none(row.proj_dim),
                "ensemble_size": _int_or_none(row.ensemble_size),
                "alpha": float(row.alpha),
            }
            case = SelectionCase(
                **key,
                status=row.status,
                xi_seconds=float(row.xi_seconds),
                grid_search_seconds=float(row.grid_search_seconds),
                xi_trainings=int(row.xi_trainings),
                grid_search_trainings=int(row.grid_search_trainings),
            )
            if case.ok:
                _fill_case(case, tables, key)
            cases.append(case)
        return cls(name, cases, meta.get("config", {}), meta.get("profile"))


def _fill_case(case: SelectionCase, tables: dict[str, pd.DataFrame], key: dict[str, Any]) -> None:
    curves = tables["curves"][matches(tables["curves"], key)]
    picks = tables["picks"][matches(tables["picks"], key)]
    per_query = tables["per_query"][matches(tables["per_query"], key)]
    by_point = {
        point: rows.sort_values("query").lds.to_numpy(dtype=float) for point, rows in per_query.groupby("point")
    }
    case.grid = curves.regularization.astype(float).tolist()
    case.xi_bar = curves.xi_bar.to_numpy(dtype=float)
    case.lds_grid = np.stack([by_point[f"grid{i}"] for i in range(len(case.grid))])
    for _, pick in picks.iterrows():
        case.picks[pick.rule] = float(pick.regularization)
        case.pick_xi[pick.rule] = float(pick.xi_bar) if pd.notna(pick.xi_bar) else float("nan")
        case.pick_lds[pick.rule] = by_point[pick.rule]
