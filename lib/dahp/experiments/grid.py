"""Sensitivity grids: LDS over a 1-D or 2-D hyperparameter grid of one attributor (Fig 1, Fig 4).

The grid reuses the cached ground truth and features. Combinations that differ only in λ share
one scorer, so a λ axis is swept from one factorization (spectral attributors) and never reruns
the attributor; projection dimensions of one grid are projected once, at the largest (see
:func:`dahp.attribution.features.project_nested`). Every combination is validated before anything is computed.

The result is a :class:`dahp.experiments.grid.GridRecord`: a tidy table -- setting, attributor,
one column per hyperparameter varied, LDS mean, its standard error, the queries dropped, seconds --
and the per-query LDS behind it, saved under ``data/results/<profile>/`` with the full
configuration beside it (``.json``). Everything runs on ``device``
(:func:`dahp.core.device.resolve_device`), which is not part of the record's configuration: the numbers
do not depend on it beyond rounding.

With a ground-truth config whose ``source`` is ``"dattri"`` the grid is judged by dattri's published
benchmark instead of our retraining: the attributed models are dattri's full-data models (final
weights only, so no ``training_epoch`` other than None), the scores are on dattri's points (test
queries only), nothing is trained, and the record's configuration names the folder and its
content digest (its file stem ends in ``_dattri``, so it never replaces the retrained grid).

Book: "Fig 1a" to "Fig 1f", "Fig 4".
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dahp.attribution import attributors as attr
from dahp.attribution.lds import lds_of_sums, membership_matrix
from dahp.core.cache import Cache, default_cache
from dahp.core.config import GroundTruthConfig, InvalidParameterError
from dahp.core.device import resolve_device
from dahp.core.progress import tqdm
from dahp.core.results import _value, matches, read_json, write_json
from dahp.core.statistics import (
    FAILS,
    HOLDS,
    NOT_RUN,
    PARTLY,
    Estimate,
    mean_estimate,
    paired_difference,
    paired_ratio,
    share_verdict,
)
from dahp.data.benchmark_folder import BenchmarkGroundTruth, benchmark_models
from dahp.data.settings import Setting, get_setting
from dahp.training.ground_truth import GroundTruth, attributed_setting, ground_truth

#: Other spellings accepted for hyperparameter names (the paper's words -> ours).
ALIASES = {
    "projection_dim": "proj_dim",
    "projection_dimension": "proj_dim",
    "lambda": "regularization",
    "damping": "regularization",
    "epoch": "training_epoch",
    "max_iter": "max_iteration",
    "ensemble": "ensemble_size",
}


def canonical_name(name: str) -> str:
    """The hyperparameter name used in records and tables."""
    name = name.strip().replace("-", "_")
    return ALIASES.get(name, name)


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """One sensitivity grid: which attributor, which hyperparameters vary, everything else fixed."""

    setting: str
    attributor: str
    vary: dict[str, tuple]  #: hyperparameter -> values (1 or 2 entries)
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)  #: hyperparameters set away from the defaults
    ground_truth: GroundTruthConfig = dataclasses.field(default_factory=GroundTruthConfig)
    split: str = "test"
    n_queries: int | None = None  #: evaluate on an evenly spaced subset of the queries (None: all)

    def as_dict(self) -> dict:
        """Plain-dict form, written beside the table."""
        return {
            "setting": self.setting,
            "attributor": self.attributor,
            "vary": {k: list(v) for k, v in self.vary.items()},
            "fixed": self.fixed,
            "ground_truth": self.ground_truth.as_dict(),
            "split": self.split,
            "n_queries": self.n_queries,
        }


def make_grid_spec(
    setting: str,
    attributor: str,
    vary: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, Any] | None = None,
    ground_truth_config: GroundTruthConfig | None = None,
    split: str = "test",
    n_queries: int | None = None,
) -> GridSpec:
    """A checked :class:`GridSpec` (names canonicalised, every combination constructible)."""
    get_setting(setting)
    attr.get_attributor(attributor)
    vary = {canonical_name(k): tuple(v) for k, v in vary.items()}
    fixed = {canonical_name(k): v for k, v in (fixed or {}).items()}
    if not 1 <= len(vary) <= 2:
        raise InvalidParameterError("vary", list(vary), "one or two hyperparameters")
    for name, values in vary.items():
        if not values:
            raise InvalidParameterError(f"values of {name}", values, "at least one value")
        if name in fixed:
            raise InvalidParameterError("fixed", name, "hyperparameters that are not also varied")
    if split not in ("val", "test"):
        raise InvalidParameterError("split", split, ["val", "test"])
    if n_queries is not None and not (isinstance(n_queries, int) and n_queries >= 2):
        raise InvalidParameterError("n_queries", n_queries, "None (all queries) or an integer >= 2")
    config = ground_truth_config or GroundTruthConfig()
    attributed = get_setting(setting)
    if config.source == "dattri":
        if split != "test":
            raise InvalidParameterError(
                "split", split, "'test' with source='dattri' (dattri's benchmark has no validation queries)"
            )
        attributed = attributed_setting(attributed, config)  # dattri's folder, read and checked now
        attributed.data()  # and its data points: what is missing is named before any compute
    spec = GridSpec(setting, attributor, vary, fixed, config, split, n_queries)
    for combination in combinations(spec):
        attr.check_params(attributed, attr.make_params(attributor, **fixed, **combination))
    return spec


def combinations(spec: GridSpec) -> list[dict[str, Any]]:
    """Every combination of the varied values, in grid order."""
    names = list(spec.vary)
    return [dict(zip(names, values)) for values in itertools.product(*spec.vary.values())]


def query_index(n_total: int, n_queries: int | None) -> np.ndarray:
    """Evenly spaced query indices (all of them when ``n_queries`` is None or too large)."""
    if n_queries is None or n_queries >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n_queries).round().astype(int))


def run_grid(
    spec: GridSpec,
    cache: Cache | None = None,
    progress: bool = True,
    profile: str | None = None,
    device: str | torch.device | None = None,
) -> GridRecord:
    """LDS of every combination of ``spec`` (per query and summarised), as a record to save;
    retraining, attribution and LDS run on ``device``."""
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    setting = attributed_setting(spec.setting, spec.ground_truth)
    truth = ground_truth(setting, spec.ground_truth, cache, progress, device=device)
    queries = query_index(truth.targets(spec.split).shape[1], spec.n_queries)
    targets = truth.targets(spec.split)[:, queries]
    selected = None if spec.n_queries is None else torch.as_tensor(queries)

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for combination in combinations(spec):
        rest = tuple((k, v) for k, v in combination.items() if k != "regularization")
        groups.setdefault(rest, []).append(combination)
    _prefetch(setting, spec, cache, progress, device)

    rows, per_query = [], []
    bar = tqdm(total=len(combinations(spec)), desc=f"{spec.attributor} on {spec.setting}", disable=not progress)
    for rest, members in groups.items():
        started = time.perf_counter()
        params = attr.make_params(spec.attributor, **spec.fixed, **dict(rest))
        scorer = attr.scorer(
            setting, spec.attributor, params, spec.split, cache, progress=False, query_index=selected, device=device
        )
        # the LDS needs the subset sums only: a closed form in λ folds the subsets in once
        summed = scorer.summed(membership_matrix(truth.subsets, setting.data().n_train))
        setup_seconds = time.perf_counter() - started
        for combination in members:
            started = time.perf_counter()
            lam = combination.get("regularization", getattr(params, "regularization", None))
            result = lds_of_sums(summed.scores(lam if lam is not None else 0.0), targets)
            rows.append(
                {
                    "setting": spec.setting,
                    "attributor": spec.attributor,
                    **combination,
                    "lds_mean": result.mean,
                    "lds_sem": result.sem,
                    "n_queries": len(queries),
                    "n_dropped": result.n_dropped,
                    "seconds": time.perf_counter() - started,
                    "setup_seconds": setup_seconds,
                }
            )
            per_query += [{**combination, "query": int(q), "lds": float(v)} for q, v in zip(queries, result.per_query)]
            setup_seconds = 0.0
            bar.update()
    bar.close()
    return GridRecord(_record_spec(spec, setting, truth), pd.DataFrame(rows), pd.DataFrame(per_query), profile)


def _record_spec(spec: GridSpec, setting: Setting, truth: GroundTruth | BenchmarkGroundTruth) -> dict:
    """The configuration written beside the table; with dattri's ground truth, the folder it came from,
    its content digest and its own M and α in place of our (unused) retraining fields."""
    record = spec.as_dict()
    models = benchmark_models(setting)
    if models is not None:
        identity = models.identity()
        record["ground_truth"] = {
            "source": "dattri",
            "benchmark": identity["benchmark"],
            "folder": str(models.source),
            "sha256": identity["sha256"],
            "n_models": truth.n_models,
            "alpha": truth.alpha,
        }
    return record


def _prefetch(setting: Setting, spec: GridSpec, cache: Cache, progress: bool, device: torch.device) -> None:
    """Project the features of every projection dimension of the grid in one pass per model."""
    projected = [d for d in spec.vary.get("proj_dim", ()) if d is not None]
    if not projected or spec.attributor not in ("iffim", "trak"):
        return
    others = {k: v for k, v in spec.vary.items() if k not in ("proj_dim", "regularization")}
    for extra in [dict(zip(others, vals)) for vals in itertools.product(*others.values())] or [{}]:
        dims = list(spec.vary["proj_dim"])
        params = attr.make_params(spec.attributor, **spec.fixed, **extra, proj_dim=max(projected))
        attr.prefetch_features(setting, spec.attributor, params, dims, spec.split, cache, progress, device)


# --------------------------------------------------------------------------------------------
# Parsing grid values from the command line

_SPACE = re.compile(r"^(logspace|linspace|range)\((.*)\)$")


def parse_scalar(text: str) -> Any:
    """``None``, booleans, integers, floats, else the string itself."""
    text = text.strip()
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def parse_values(text: str) -> list[Any]:
    """Comma-separated items, each a scalar or ``logspace(lo,hi,n)`` (powers of ten),
    ``linspace(lo,hi,n)`` or ``range(a,b[,step])``; e.g. ``0,logspace(-6,2,17)``."""
    values: list[Any] = []
    for item in _split_top_level(text.strip()):
        values.extend(_parse_item(item.strip()))
    return values


def _parse_item(text: str) -> list[Any]:
    match = _SPACE.match(text)
    if not match:
        return [parse_scalar(text)]
    kind, inner = match.groups()
    args = [parse_scalar(a) for a in inner.split(",")]
    try:
        if kind == "logspace":
            lo, hi, n = args
            return [float(v) for v in np.logspace(lo, hi, int(n))]
        if kind == "linspace":
            lo, hi, n = args
            return [float(v) for v in np.linspace(lo, hi, int(n))]
        return list(range(*[int(a) for a in args]))
    except (TypeError, ValueError) as error:
        raise InvalidParameterError(
            "grid values", text, "a,b,c or logspace(lo,hi,n), linspace(lo,hi,n), range(a,b[,step])"
        ) from error


def parse_assignment(text: str) -> tuple[str, str]:
    """``name=values`` -> (name, values)."""
    if "=" not in text:
        raise InvalidParameterError("--vary/--fixed", text, "name=values, e.g. regularization=logspace(-4,2,13)")
    name, values = text.split("=", 1)
    return canonical_name(name), values


# --------------------------------------------------------------------------------------------
# The record


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


# --------------------------------------------------------------------------------------------
# The claims judged from grids: a figure's page and the reproduction status call the same function

#: C1 (Fig 1a): the rule behind :func:`regularization_verdict`.
REGULARIZATION_RULE = (
    "LDS(λ=1e-2) above LDS(λ=1e-4) by > 2 SE and ratio >= 2: holds; above but ratio < 2: in part; else does not hold"
)
#: C1: the ratio LDS(λ=1e-2) / LDS(λ=1e-4) at or above which the rise holds in full.
REGULARIZATION_RATIO_HOLDS = 2.0


def regularization_verdict(record: GridRecord) -> str:
    """C1 on Fig 1a's grid: does raising λ from 1e-4 to 1e-2 raise the LDS, and by a large factor?"""
    head = record.headline()
    if "ratio_high_low" not in head:
        raise InvalidParameterError("grid", record.stem, "a λ grid containing 1e-4 and 1e-2 (Fig 1a)")
    if not head["difference_high_low"].exceeds(0):
        return FAILS
    return HOLDS if head["ratio_high_low"].value >= REGULARIZATION_RATIO_HOLDS else PARTLY


