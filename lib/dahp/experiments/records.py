"""The results layer: where results live, and one typed record per artifact of the paper.

Every artifact of the book -- a sensitivity grid, a study of λ-selection cases, the removal table,
the theorem check, the defaults table, the reproduction status -- is one record here. A record
knows its files under ``data/results/<profile>/`` (tidy long tables, never JSON inside a cell,
and a JSON file beside them with the configuration, the profile and the record's headline
numbers), and computes its headline numbers in exactly one method. The notebooks display those
methods' results and render their prose from them; the reproduction status
(:mod:`dahp.experiments.status`) loads the same records from disk and calls the same methods, so
a page and the status page cannot disagree.

Headline numbers carry the uncertainty that exists: :class:`Estimate` is a value with its
standard error over test queries (or retraining seeds). Two numbers measured on the same queries
are compared *paired*, query by query (:func:`paired_difference`, :func:`paired_ratio`), which is
far tighter than comparing two means with their own standard errors.

Book: every executed page; the status page explains the verdicts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dahp.config import InvalidParameterError

#: Folders under ``data/results/``: one per run profile, and one for command-line runs.
RESULT_FOLDERS = ("quick", "default", "paper", "cli")

#: A difference counts as established when it exceeds this many standard errors.
SIGNIFICANCE_SE = 2.0

#: ξ̄ counts as non-decreasing when no step falls by more than this (rounding of float64 sums).
XI_MONOTONE_TOLERANCE = 1e-9


def results_dir(profile: str) -> Path:
    """``data/results/<profile>/`` (under ``$DAHP_DATA_DIR`` if set), created if absent.

    Every profile writes to its own folder, and the command line to ``cli/``, so a rerun at other
    sizes never overwrites the tables another profile's pages are judged from.
    """
    from dahp.settings import data_dir

    if profile not in RESULT_FOLDERS:
        raise InvalidParameterError("profile", profile, RESULT_FOLDERS)
    folder = data_dir() / "results" / profile
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --------------------------------------------------------------------------------------------
# Numbers with their uncertainty


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A measured number and its standard error (NaN when it has none)."""

    value: float
    se: float = float("nan")

    def exceeds(self, threshold: float = 0.0) -> bool:
        """True when the value is above ``threshold`` by more than :data:`SIGNIFICANCE_SE` standard errors."""
        se = 0.0 if math.isnan(self.se) else self.se
        return self.value - SIGNIFICANCE_SE * se > threshold

    def below(self, threshold: float = 0.0) -> bool:
        """True when the value is below ``threshold`` by more than :data:`SIGNIFICANCE_SE` standard errors."""
        se = 0.0 if math.isnan(self.se) else self.se
        return self.value + SIGNIFICANCE_SE * se < threshold

    def text(self, digits: int = 3) -> str:
        """``0.123 ± 0.004`` (the ± part left out when there is no standard error)."""
        if math.isnan(self.se):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} ± {self.se:.{digits}f}"

    def as_dict(self) -> dict[str, float]:
        """``{"value": ..., "se": ...}`` for the JSON beside a record."""
        return {"value": float(self.value), "se": float(self.se)}


def mean_estimate(values: Sequence[float]) -> Estimate:
    """Mean and its standard error over the finite entries of ``values``."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return Estimate(float("nan"))
    se = float(finite.std(ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else float("nan")
    return Estimate(float(finite.mean()), se)


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise InvalidParameterError("paired values", (a.shape, b.shape), "two arrays of the same shape")
    both = np.isfinite(a) & np.isfinite(b)
    return a[both], b[both]


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """Mean of ``a - b`` over the queries (or seeds) where both are defined, with its standard error."""
    a, b = _paired(a, b)
    return mean_estimate(a - b)


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> Estimate:
    """``mean(numerator) / mean(denominator)`` over the paired entries, standard error by the delta method
    (with the covariance of the pairs)."""
    a, b = _paired(numerator, denominator)
    n = len(a)
    if n < 2 or b.mean() == 0:
        return Estimate(float(a.mean() / b.mean()) if n and b.mean() else float("nan"))
    ma, mb = a.mean(), b.mean()
    ratio = ma / mb
    cov = np.cov(a, b, ddof=1) / n
    variance = (cov[0, 0] / mb**2) - 2 * ma * cov[0, 1] / mb**3 + ma**2 * cov[1, 1] / mb**4
    return Estimate(float(ratio), float(math.sqrt(max(variance, 0.0))))


# --------------------------------------------------------------------------------------------
# Files


def _plain(value: Any) -> Any:
    """JSON-able form of numbers, estimates, arrays and containers."""
    if isinstance(value, Estimate):
        return value.as_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON (NaN as null)."""
    path.write_text(json.dumps(_plain(dict(payload)), indent=2, default=str) + "\n")


def read_json(path: Path) -> dict:
    """The JSON beside a record."""
    return json.loads(path.read_text())