#: C3 (Fig 1b): the rule behind :func:`entanglement_verdict`.
ENTANGLEMENT_RULE = (
    "largest vs smallest projection: worse at λ=0 by > 2 SE, and better at each one's best λ by > 2 SE: "
    "holds; one of the two: in part"
)


def entanglement_verdict(record: GridRecord) -> str:
    """C3 on a projection × λ grid: the largest projection is worse than the smallest at λ = 0 and better
    once each has its best λ (the order flips with λ)."""
    head = record.headline()
    if "entanglement" not in head:
        raise InvalidParameterError("grid", record.stem, "a proj_dim × regularization grid containing λ = 0")
    ent = head["entanglement"]
    return share_verdict([ent["zero_large_minus_small"].below(0), ent["best_large_minus_small"].exceeds(0)])


#: C4 (Fig 1e, Fig 4): the rule behind :func:`epoch_verdict`.
EPOCH_RULE = "some epoch sweep's best epoch beats its last epoch by > 2 SE: holds; none: does not hold"


def epoch_verdict(records: Sequence[GridRecord]) -> str:
    """C4 on training-epoch sweeps: in some sweep an earlier epoch beats the last one."""
    if not records:
        return NOT_RUN
    return HOLDS if any(r.headline()["best_against_last"]["best_minus_last"].exceeds(0) for r in records) else FAILS


#: C2 (Fig 1e): the two settings whose best epochs are compared.
BEST_EPOCH_SETTINGS = ("mnist_mlp", "cifar2_resnet9")
#: C2: the rule behind :func:`best_epoch_verdict`.
BEST_EPOCH_RULE = "needs both settings: the best epoch of mnist_mlp differs from that of cifar2_resnet9"


def best_epoch_verdict(records: Mapping[str, GridRecord]) -> str:
    """C2 on TRAK's epoch sweeps by setting: the best epoch of one setting is not the best of the other
    (not run unless both of :data:`BEST_EPOCH_SETTINGS` are among ``records``)."""
    if not set(BEST_EPOCH_SETTINGS) <= set(records):
        return NOT_RUN
    bests = {records[name].headline()["best_against_last"]["best"] for name in BEST_EPOCH_SETTINGS}
    return HOLDS if len(bests) > 1 else FAILS