def matches(frame: pd.DataFrame, combination: Mapping[str, Any]) -> pd.Series:
    """Rows of ``frame`` whose columns equal ``combination`` (None matches a missing value)."""
    mask = pd.Series(True, index=frame.index)
    for name, value in combination.items():
        column = frame[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            mask &= column.isna()
        elif column.dtype.kind == "f" and isinstance(value, (int, float)) and not isinstance(value, bool):
            mask &= np.isclose(column.to_numpy(dtype=float), float(value), rtol=1e-9, atol=0.0)
        else:
            mask &= column.astype(str) == str(value)
    return mask


# --------------------------------------------------------------------------------------------
# Sensitivity grids (Fig 1, Fig 4)


@dataclasses.dataclass
class GridRecord:
    """LDS over a 1-D or 2-D hyperparameter grid of one attributor (:mod:`dahp.experiments.grid`).

    ``table`` has one row per combination (the varied hyperparameters, ``lds_mean``, ``lds_sem``,
    ``n_queries``, ``n_dropped``, seconds); ``per_query`` one row per (combination, query).
    """

    spec: dict  #: the grid's configuration (:meth:`dahp.experiments.grid.GridSpec.as_dict`)
    table: pd.DataFrame
    per_query: pd.DataFrame
    profile: str | None = None

    @property
    def stem(self) -> str:
        """``grid_<setting>_<attributor>_<varied names>``, with ``_dattri`` appended when judged by
        dattri's published ground truth (so it never replaces the retrained grid)."""
        stem = "grid_" + "_".join([self.spec["setting"], self.spec["attributor"], *self.spec["vary"]])
        return stem + "_dattri" if self.spec.get("ground_truth", {}).get("source") == "dattri" else stem

    @property
    def varied(self) -> list[str]:
        """Names of the varied hyperparameters."""
        return list(self.spec["vary"])

    def queries_used(self) -> str:
        """ "all" or the number of evenly spaced test queries."""
        return "all" if self.spec.get("n_queries") is None else str(self.spec["n_queries"])

    def per_query_at(self, **combination: Any) -> np.ndarray:
        """Per-query LDS at one combination, in query order."""
        rows = self.per_query[matches(self.per_query, combination)].sort_values("query")
        if rows.empty:
            raise InvalidParameterError("combination", combination, f"a point of the grid {self.stem}")
        return rows.lds.to_numpy(dtype=float)

    def lds_at(self, **combination: Any) -> Estimate:
        """Mean LDS at one combination, with its standard error over queries."""
        return mean_estimate(self.per_query_at(**combination))

    def ratio(self, numerator: Mapping[str, Any], denominator: Mapping[str, Any]) -> Estimate:
        """LDS at ``numerator`` over LDS at ``denominator`` (paired over queries)."""
        return paired_ratio(self.per_query_at(**numerator), self.per_query_at(**denominator))

    def difference(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> Estimate:
        """LDS at ``a`` minus LDS at ``b`` (paired over queries)."""
        return paired_difference(self.per_query_at(**a), self.per_query_at(**b))

    def best(self, **within: Any) -> dict[str, Any]:
        """The combination with the highest mean LDS (among the rows matching ``within``)."""
        rows = self.table[matches(self.table, within)] if within else self.table
        top = rows.loc[rows.lds_mean.idxmax()]
        return {name: _value(top[name]) for name in self.varied}

    def spread(self) -> tuple[float, float]:
        """Smallest and largest mean LDS over the grid."""
        return float(self.table.lds_mean.min()), float(self.table.lds_mean.max())

    def values(self, name: str) -> list[Any]:
        """The values of one varied hyperparameter, in grid order."""
        return [_value(v) for v in self.spec["vary"][name]]

    # -- headline numbers of the figures that use a grid --------------------------------------

    def regularization_ratio(self, high: float = 1e-2, low: float = 1e-4) -> Estimate:
        """Fig 1a: LDS at λ = ``high`` over LDS at λ = ``low``."""
        return self.ratio({"regularization": high}, {"regularization": low})

    def entanglement(self) -> dict[str, Any]:
        """Fig 1b: per projection dimension the LDS at λ = 0 and at its best λ; and, between the largest
        and the smallest projection, the paired differences at λ = 0 and at each one's best λ."""
        dims = [d for d in self.values("proj_dim")]
        per_dim = {}
        for dim in dims:
            best = self.best(proj_dim=dim)
            per_dim[str(dim)] = {
                "at_zero": self.lds_at(proj_dim=dim, regularization=0.0),
                "best": self.lds_at(**best),
                "best_regularization": best["regularization"],
            }
        small, large = min(dims), max(dims)
        best_small, best_large = self.best(proj_dim=small), self.best(proj_dim=large)
        return {
            "per_dim": per_dim,
            "smallest": small,
            "largest": large,
            "zero_large_minus_small": self.difference(
                {"proj_dim": large, "regularization": 0.0}, {"proj_dim": small, "regularization": 0.0}
            ),
            "best_large_minus_small": self.difference(best_large, best_small),
        }

    def best_against_last(self, name: str = "training_epoch") -> dict[str, Any]:
        """Fig 1e / Fig 4: the best value of ``name`` against its last value (paired difference)."""
        values = sorted(self.values(name))
        best = self.best()[name]
        return {
            "best": best,
            "last": values[-1],
            "lds_best": self.lds_at(**{name: best}),
            "lds_last": self.lds_at(**{name: values[-1]}),
            "best_minus_last": self.difference({name: best}, {name: values[-1]}),
        }

    def headline(self) -> dict[str, Any]:
        """What the grid's page reports: the spread, the best combination and its LDS; and, by the grid's
        shape, the λ ratio of Fig 1a, the entanglement of Fig 1b or the best epoch of Fig 1e / Fig 4."""
        low, high = self.spread()
        best = self.best()
        head: dict[str, Any] = {"min_lds": low, "max_lds": high, "best": best, "lds_best": self.lds_at(**best)}
        if self.varied == ["regularization"] and {1e-2, 1e-4} <= {float(v) for v in self.values("regularization")}:
            head["ratio_high_low"] = self.regularization_ratio()
            head["difference_high_low"] = self.difference({"regularization": 1e-2}, {"regularization": 1e-4})
        if set(self.varied) == {"proj_dim", "regularization"} and 0.0 in self.values("regularization"):
            head["entanglement"] = self.entanglement()
        if self.varied == ["training_epoch"]:
            head["best_against_last"] = self.best_against_last()
        return head

    # -- files ---------------------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        """Write ``<stem>.csv``, ``<stem>_per_query.csv`` and ``<stem>.json``; returns the CSV path."""
        path = folder / f"{self.stem}.csv"
        self.table.to_csv(path, index=False)
        self.per_query.to_csv(folder / f"{self.stem}_per_query.csv", index=False)
        write_json(
            folder / f"{self.stem}.json",
            {"record": "grid", "profile": self.profile, "spec": self.spec, "headline": self.headline()},
        )
        return path

    @classmethod
    def load(cls, folder: Path, stem: str) -> GridRecord | None:
        """The record saved as ``<stem>`` under ``folder``, or None."""
        path = folder / f"{stem}.json"
        if not path.exists():
            return None
        meta = read_json(path)
        return cls(
            meta["spec"],
            pd.read_csv(folder / f"{stem}.csv"),
            pd.read_csv(folder / f"{stem}_per_query.csv"),
            meta.get("profile"),
        )

    @classmethod
    def load_all(cls, folder: Path, pattern: str = "grid_*.json") -> list[GridRecord]:
        """Every grid saved under ``folder`` (matching ``pattern``)."""
        return [r for r in (cls.load(folder, p.stem) for p in sorted(folder.glob(pattern))) if r is not None]


def _value(value: Any) -> Any:
    """A table cell as a plain Python value (NaN -> None, whole floats of integer axes stay floats)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------------------------
# λ selection (Fig 2, 3, 5, 6)

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


def _int_or_none(value: Any) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


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


# --------------------------------------------------------------------------------------------
# Data selection by removal (the poster's table)


@dataclasses.dataclass
class RemovalRecord:
    """Test accuracy after removing the top-attributed training points (:mod:`dahp.experiments.removal`).

    ``accuracies``: one row per (setting, method, removal rate, seed) with the accuracy in %;
    ``Full`` has rate 0. ``lambdas``: the λ each method used.
    """

    accuracies: pd.DataFrame
    lambdas: pd.DataFrame
    config: dict = dataclasses.field(default_factory=dict)
    profile: str | None = None
    stem: str = "removal_table"

    @property
    def settings(self) -> list[str]:
        """The settings that ran."""
        return list(dict.fromkeys(self.accuracies.setting))

    def rates(self, setting: str) -> list[float]:
        """The removal rates of a setting (Full's 0 excluded)."""
        part = self.accuracies[(self.accuracies.setting == setting) & (self.accuracies.removal_rate > 0)]
        return sorted(part.removal_rate.unique().tolist())

    def seeds_of(self, setting: str, method: str, rate: float) -> np.ndarray:
        """Accuracies (%) of one cell, in seed order."""
        part = self.accuracies[(self.accuracies.setting == setting) & (self.accuracies.method == method)]
        if method != "Full":
            part = part[np.isclose(part.removal_rate, rate)]
        return part.sort_values("seed").accuracy.to_numpy(dtype=float)

    def selected_minus_default(self, setting: str, label: str, rate: float) -> Estimate:
        """Accuracy after removal by the selected λ minus by the default λ (paired over seeds; negative:
        the selected λ found points the test set depends on more)."""
        return paired_difference(
            self.seeds_of(setting, f"{label} selected", rate), self.seeds_of(setting, f"{label} default", rate)
        )

    def wide(self, setting: str) -> pd.DataFrame:
        """The poster's layout: methods down, rates across, ``mean ± std`` (and the poster's number)."""
        from dahp.experiments.removal import POSTER_TABLE, REMOVAL_RATES

        methods = list(dict.fromkeys(self.accuracies[self.accuracies.setting == setting].method))
        table = {}
        for rate in self.rates(setting):
            column = {}
            for method in methods:
                values = self.seeds_of(setting, method, rate)
                ours = f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"
                poster = dict(zip(REMOVAL_RATES, POSTER_TABLE.get(method, []))).get(rate)
                column[method] = ours + (f"  ({poster[0]:.2f} ± {poster[1]:.2f})" if poster else "")
            table[f"{round(100 * rate)} %"] = column
        return pd.DataFrame(table).loc[methods]

    def headline(self) -> dict[str, Any]:
        """Per setting, attributor and rate: selected minus default accuracy (paired over seeds)."""
        return {
            f"{setting} {label} {round(100 * rate)}%": self.selected_minus_default(setting, label, rate)
            for setting in self.settings
            for label in ("IFFIM", "TRAK")
            for rate in self.rates(setting)
        }

    def save(self, folder: Path) -> Path:
        """Write ``removal_table.csv`` (long), ``removal_lambdas.csv`` and ``removal_table.json``."""
        path = folder / f"{self.stem}.csv"
        self.accuracies.to_csv(path, index=False)
        self.lambdas.reindex(columns=["setting", "method", "regularization"]).to_csv(
            folder / "removal_lambdas.csv", index=False
        )
        write_json(
            folder / f"{self.stem}.json",
            {"record": "removal", "profile": self.profile, "config": self.config, "headline": self.headline()},
        )
        return path

    @classmethod
    def load(cls, folder: Path, stem: str = "removal_table") -> RemovalRecord | None:
        """The removal record under ``folder``, or None."""
        if not (folder / f"{stem}.json").exists():
            return None
        meta = read_json(folder / f"{stem}.json")
        return cls(
            pd.read_csv(folder / f"{stem}.csv"),
            pd.read_csv(folder / "removal_lambdas.csv"),
            meta.get("config", {}),
            meta.get("profile"),
            stem,
        )


# --------------------------------------------------------------------------------------------
# Learned parameter-group weights (issue 12)

#: Columns of ``learned_weights.csv`` (the tidy table the issue asks for).
LEARNED_COLUMNS = ("setting", "attributor", "regularization", "weighting", "lds", "lds_se")


def _lam(value: Any) -> float | None:
    """A λ cell: None for an attributor without λ (Grad-Dot), else a float."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


@dataclasses.dataclass
class LearnedWeightsRecord:
    """LDS on the test queries with uniform and learned group weights, over λ (:mod:`dahp.experiments.learned`).

    ``per_query``: one row per (setting, attributor, regularization, weighting, query) with ``lds``;
    ``groups``: the learned weight of every group at every λ (mean 1: uniform is 1); ``picks``: the ξ
    rule's λ per (setting, attributor, weighting); ``timing``: per case, the attributor's own seconds,
    the seconds to form the validation contributions and to fit the weights. ``regularization`` is
    empty (NaN) for Grad-Dot.
    """

    per_query: pd.DataFrame
    groups: pd.DataFrame
    picks: pd.DataFrame
    timing: pd.DataFrame
    config: dict = dataclasses.field(default_factory=dict)
    profile: str | None = None
    stem: str = "learned_weights"

    @classmethod
    def from_per_query(
        cls, frames: Mapping[str, pd.DataFrame], config: dict, profile: str | None
    ) -> LearnedWeightsRecord:
        """The record from the study's tables (``per_query``, ``groups``, ``picks``, ``timing``)."""
        picks = frames["picks"]
        if picks.empty:
            picks = pd.DataFrame(columns=["setting", "attributor", "weighting", "regularization", "xi_bar"])
        return cls(frames["per_query"], frames["groups"], picks, frames["timing"], config, profile)

    @property
    def cases(self) -> list[tuple[str, str]]:
        """(setting, attributor) in the order they ran."""
        return list(dict.fromkeys(zip(self.per_query.setting, self.per_query.attributor)))

    @staticmethod
    def label(setting: str, attributor: str) -> str:
        """``"mnist_mlp trak"``: the headline key of a case."""
        return f"{setting} {attributor}"

    def grid(self, setting: str, attributor: str) -> list[float | None]:
        """The λ of a case, in order (``[None]`` for Grad-Dot)."""
        rows = self.per_query[(self.per_query.setting == setting) & (self.per_query.attributor == attributor)]
        values = [_lam(v) for v in rows.regularization]
        return sorted(set(values), key=lambda v: -1.0 if v is None else v)

    def per_query_at(self, setting: str, attributor: str, regularization: float | None, weighting: str) -> np.ndarray:
        """Per-query test LDS of one point, in query order."""
        combination = {"setting": setting, "attributor": attributor, "regularization": regularization}
        rows = self.per_query[matches(self.per_query, {**combination, "weighting": weighting})]
        if rows.empty:
            raise InvalidParameterError(
                "point", (setting, attributor, regularization, weighting), "a point of the study"
            )
        return rows.sort_values("query").lds.to_numpy(dtype=float)

    def lds(self, setting: str, attributor: str, regularization: float | None, weighting: str) -> Estimate:
        """Mean test LDS of one point, with its standard error over queries."""
        return mean_estimate(self.per_query_at(setting, attributor, regularization, weighting))

    def best(self, setting: str, attributor: str, weighting: str) -> float | None:
        """The λ with the highest mean test LDS for one weighting (None for Grad-Dot)."""
        grid = self.grid(setting, attributor)
        means = [self.lds(setting, attributor, lam, weighting).value for lam in grid]
        return grid[int(np.nanargmax(means))]

    def difference(self, setting: str, attributor: str, learned_at: float | None, uniform_at: float | None) -> Estimate:
        """LDS with learned weights at ``learned_at`` minus with uniform weights at ``uniform_at`` (paired over queries)."""
        return paired_difference(
            self.per_query_at(setting, attributor, learned_at, "learned"),
            self.per_query_at(setting, attributor, uniform_at, "uniform"),
        )

    def pick(self, setting: str, attributor: str, weighting: str) -> float | None:
        """The ξ rule's λ for one weighting (None when the attributor has no λ)."""
        rows = self.picks[(self.picks.setting == setting) & (self.picks.attributor == attributor)]
        rows = rows[rows.weighting == weighting]
        return None if rows.empty else float(rows.regularization.iloc[0])

    def table(self) -> pd.DataFrame:
        """``learned_weights.csv``: one row per (setting, attributor, λ, weighting) with the mean LDS and its SE."""
        rows = []
        for setting, attributor in self.cases:
            for lam in self.grid(setting, attributor):
                for weighting in ("uniform", "learned"):
                    estimate = self.lds(setting, attributor, lam, weighting)
                    rows.append((setting, attributor, lam, weighting, estimate.value, estimate.se))
        return pd.DataFrame(rows, columns=list(LEARNED_COLUMNS))

    def weights_at(self, setting: str, attributor: str, regularization: float | None) -> pd.Series:
        """Group -> learned weight at one λ."""
        combination = {"setting": setting, "attributor": attributor, "regularization": regularization}
        rows = self.groups[matches(self.groups, combination)]
        return pd.Series(rows.weight.to_numpy(dtype=float), index=rows.group.astype(str).tolist(), name="weight")

    def seconds(self, setting: str, attributor: str) -> dict[str, float]:
        """The attributor's own seconds, and those of forming the validation contributions and of the fits."""
        row = self.timing[(self.timing.setting == setting) & (self.timing.attributor == attributor)].iloc[0]
        return {
            "attributor": float(row.attributor_seconds),
            "contributions": float(row.contributions_seconds),
            "fit": float(row.fit_seconds),
        }

    def case_headline(self, setting: str, attributor: str) -> dict[str, Any]:
        """One case: each weighting at its own best λ on the grid, their paired difference, the same at
        the uniform weighting's best λ, the ξ picks and the LDS there, and the seconds."""
        best_u, best_l = self.best(setting, attributor, "uniform"), self.best(setting, attributor, "learned")
        head: dict[str, Any] = {
            "lambda_uniform": best_u,
            "lds_uniform": self.lds(setting, attributor, best_u, "uniform"),
            "lambda_learned": best_l,
            "lds_learned": self.lds(setting, attributor, best_l, "learned"),
            "learned_minus_uniform": self.difference(setting, attributor, best_l, best_u),
            "learned_minus_uniform_same_lambda": self.difference(setting, attributor, best_u, best_u),
            "seconds": self.seconds(setting, attributor),
        }
        xi_u, xi_l = self.pick(setting, attributor, "uniform"), self.pick(setting, attributor, "learned")
        if xi_u is not None and xi_l is not None:
            head["xi"] = {
                "lambda_uniform": xi_u,
                "lambda_learned": xi_l,
                "lds_uniform": self.lds(setting, attributor, xi_u, "uniform"),
                "lds_learned": self.lds(setting, attributor, xi_l, "learned"),
                "learned_minus_uniform": self.difference(setting, attributor, xi_l, xi_u),
                "learned_minus_best_learned": paired_difference(
                    self.per_query_at(setting, attributor, xi_l, "learned"),
                    self.per_query_at(setting, attributor, best_l, "learned"),
                ),
            }
        return head

    def headline(self) -> dict[str, Any]:
        """Per case (``"<setting> <attributor>"``): :meth:`case_headline`."""
        return {self.label(s, a): self.case_headline(s, a) for s, a in self.cases}

    def save(self, folder: Path) -> Path:
        """Write ``learned_weights.csv`` (long: setting, attributor, λ, weighting, LDS, SE), ``learned_weights_groups.csv``,
        ``learned_weights_picks.csv``, ``learned_weights_timing.csv``, ``learned_weights_per_query.csv`` and
        ``learned_weights.json``; returns the first."""
        path = folder / f"{self.stem}.csv"
        self.table().to_csv(path, index=False)
        for part in ("groups", "picks", "timing", "per_query"):
            getattr(self, part).to_csv(folder / f"{self.stem}_{part}.csv", index=False)
        write_json(
            folder / f"{self.stem}.json",
            {"record": "learned_weights", "profile": self.profile, "config": self.config, "headline": self.headline()},
        )
        return path

    @classmethod
    def load(cls, folder: Path, stem: str = "learned_weights") -> LearnedWeightsRecord | None:
        """The record saved as ``stem`` under ``folder``, or None."""
        if not (folder / f"{stem}.json").exists():
            return None
        meta = read_json(folder / f"{stem}.json")
        parts = {
            part: pd.read_csv(folder / f"{stem}_{part}.csv") for part in ("per_query", "groups", "picks", "timing")
        }
        return cls(**parts, config=meta.get("config", {}), profile=meta.get("profile"), stem=stem)


#: Columns of ``learned_weights_ablations.csv``.
ABLATION_COLUMNS = ("setting", "attributor", "ablation", "value", "lds", "lds_se")
#: The reference rows of every ablation case: the attributor itself and the study's learned weights.
REFERENCE = "weighting"
#: The diagnostic rows: the LDS of one group's contributions C_j alone.
GROUP = "group"


@dataclasses.dataclass
class LearnedAblationRecord:
    """Ablations of the learned weights at one λ per case (:func:`dahp.experiments.learned.learned_weights_ablations`).

    ``per_query``: one row per (setting, attributor, ablation, value, query) with the test ``lds``.
    ``ablation`` is ``weighting`` (values ``uniform``, ``learned``: the reference rows), one of the
    varied settings of the fit (``k``, ``signal``, ``labels``, ``weight_penalty``; every other
    setting as in the study), or ``group`` (value: a group's name; the LDS of its ``C_j`` alone, a
    diagnostic). ``value`` is text (``"10"``, ``"top_and_bottom"``, ``"0.001"``). ``weights``: the
    fitted weight of every group for every fitted variant. ``config["regularization"]``: the λ of
    each case (the uniform weighting's best on the study's grid; None for Grad-Dot);
    ``config["base"]``: the study's configuration, from which one item is varied at a time.
    """

    per_query: pd.DataFrame
    weights: pd.DataFrame
    config: dict = dataclasses.field(default_factory=dict)
    profile: str | None = None
    stem: str = "learned_weights_ablations"

    @property
    def cases(self) -> list[tuple[str, str]]:
        """(setting, attributor) in the order they ran."""
        return list(dict.fromkeys(zip(self.per_query.setting, self.per_query.attributor)))

    def _rows(self, setting: str, attributor: str) -> pd.DataFrame:
        return self.per_query[(self.per_query.setting == setting) & (self.per_query.attributor == attributor)]

    def values(self, setting: str, attributor: str, ablation: str) -> list[str]:
        """The values one ablation took in a case, in the order they ran."""
        rows = self._rows(setting, attributor)
        return list(dict.fromkeys(rows[rows.ablation == ablation].value.astype(str)))

    def per_query_at(self, setting: str, attributor: str, ablation: str, value: str) -> np.ndarray:
        """Per-query test LDS of one row, in query order."""
        rows = self._rows(setting, attributor)
        rows = rows[(rows.ablation == ablation) & (rows.value.astype(str) == str(value))]
        if rows.empty:
            raise InvalidParameterError("row", (setting, attributor, ablation, value), "a row of the ablations")
        return rows.sort_values("query").lds.to_numpy(dtype=float)

    def lds(self, setting: str, attributor: str, ablation: str, value: str) -> Estimate:
        """Mean test LDS of one row, with its standard error over queries."""
        return mean_estimate(self.per_query_at(setting, attributor, ablation, value))

    def difference(self, setting: str, attributor: str, a: tuple[str, str], b: tuple[str, str]) -> Estimate:
        """LDS of row ``a`` minus row ``b`` (each ``(ablation, value)``), paired over the test queries."""
        return paired_difference(self.per_query_at(setting, attributor, *a), self.per_query_at(setting, attributor, *b))

    def weights_of(self, setting: str, attributor: str, ablation: str, value: str) -> pd.Series:
        """Group -> fitted weight of one variant (mean 1)."""
        rows = self.weights[(self.weights.setting == setting) & (self.weights.attributor == attributor)]
        rows = rows[(rows.ablation == ablation) & (rows.value.astype(str) == str(value))]
        return pd.Series(rows.weight.to_numpy(dtype=float), index=rows.group.astype(str).tolist(), name="weight")

    def table(self) -> pd.DataFrame:
        """``learned_weights_ablations.csv``: one row per (setting, attributor, ablation, value) with the mean LDS and SE."""
        rows = []
        for setting, attributor in self.cases:
            for ablation in dict.fromkeys(self._rows(setting, attributor).ablation):
                for value in self.values(setting, attributor, ablation):
                    estimate = self.lds(setting, attributor, ablation, value)
                    rows.append((setting, attributor, ablation, value, estimate.value, estimate.se))
        return pd.DataFrame(rows, columns=list(ABLATION_COLUMNS))

    def case_headline(self, setting: str, attributor: str) -> dict[str, Any]:
        """One case: λ, uniform and learned LDS, each varied item's LDS per value and its paired difference
        to the study's own value, and the per-group diagnostic (each group alone, and which group is best
        alone against which gets the largest learned weight)."""
        base = self.config.get("base", {})
        label = f"{setting} {attributor}"
        learned = (REFERENCE, "learned")
        head: dict[str, Any] = {
            "regularization": self.config.get("regularization", {}).get(label),
            "uniform": self.lds(setting, attributor, REFERENCE, "uniform"),
            "learned": self.lds(setting, attributor, *learned),
            "learned_minus_uniform": self.difference(setting, attributor, learned, (REFERENCE, "uniform")),
        }
        rows = self._rows(setting, attributor)
        for ablation in dict.fromkeys(rows.ablation):
            if ablation in (REFERENCE, GROUP):
                continue
            values = self.values(setting, attributor, ablation)
            head[ablation] = {
                "base": _ablation_text(base.get(ablation)),
                "lds": {v: self.lds(setting, attributor, ablation, v) for v in values},
                "minus_base": {v: self.difference(setting, attributor, (ablation, v), learned) for v in values},
            }
        groups = self.values(setting, attributor, GROUP)
        if groups:
            alone = {g: self.lds(setting, attributor, GROUP, g) for g in groups}
            weights = self.weights_of(setting, attributor, *learned)
            head[GROUP] = {
                "lds": alone,
                "best_alone": max(alone, key=lambda g: alone[g].value),
                "largest_weight": str(weights.idxmax()) if len(weights) else None,
            }
        return head

    def headline(self) -> dict[str, Any]:
        """Per case (``"<setting> <attributor>"``): :meth:`case_headline`."""
        return {f"{s} {a}": self.case_headline(s, a) for s, a in self.cases}

    def save(self, folder: Path) -> Path:
        """Write ``learned_weights_ablations.csv`` (setting, attributor, ablation, value, LDS, SE),
        ``..._per_query.csv``, ``..._weights.csv`` and ``....json``; returns the first."""
        path = folder / f"{self.stem}.csv"
        self.table().to_csv(path, index=False)
        self.per_query.to_csv(folder / f"{self.stem}_per_query.csv", index=False)
        self.weights.to_csv(folder / f"{self.stem}_weights.csv", index=False)
        write_json(
            folder / f"{self.stem}.json",
            {
                "record": "learned_ablations",
                "profile": self.profile,
                "config": self.config,
                "headline": self.headline(),
            },
        )
        return path

    @classmethod
    def load(cls, folder: Path, stem: str = "learned_weights_ablations") -> LearnedAblationRecord | None:
        """The record saved as ``stem`` under ``folder``, or None."""
        if not (folder / f"{stem}.json").exists():
            return None
        meta = read_json(folder / f"{stem}.json")
        text = {"value": str, "group": str}  # "0.001" and "10" stay the text the rows were written with
        per_query = pd.read_csv(folder / f"{stem}_per_query.csv", dtype=text)
        weights = pd.read_csv(folder / f"{stem}_weights.csv", dtype=text)
        return cls(per_query, weights, meta.get("config", {}), meta.get("profile"), stem)


def _ablation_text(value: Any) -> str | None:
    """A configuration value as the ablation rows write it (``10``, ``top``, ``0.001``)."""
    if value is None:
        return None
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------
# Theorem 4.3


@dataclasses.dataclass
class TheoremRecord:
    """ξ < ω ⇒ the LDS rises, on planted problems (exact β) and on real data (β̂ from retraining).

    Tables have one row per (problem or setting, λ, query) with ``xi``, ``omega``, ``premise`` and
    ``lds_rises`` (:mod:`dahp.experiments.theorem`).
    """

    planted: pd.DataFrame
    real: pd.DataFrame | None
    setting: str | None = None
    profile: str | None = None
    stem: str = "theorem_check"

    def planted_summary(self) -> dict[str, int]:
        """Triples, how many meet the premise, and how many of those have a rising LDS."""
        premise = self.planted[self.planted.premise.astype(bool)]
        return {
            "triples": len(self.planted),
            "premise": len(premise),
            "premise_and_rises": int(premise.lds_rises.astype(bool).sum()),
            "rises_without_premise": int(self.planted[~self.planted.premise.astype(bool)].lds_rises.astype(bool).sum()),
        }

    def real_summary(self) -> dict[str, Any] | None:
        """Pairs, how many meet ξ < ω̂, how many of those rise, the largest ω̂ and the smallest ξ."""
        if self.real is None:
            return None
        premise = self.real[self.real.premise.astype(bool)]
        return {
            "pairs": len(self.real),
            "premise": len(premise),
            "premise_and_rises": int(premise.lds_rises.astype(bool).sum()),
            "largest_omega": float(self.real.omega.max()),
            "smallest_xi": float(self.real.xi.min()),
        }

    def headline(self) -> dict[str, Any]:
        """Both summaries."""
        return {"planted": self.planted_summary(), "real": self.real_summary()}

    def save(self, folder: Path) -> Path:
        """Write ``theorem_planted.csv``, ``theorem_real.csv`` and ``theorem_check.json``."""
        self.planted.to_csv(folder / "theorem_planted.csv", index=False)
        if self.real is not None:
            self.real.to_csv(folder / "theorem_real.csv", index=False)
        write_json(
            folder / f"{self.stem}.json",
            {"record": "theorem", "profile": self.profile, "setting": self.setting, "headline": self.headline()},
        )
        return folder / f"{self.stem}.json"

    @classmethod
    def load(cls, folder: Path, stem: str = "theorem_check") -> TheoremRecord | None:
        """The theorem record under ``folder``, or None."""
        if not (folder / f"{stem}.json").exists():
            return None
        meta = read_json(folder / f"{stem}.json")
        real = folder / "theorem_real.csv"
        return cls(
            pd.read_csv(folder / "theorem_planted.csv"),
            pd.read_csv(real) if real.exists() else None,
            meta.get("setting"),
            meta.get("profile"),
            stem,
        )


# --------------------------------------------------------------------------------------------
# Table A.1


@dataclasses.dataclass
class DefaultsRecord:
    """Table A.1 and the training recipes, generated from the code's records."""

    defaults: pd.DataFrame
    recipes: pd.DataFrame
    profiles: pd.DataFrame
    profile: str | None = None

    def save(self, folder: Path) -> Path:
        """Write ``table_a1_defaults.csv``, ``training_recipes.csv`` and ``run_profiles.csv``."""
        self.defaults.to_csv(folder / "table_a1_defaults.csv", index=False)
        self.recipes.to_csv(folder / "training_recipes.csv", index=False)
        self.profiles.to_csv(folder / "run_profiles.csv")
        return folder / "table_a1_defaults.csv"


# --------------------------------------------------------------------------------------------
# When does the selector work? (the robustness suite)

#: LDS / best at or above this counts as a success of a rule on a problem (issue 13's target).
GOOD_FRACTION = 0.95
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


def fraction_summary(values: Sequence[float]) -> dict[str, Any]:
    """Worst, 10th percentile, median of LDS / best, how many reach :data:`GOOD_FRACTION`, and of how many.

    A NaN (no defined LDS at the pick) counts as a failure and as the worst value.
    """
    array = np.asarray(values, dtype=float)
    if not len(array):
        return {"worst": float("nan"), "p10": float("nan"), "median": float("nan"), "count_ge_095": 0, "n": 0}
    filled = np.where(np.isfinite(array), array, -np.inf)
    finite = np.where(np.isfinite(array), array, np.nan)
    return {
        "worst": float(filled.min()) if np.isfinite(filled.min()) else float("nan"),
        "p10": float(np.nanpercentile(finite, 10)) if np.isfinite(finite).any() else float("nan"),
        "median": float(np.nanmedian(finite)) if np.isfinite(finite).any() else float("nan"),
        "count_ge_095": int((filled >= GOOD_FRACTION).sum()),
        "n": len(array),
    }


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

    def summary(self, half: str | None = None) -> dict[str, dict[str, Any]]:
        """Per rule :func:`fraction_summary` over all rows, or over the rows of one held-out half."""
        rows = self.table if half is None else self.table[self.table.half == half]
        return {rule: fraction_summary(rows[rows.rule == rule].lds_over_best) for rule in self.rules}

    def summary_table(self, half: str | None = None) -> pd.DataFrame:
        """:meth:`summary` as a frame, one row per rule, best worst case first."""
        frame = pd.DataFrame.from_dict(self.summary(half), orient="index")
        frame.index.name = "rule"
        return frame.sort_values(["worst", "median"], ascending=False)

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
        return {
            "problems": int(self.table.problem.nunique()),
            "cases": int(self.table.groupby(["problem", "attributor", "proj_dim"], dropna=False).ngroups),
            "all": self.summary(),
            **{f"held_out_{half}": self.summary(half) for half in halves},
        }

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


def stems(records: Iterable[Any]) -> list[str]:
    """File stems of records (for messages)."""
    return [getattr(r, "stem", getattr(r, "name", "?")) for r in records]
