"""Learned parameter-group weights against uniform ones, over λ, judged by the test LDS (issue 12).

For each (setting, attributor) the per-group contributions (:mod:`dahp.methods.learned_weights`) are formed
once on the validation queries and once on the test queries. At every λ of the grid (IFFIM, TRAK;
Grad-Dot has none) the weights are fitted on the validation contributions with a configuration fixed
before any LDS is computed (:class:`dahp.methods.learned_weights.GroupWeightConfig`), and both weightings are
then judged on the same test queries: uniform weights (the attributor's own scores) and the learned
ones, per query, so the two compare paired (:func:`dahp.core.statistics.paired_difference`).

The ξ rule (:mod:`dahp.selection.algorithm`) is run for both weightings on the validation queries: with uniform
weights it is Algorithm 1 on the attributor's spectral factors; with learned weights the same rule
on the same factors whose query side is ``Σ_j w_j R_j`` (the weights learned at each λ), i.e. ξ of the
weighted attributor. Neither sees a test query.

The checks (issue 23, :func:`learned_weights_checks`) vary one choice at a time at one λ per case, from the
same contributions: per-layer groups, a short fit (and the LDS along the study's fit), TRAK with each group
projected on its own, k, the signal, the labels, λ_w. :func:`c13_verdict` is the one verdict the page and the
status page show. Timing: the seconds to form every contribution of a case (one pass over the training
gradients) and to fit the weights at every λ.

Book: "Learned parameter-group weights".
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dahp.attribution import attributors as attr
from dahp.attribution.lds import lds
from dahp.core.cache import Cache, default_cache
from dahp.core.config import GroundTruthConfig, InvalidParameterError
from dahp.core.device import one_cpu_thread, resolve_device
from dahp.core.results import matches, read_json, write_json
from dahp.core.statistics import NOT_RUN, Estimate, mean_estimate, paired_difference, share_verdict
from dahp.data.settings import Setting, get_setting
from dahp.experiments.cases import default_grid
from dahp.experiments.grid import query_index
from dahp.experiments.profiles import get_profile
from dahp.methods.learned_weights import (
    QuerySet,
    parameter_groups,
    regroup,
    setting_contributions_many,
    weighted_members,
)
from dahp.methods.weight_fit import (
    GROUPINGS,
    LABELS,
    PROJECTIONS,
    SIGNALS,
    GroupWeightConfig,
    fit_weights,
    weighted_scores,
)
from dahp.selection import rules
from dahp.selection.algorithm import select_on_grid, xi_bar_curve
from dahp.training.ground_truth import ground_truth

#: The study's settings and attributors (issue 12: both embedded settings; Grad-Dot, TRAK, IFFIM).
STUDY_SETTINGS = ("mnist_lr", "mnist_mlp")
STUDY_ATTRIBUTORS = ("grad_dot", "trak", "iffim")
#: The weightings compared.
WEIGHTINGS = ("uniform", "learned")
#: ξ̄ target of the pick: the paper's rule's (``xi_grid_0.5`` of :data:`dahp.selection.rules.RULES`), applied
#: to each weighting's own ξ̄ curve (the learned weights change with λ, so the curve is built point by point).
XI_THRESHOLD = rules.RULES[rules.PAPER_RULE].threshold
#: Attributors C13 is judged on: Grad-Dot is TracIn at the final checkpoint only, and TRAK.
C13_ATTRIBUTORS = ("grad_dot", "trak")
#: C13: the rule behind :meth:`LearnedWeightsRecord.verdict`.
C13_RULE = (
    "per setting, for Grad-Dot (TracIn at the last checkpoint) and TRAK: LDS with learned weights at its best λ "
    "above LDS with uniform weights at theirs by > 2 SE (paired over test queries); all: holds, some: in part"
)
#: The short fit of the checks: about ten full-batch steps at a small rate, which keep every weight within about
#: 10 % of uniform (Adam moves each logit by at most about lr per step).
SHORT_FIT = {"steps": 10, "lr": 0.005}
#: Adam steps of the study's fit after which the test LDS is also recorded (the fitting trace).
TRACE_STEPS = (0, 10, 30, 100, 300)


def study_grid(setting: Setting, attributor: str, n_lambdas: int) -> list[float | None]:
    """λ of one case: none for Grad-Dot; for IFFIM and TRAK ``n_lambdas`` points of the package's
    default grid on the attributor's own scale (:func:`dahp.experiments.cases.default_grid`)."""
    if attributor == "grad_dot":
        return [None]
    return default_grid(setting, attributor, n_lambdas)


def _per_query(
    scores: torch.Tensor, truth, columns: np.ndarray, device: torch.device, split: str = "test"
) -> np.ndarray:
    targets = truth.targets(split)[:, columns]
    return lds(scores, targets, truth.subsets, device=device).per_query


@dataclasses.dataclass(frozen=True)
class StudySizes:
    """How big one run of the study and its checks is (from a profile's ``learned_*`` fields)."""

    n_lambdas: int = 5
    trak_ensemble: int = 2
    n_models: int = 50
    n_queries: int | None = None  #: test queries judged (None: all)
    fit_queries: int | None = None  #: validation queries the weights are fitted on (None: all)
    select_queries: int | None = None  #: other validation queries the checks are also judged on (0: none)
    iffim_proj_dim: int | None = (
        None  #: IFFIM's projection where a setting has at least ``iffim_project_from`` parameters
    )
    iffim_project_from: int = 0
    ks: tuple[int, ...] = (1, 5, 10, 20, 50, 100)
    penalties: tuple[float, ...] = (0.0, 1e-3, 1e-2)
    seed: int = 0

    @classmethod
    def of_profile(cls, name: str, seed: int = 0) -> StudySizes:
        """The sizes of profile ``name``."""
        p = get_profile(name)
        return cls(
            p.learned_lambdas,
            p.learned_trak_ensemble,
            p.n_models,
            p.learned_test_queries,
            p.learned_fit_queries,
            p.learned_select_queries,
            p.learned_iffim_proj_dim,
            p.learned_iffim_project_from,
            p.learned_ablation_ks,
            p.learned_ablation_penalties,
            seed,
        )


def _fit_and_select_columns(
    n_val: int, fit_queries: int | None, select_queries: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Validation queries the weights are fitted on (evenly spaced) and, among the others, those the checks
    are judged on (evenly spaced; none when there are no others or ``select_queries`` is 0)."""
    fit = query_index(n_val, fit_queries)
    rest = np.setdiff1d(np.arange(n_val), fit)
    if not len(rest) or select_queries == 0:
        return fit, rest[:0]
    return fit, rest[query_index(len(rest), select_queries)]


def _fit(contributions: torch.Tensor, config: GroupWeightConfig, record_at: Sequence[int] = ()):
    # its tensors are small (groups × n_train × queries): on a busy machine intra-op threads made a
    # 300-step fit 10-80x slower (measured on 2 shared cores: 12 s vs 0.2 s)
    with one_cpu_thread():
        return fit_weights(contributions, config, record_at)


def _check_variants(
    base: GroupWeightConfig, attributor: str, sizes: StudySizes
) -> list[tuple[str, str, GroupWeightConfig]]:
    """``(check, value, config)`` of every row of the checks: each varies one item of ``base``."""
    short = dataclasses.replace(base, **SHORT_FIT)
    rows = [("grouping", g, dataclasses.replace(base, grouping=g)) for g in GROUPINGS]
    rows += [("fit", _fit_text(c), c) for c in (base, short)]
    if attributor == "trak":
        rows += [("projection", p, dataclasses.replace(base, projection=p)) for p in PROJECTIONS]
    rows += [("k", _ablation_text(k), dataclasses.replace(base, k=k)) for k in sizes.ks]
    rows += [("signal", v, dataclasses.replace(base, signal=v)) for v in SIGNALS]
    rows += [("labels", v, dataclasses.replace(base, labels=v)) for v in LABELS]
    rows += [
        ("weight_penalty", _ablation_text(float(p)), dataclasses.replace(base, weight_penalty=p))
        for p in sizes.penalties
    ]
    return rows


def _fit_text(config: GroupWeightConfig) -> str:
    return f"{config.steps} steps at lr {config.lr:g}"


def run_learned_case(
    setting: Setting,
    attributor: str,
    sizes: StudySizes,
    truth,
    config: GroupWeightConfig,
    checks: bool,
    cache: Cache,
    progress: bool,
    device: torch.device,
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """One (setting, attributor): the study's rows (per_query, groups, picks, timing) and, with ``checks``,
    the checks' rows (per_query, weights) at the λ where uniform weights do best on the test queries."""
    params = study_params(setting, attributor, sizes)
    grid = study_grid(setting, attributor, sizes.n_lambdas)
    data = setting.data()
    columns = query_index(len(data.queries("test")[1]), sizes.n_queries)
    fit_columns, select_columns = _fit_and_select_columns(
        len(data.queries("val")[1]), sizes.fit_queries, sizes.select_queries
    )
    key = {"setting": setting.name, "attributor": attributor}
    groups = parameter_groups(setting.make_model(), config.grouping)
    index = {
        name: torch.from_numpy(c) for name, c in (("fit", fit_columns), ("select", select_columns), ("test", columns))
    }
    requests = {
        "fit": QuerySet("val", config.labels, index["fit"]),
        "test": QuerySet("test", "true", index["test"]),
    }
    if checks:
        other = "predicted" if config.labels == "true" else "true"
        requests["fit_" + other] = QuerySet("val", other, index["fit"])
        if len(select_columns):
            requests["select"] = QuerySet("val", "true", index["select"])
    spectral = attributor != "grad_dot"
    if spectral:
        requests["xi"] = QuerySet("val", "true", None)
    started = time.perf_counter()
    formed = setting_contributions_many(setting, attributor, params, requests, config, cache, progress, device)
    contributions_seconds = time.perf_counter() - started
    members = (
        attr.scorer(setting, attributor, params, "val", cache, progress, device=device).members if spectral else None
    )

    study: dict[str, list[dict]] = {"per_query": [], "groups": [], "picks": [], "timing": []}
    fit_seconds, xi_learned = 0.0, []
    for lam in grid:
        fit = _fit(formed["fit"].at(lam), config)
        fit_seconds += fit.seconds
        point = {**key, "regularization": lam}
        study["groups"] += [
            {**point, "group": g.name, "size": g.size, "weight": float(w)} for g, w in zip(groups, fit.weights)
        ]
        c_test = formed["test"].at(lam)
        for weighting, weights in (("uniform", torch.ones(len(groups))), ("learned", fit.weights)):
            per_query = _per_query(weighted_scores(c_test, weights), truth, columns, device)
            study["per_query"] += [
                {**point, "weighting": weighting, "query": int(q), "lds": float(v)} for q, v in zip(columns, per_query)
            ]
        if members is not None:
            xi_learned.append(float(xi_bar_curve(weighted_members(members, formed["xi"], fit.weights), [lam])[0]))
    if members is not None:
        for weighting, curve in (("uniform", xi_bar_curve(members, grid)), ("learned", np.asarray(xi_learned))):
            pick = select_on_grid(curve, grid, XI_THRESHOLD)
            study["picks"].append(
                {**key, "weighting": weighting, "regularization": pick.regularization, "xi_bar": pick.xi_bar}
            )
    study["timing"].append(
        {
            **key,
            "contributions_seconds": contributions_seconds,
            "fit_seconds": fit_seconds,
            "n_fits": len(grid),
            "n_fit_queries": len(fit_columns),
            "n_test_queries": len(columns),
        }
    )
    if not checks:
        return study, {}
    frame = pd.DataFrame(study["per_query"])
    means = frame[frame.weighting == "uniform"].groupby("regularization", dropna=False).lds.mean()
    lam = grid[0] if attributor == "grad_dot" else float(means.idxmax())
    per_group = None
    if attributor == "trak":
        started = time.perf_counter()
        variant = dataclasses.replace(config, projection="per_group")
        asked = {name: requests[name] for name in ("fit", "select", "test") if name in requests}
        per_group = setting_contributions_many(setting, attributor, params, asked, variant, cache, progress, device)
        contributions_seconds += time.perf_counter() - started
    rows = _check_rows(
        setting, attributor, lam, formed, per_group, groups, config, sizes, truth, columns, select_columns, device
    )
    return study, rows


def _check_rows(
    setting: Setting,
    attributor: str,
    lam: float | None,
    formed: Mapping[str, Any],
    per_group: Mapping[str, Any] | None,
    groups: list,
    base: GroupWeightConfig,
    sizes: StudySizes,
    truth,
    columns: np.ndarray,
    select_columns: np.ndarray,
    device: torch.device,
) -> dict[str, list[dict]]:
    """Every check's rows at one λ: per-query LDS (test, and validation on the selection queries) of uniform
    weights and of each variant's learned weights, and each variant's weights."""
    key = {"setting": setting.name, "attributor": attributor, "regularization": lam}
    layer_groups = parameter_groups(setting.make_model(), "layer")
    splits = {"test": ("test", columns)}
    if len(select_columns):
        splits["val"] = ("select", select_columns)
    sets = {"shared": {name: formed[name].at(lam) for name in formed if name != "xi"}}
    if per_group is not None:
        sets["per_group"] = {name: value.at(lam) for name, value in per_group.items()}
    rows: dict[str, list[dict]] = {"per_query": [], "weights": []}

    def judge(check: str, value: str, projection: str, grouping: str, weights: torch.Tensor) -> None:
        for split, (name, cols) in splits.items():
            c = sets[projection][name]
            c = c if grouping == "tensor" else regroup(c, groups, layer_groups)
            per_query = _per_query(weighted_scores(c, weights), truth, cols, device, split)
            rows["per_query"] += [
                {**key, "check": check, "value": value, "split": split, "query": int(q), "lds": float(v)}
                for q, v in zip(cols, per_query)
            ]

    for projection in sets:
        judge(UNIFORM, projection, projection, "tensor", torch.ones(len(groups)))
    fits: dict[GroupWeightConfig, Any] = {}
    for check, value, config in _check_variants(base, attributor, sizes):
        if config not in fits:
            fitted_on = sets[config.projection]["fit" if config.labels == base.labels else f"fit_{config.labels}"]
            if config.grouping != "tensor":
                fitted_on = regroup(fitted_on, groups, layer_groups)
            trace = [s for s in TRACE_STEPS if s <= config.steps] if config == base else []
            fits[config] = _fit(fitted_on, config, trace)
        fit = fits[config]
        names = groups if config.grouping == "tensor" else layer_groups
        rows["weights"] += [
            {**key, "check": check, "value": value, "group": g.name, "weight": float(w)}
            for g, w in zip(names, fit.weights)
        ]
        judge(check, value, config.projection, config.grouping, fit.weights)
    for step, weights in fits[base].checkpoints.items():
        judge(TRACE, str(step), "shared", "tensor", weights)
    for j, group in enumerate(groups):
        alone = torch.zeros(len(groups))
        alone[j] = len(groups)  # mean 1, like every other weighting (the LDS is scale free)
        judge(GROUP, group.name, "shared", "tensor", alone)
    return rows


def learned_weights_study(
    settings: Sequence[str] = STUDY_SETTINGS,
    attributors: Sequence[str] = STUDY_ATTRIBUTORS,
    n_lambdas: int = 5,
    trak_ensemble: int = 2,
    n_models: int = 50,
    n_queries: int | None = None,
    fit_queries: int | None = None,
    left_out: Sequence[str] = (),
    seed: int = 0,
    config: GroupWeightConfig | None = None,
    cache: Cache | None = None,
    progress: bool = False,
    profile: str | None = None,
    device: str | torch.device | None = None,
    sizes: StudySizes | None = None,
    checks: bool = False,
) -> LearnedWeightsRecord | tuple[LearnedWeightsRecord, LearnedAblationRecord]:
    """Every (setting, attributor) case: LDS on the test queries over λ with uniform and learned weights.

    Args:
        settings: embedded settings (``mnist_lr``, ``mnist_mlp``).
        attributors: of ``grad_dot``, ``trak``, ``iffim``.
        n_lambdas: λ points per IFFIM / TRAK case (log-spaced over the default grid's 8 decades).
        trak_ensemble: TRAK's ensemble size.
        n_models: retrained models of the LDS ground truth.
        n_queries: evenly spaced test queries judged (None: all).
        fit_queries: evenly spaced validation queries the weights are fitted on (None: all); ξ uses all.
        left_out: cases ``"<setting> <attributor>"`` not run (kept in the record's config, so a page says so).
        seed: seed of the retraining subsets and models.
        config: how the weights are learned (defaults: spec §4), fixed before any LDS.
        sizes: every size at once (:meth:`StudySizes.of_profile`); replaces the six size arguments above.
        checks: also run the checks (:func:`learned_weights_checks`) on the same contributions and return
            ``(study, checks)``.
    """
    config = config or GroupWeightConfig()
    sizes = sizes or StudySizes(n_lambdas, trak_ensemble, n_models, n_queries, fit_queries, seed=seed)
    for name in attributors:
        if name not in STUDY_ATTRIBUTORS:
            raise InvalidParameterError("attributor", name, STUDY_ATTRIBUTORS)
    if not (isinstance(sizes.n_lambdas, int) and sizes.n_lambdas >= 2):
        raise InvalidParameterError("n_lambdas", sizes.n_lambdas, "an integer >= 2")
    for label in ("n_queries", "fit_queries"):
        value = getattr(sizes, label)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 2):
            raise InvalidParameterError(label, value, "None (all queries) or an integer >= 2")
    _check_ks_and_penalties(sizes.ks, sizes.penalties)
    resolved = [get_setting(name) for name in settings]  # unknown names fail before any compute
    for s in resolved:
        if s.name not in STUDY_SETTINGS:
            raise InvalidParameterError("setting", s.name, STUDY_SETTINGS)
        if checks:
            for k in sizes.ks:  # k above a training set is refused now, not after the first fits
                dataclasses.replace(config, k=k).check_n_train(len(s.data().x_train))
    valid_cases = [f"{s.name} {a}" for s in resolved for a in attributors]
    for case in left_out:
        if case not in valid_cases:
            raise InvalidParameterError("left_out", case, valid_cases)
    truth_config = GroundTruthConfig(n_models=sizes.n_models, seed=sizes.seed)
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    tables: dict[str, list[dict]] = {"per_query": [], "groups": [], "picks": [], "timing": []}
    check_tables: dict[str, list[dict]] = {"per_query": [], "weights": []}
    iffim_dims = {}
    for setting in resolved:
        running = [a for a in attributors if f"{setting.name} {a}" not in left_out]
        if not running:
            continue
        iffim_dims[setting.name] = _iffim_proj_dim(setting, sizes)
        truth = ground_truth(setting, truth_config, cache, progress, device=device)
        for attributor in running:
            study, rows = run_learned_case(setting, attributor, sizes, truth, config, checks, cache, progress, device)
            for part, values in study.items():
                tables[part] += values
            for part, values in rows.items():
                check_tables[part] += values
    study_config = {
        "settings": [s.name for s in resolved],
        "attributors": list(attributors),
        **{f.name: getattr(sizes, f.name) for f in dataclasses.fields(sizes)},
        "iffim_proj_dim_by_setting": iffim_dims,
        "trak_proj_dim": attr.make_params("trak").proj_dim,
        "left_out": list(left_out),
        "xi_threshold": XI_THRESHOLD,
        "weights": config.as_dict(),
    }
    study_config["ks"], study_config["penalties"] = list(sizes.ks), [float(p) for p in sizes.penalties]
    frames = {part: pd.DataFrame(rows) for part, rows in tables.items()}
    record = LearnedWeightsRecord.from_per_query(frames, study_config, profile)
    if not checks:
        return record
    return record, LearnedAblationRecord(
        pd.DataFrame(check_tables["per_query"], columns=[*CHECK_KEY, "split", "query", "lds"]),
        pd.DataFrame(check_tables["weights"], columns=[*CHECK_KEY, "group", "weight"]),
        {**study_config, "short_fit": dict(SHORT_FIT), "trace_steps": list(TRACE_STEPS)},
        profile,
    )


def learned_weights_checks(
    settings: Sequence[str] = STUDY_SETTINGS,
    attributors: Sequence[str] = STUDY_ATTRIBUTORS,
    profile: str = "default",
    seed: int = 0,
    left_out: Sequence[str] | None = None,
    config: GroupWeightConfig | None = None,
    cache: Cache | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> tuple[LearnedWeightsRecord, LearnedAblationRecord]:
    """The study and its checks (issue 23) at the sizes of ``profile``, from one set of contributions per case.

    The checks, each at the λ where uniform weights do best on the test queries, each row judged against
    uniform weights on the same queries: per-layer against per-tensor groups; the short fit
    (:data:`SHORT_FIT`) against the study's, with the test LDS along the study's fit (:data:`TRACE_STEPS`);
    for TRAK each group projected on its own against the shared projection; k, the signal, the query labels
    and λ_w; and each group alone (a diagnostic).
    """
    sizes = StudySizes.of_profile(profile, seed)
    left_out = get_profile(profile).learned_left_out if left_out is None else left_out
    return learned_weights_study(
        settings,
        attributors,
        left_out=left_out,
        config=config,
        cache=cache,
        progress=progress,
        profile=profile,
        device=device,
        sizes=sizes,
        checks=True,
    )


def _check_ks_and_penalties(ks: Sequence[int], penalties: Sequence[float]) -> None:
    for k in ks:
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            raise InvalidParameterError("ks", k, "integers >= 1")
    for penalty in penalties:
        if not (isinstance(penalty, (int, float)) and not isinstance(penalty, bool) and penalty >= 0):
            raise InvalidParameterError("penalties", penalty, "numbers >= 0")


def _iffim_proj_dim(setting: Setting, sizes: StudySizes) -> int | None:
    """IFFIM's projection on ``setting``: the sizes' dimension where the setting is large enough, else None."""
    if sizes.iffim_proj_dim is None or setting.n_params() < sizes.iffim_project_from:
        return None
    return min(sizes.iffim_proj_dim, setting.n_params())


def study_params(setting: Setting, attributor: str, sizes: StudySizes):
    """The attributor's defaults, with TRAK's ensemble and IFFIM's projection of ``sizes``."""
    if attributor == "trak":
        return attr.make_params("trak", ensemble_size=sizes.trak_ensemble)
    if attributor == "iffim":
        return attr.make_params("iffim", proj_dim=_iffim_proj_dim(setting, sizes))
    return attr.make_params(attributor)


# The record


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
        """Seconds to form the contributions of a case and to fit its weights (all λ)."""
        row = self.timing[(self.timing.setting == setting) & (self.timing.attributor == attributor)].iloc[0]
        return {"contributions": float(row.contributions_seconds), "fit": float(row.fit_seconds)}

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

    def judged_cases(self, excluded_settings: Collection[str] = ()) -> list[tuple[str, str]]:
        """The cases C13 is judged on: those of :data:`C13_ATTRIBUTORS`, on a setting not excluded."""
        return [(s, a) for s, a in self.cases if a in C13_ATTRIBUTORS and s not in excluded_settings]

    def verdict(self, cases: Sequence[tuple[str, str]]) -> str:
        """C13 (:data:`C13_RULE`) on ``cases`` (``(setting, attributor)``; not run when there are none)."""
        head = self.headline()
        return share_verdict([head[self.label(s, a)]["learned_minus_uniform"].exceeds(0) for s, a in cases])

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


#: Key columns of the checks' per-query rows and weights.
CHECK_KEY = ("setting", "attributor", "regularization", "check", "value")
#: Columns of ``learned_weights_ablations.csv``: per (case, check, value) the uniform and learned test LDS, their
#: paired difference, and the same difference on the validation queries the checks are also judged on.
ABLATION_COLUMNS = (
    "setting",
    "attributor",
    "regularization",
    "check",
    "value",
    "n_test_queries",
    "lds_uniform",
    "lds_uniform_se",
    "lds_learned",
    "lds_learned_se",
    "difference",
    "difference_se",
    "val_difference",
    "val_difference_se",
)
#: Rows of uniform weights (value: the projection they are paired with; ``per_group``: TRAK's own check).
UNIFORM = "uniform"
#: The test LDS along the study's fit (value: Adam steps taken).
TRACE = "fit_trace"
#: The diagnostic rows: the LDS of one group's contributions C_j alone (in the ``learned`` columns).
GROUP = "group"
#: The four checks of issue 23 (``k`` also on the MLP's Grad-Dot and IFFIM), then the spec's other ablations.
CHECKS = ("grouping", "fit", "projection", "k", "signal", "labels", "weight_penalty")


@dataclasses.dataclass
class LearnedAblationRecord:
    """The checks of the learned weights at one λ per case (:func:`learned_weights_checks`).

    ``per_query``: one row per (setting, attributor, regularization, check, value, split, query) with ``lds``
    (split ``test``, or ``val``: validation queries the weights were not fitted on). ``check`` is
    :data:`UNIFORM` (value: ``shared`` or ``per_group``, the projection), one of :data:`CHECKS` (value: the
    varied item's value; every other item as in the study), :data:`TRACE` or :data:`GROUP`. ``weights``: the
    fitted weight of every group of every varied row. ``config``: the study's sizes and ``weights`` (its own
    configuration, from which one item is varied at a time).
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
        return self._by_case().get((setting, attributor), self.per_query.iloc[:0])

    def _by_case(self) -> dict[tuple[str, str], pd.DataFrame]:
        """The rows of each case, split once: the tables and headlines ask for rows over a thousand times,
        and comparing string columns of the whole frame each time cost seconds per page."""
        if getattr(self, "_split_rows", None) is None or self._split_rows[0] is not self.per_query:
            self._split_rows = (
                self.per_query,
                {key: rows for key, rows in self.per_query.groupby(["setting", "attributor"], sort=False)},
            )
        return self._split_rows[1]

    def _row_lds(self, setting: str, attributor: str) -> dict[tuple[str, str, str], np.ndarray]:
        """(check, value, split) -> per-query LDS in query order, for one case (formed once per case)."""
        cache = getattr(self, "_lds_rows", None)
        if cache is None or cache[0] is not self.per_query:
            cache = self._lds_rows = (self.per_query, {})
        if (setting, attributor) not in cache[1]:
            rows = self._rows(setting, attributor).sort_values("query", kind="stable")
            cache[1][(setting, attributor)] = {
                (str(check), str(value), str(split)): group.lds.to_numpy(dtype=float)
                for (check, value, split), group in rows.groupby(
                    [rows.check, rows.value.astype(str), rows.split], sort=False
                )
            }
        return cache[1][(setting, attributor)]

    def values(self, setting: str, attributor: str, check: str) -> list[str]:
        """The values one check took in a case, in the order they ran."""
        rows = self._rows(setting, attributor)
        return list(dict.fromkeys(rows[rows.check == check].value.astype(str)))

    def regularization(self, setting: str, attributor: str) -> float | None:
        """The λ of a case's checks (None for Grad-Dot)."""
        return _lam(self._rows(setting, attributor).regularization.iloc[0])

    def per_query_at(self, setting: str, attributor: str, check: str, value: str, split: str = "test") -> np.ndarray:
        """Per-query LDS of one row, in query order."""
        found = self._row_lds(setting, attributor).get((str(check), str(value), str(split)))
        if found is None:
            raise InvalidParameterError("row", (setting, attributor, check, value, split), "a row of the checks")
        return found

    @staticmethod
    def baseline(check: str, value: str) -> str:
        """The uniform row a row is paired with: TRAK's per-group projection has its own."""
        return "per_group" if (check, value) == ("projection", "per_group") else "shared"

    def row(self, setting: str, attributor: str, check: str, value: str, split: str = "test") -> dict[str, Estimate]:
        """``uniform``, ``learned`` (the row's weights) and their paired ``difference`` on ``split``."""
        learned = self.per_query_at(setting, attributor, check, value, split)
        uniform = self.per_query_at(setting, attributor, UNIFORM, self.baseline(check, value), split)
        return {
            "uniform": mean_estimate(uniform),
            "learned": mean_estimate(learned),
            "difference": paired_difference(learned, uniform),
        }

    def has_split(self, split: str) -> bool:
        """Whether the rows were also judged on ``split``."""
        return bool((self.per_query.split == split).any())

    def weights_of(self, setting: str, attributor: str, check: str, value: str) -> pd.Series:
        """Group -> fitted weight of one row (mean 1)."""
        rows = self.weights[(self.weights.setting == setting) & (self.weights.attributor == attributor)]
        rows = rows[(rows.check == check) & (rows.value.astype(str) == str(value))]
        return pd.Series(rows.weight.to_numpy(dtype=float), index=rows.group.astype(str).tolist(), name="weight")

    def table(self) -> pd.DataFrame:
        """``learned_weights_ablations.csv`` (:data:`ABLATION_COLUMNS`)."""
        out = []
        val = self.has_split("val")
        for setting, attributor in self.cases:
            lam = self.regularization(setting, attributor)
            for check in dict.fromkeys(self._rows(setting, attributor).check):
                if check == UNIFORM:
                    continue
                for value in self.values(setting, attributor, check):
                    r = self.row(setting, attributor, check, value)
                    v = (
                        self.row(setting, attributor, check, value, "val")["difference"]
                        if val
                        else Estimate(float("nan"))
                    )
                    n = len(self.per_query_at(setting, attributor, check, value))
                    out.append(
                        (
                            setting,
                            attributor,
                            lam,
                            check,
                            value,
                            n,
                            r["uniform"].value,
                            r["uniform"].se,
                            r["learned"].value,
                            r["learned"].se,
                            r["difference"].value,
                            r["difference"].se,
                            v.value,
                            v.se,
                        )
                    )
        return pd.DataFrame(out, columns=list(ABLATION_COLUMNS))

    def case_headline(self, setting: str, attributor: str) -> dict[str, Any]:
        """One case: λ, uniform and the study's learned LDS and their difference; per check and value the
        row's uniform and learned LDS, their difference (test and validation), and its gap to the study's own
        learned row (``minus_base``); the LDS along the fit; each group alone against the largest weight."""
        base = self.config.get("weights", {})
        reference = ("fit", _fit_text(GroupWeightConfig(**base))) if base else None
        rows = self._rows(setting, attributor)
        head: dict[str, Any] = {"regularization": self.regularization(setting, attributor)}
        if reference and reference[1] in self.values(setting, attributor, "fit"):
            r = self.row(setting, attributor, *reference)
            head.update(uniform=r["uniform"], learned=r["learned"], learned_minus_uniform=r["difference"])
        for check in dict.fromkeys(rows.check):
            if check in (UNIFORM, GROUP):
                continue
            values = self.values(setting, attributor, check)
            entry: dict[str, Any] = {"base": _ablation_text(base.get(check)) if check in base else None}
            for v in values:
                r = self.row(setting, attributor, check, v)
                if self.has_split("val"):
                    r["val_difference"] = self.row(setting, attributor, check, v, "val")["difference"]
                entry.setdefault("rows", {})[v] = r
            if reference:
                ref = self.per_query_at(setting, attributor, *reference)
                entry["minus_base"] = {
                    v: paired_difference(self.per_query_at(setting, attributor, check, v), ref) for v in values
                }
            head[check] = entry
        groups = self.values(setting, attributor, GROUP)
        if groups:
            alone = {g: mean_estimate(self.per_query_at(setting, attributor, GROUP, g)) for g in groups}
            weights = self.weights_of(setting, attributor, *reference) if reference else pd.Series(dtype=float)
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
        """Write ``learned_weights_ablations.csv`` (:data:`ABLATION_COLUMNS`), ``..._per_query.csv``,
        ``..._weights.csv`` and ``....json``; returns the first."""
        path = folder / f"{self.stem}.csv"
        self.table().to_csv(path, index=False)
        self.per_query.to_csv(folder / f"{self.stem}_per_query.csv", index=False)
        self.weights.to_csv(folder / f"{self.stem}_weights.csv", index=False)
        meta = {
            "record": "learned_ablations",
            "profile": self.profile,
            "config": self.config,
            "headline": self.headline(),
        }
        write_json(folder / f"{self.stem}.json", meta)
        return path

    @classmethod
    def load(cls, folder: Path, stem: str = "learned_weights_ablations") -> LearnedAblationRecord | None:
        """The record saved as ``stem`` under ``folder``, or None."""
        if not (folder / f"{stem}.json").exists():
            return None
        meta = read_json(folder / f"{stem}.json")
        text = {"value": str, "group": str}  # "0.001" and "10" stay the text the rows were written with
        per_query = pd.read_csv(folder / f"{stem}_per_query.csv", dtype=text)
        if "check" not in per_query.columns:  # written before the checks of issue 23: not comparable
            return None
        weights = pd.read_csv(folder / f"{stem}_weights.csv", dtype=text)
        return cls(per_query, weights, meta.get("config", {}), meta.get("profile"), stem)


def _ablation_text(value: Any) -> str | None:
    """A configuration value as the check rows write it (``10``, ``top``, ``0.001``)."""
    if value is None:
        return None
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------
# C13's verdict, with its scope


@dataclasses.dataclass(frozen=True)
class C13Verdict:
    """C13 on the judged cases, its scope, and what each check makes of it."""

    verdict: str  #: :data:`C13_RULE` on the study (each weighting at its best λ)
    cases: list[str]  #: the judged cases
    scope: str  #: these models, these settings, these choices
    at_lambda: str  #: the same rule on the checks' reference rows (the study's configuration at the checks' λ)
    checks: dict[str, str]  #: ``"check=value"`` -> the rule on that row (a case without the check keeps its reference)
    changed_by: list[str]  #: ``"check=value (its verdict)"`` of the rows whose verdict differs from ``at_lambda``
    helps_on_validation: list[
        str
    ]  #: rows where learned beats uniform by > 2 SE on validation queries in every judged case

    def text(self) -> str:
        """The verdict, its scope and which check changes it, in one paragraph."""
        changed = ", ".join(self.changed_by) if self.changed_by else "none"
        helps = ", ".join(self.helps_on_validation) if self.helps_on_validation else "none"
        return (
            f"C13 {self.verdict} ({', '.join(self.cases)}). Scope: {self.scope}. At the checks' λ the study's "
            f"configuration gives: {self.at_lambda}; checks that change it: {changed}; settings where learned weights "
            f"beat uniform ones on the validation queries in every judged case: {helps}."
        )


def c13_verdict(
    record: LearnedWeightsRecord, checks: LearnedAblationRecord | None, excluded_settings: Collection[str] = ()
) -> C13Verdict:
    """C13 (:data:`C13_RULE`) on the judged cases of ``record``, scoped, with each check's verdict (the one
    function behind the page's and the status page's C13)."""
    cases = record.judged_cases(excluded_settings)
    labels = [record.label(s, a) for s, a in cases]
    verdict = record.verdict(cases)
    c = record.config
    w = c.get("weights", {})
    iffim = c.get("iffim_proj_dim_by_setting", {})
    scope = (
        f"{' and '.join(c.get('settings', []))} (the embedded MNIST split, {c.get('n_models')} retrained models); "
        f"{', '.join(sorted({a for _, a in cases}))}; one weight per {w.get('grouping', 'tensor')}, "
        f"{w.get('steps')} full-batch Adam steps at lr {w.get('lr')}, k = {w.get('k')}, fitted on "
        f"{c.get('fit_queries') or 'all'} validation queries with {w.get('labels')} labels; TRAK: "
        f"{c.get('trak_ensemble')} members, one {c.get('trak_proj_dim')}-dimensional projection "
        f"{'shared by' if w.get('projection', 'shared') == 'shared' else 'per'} group"
        f"{'s' if w.get('projection', 'shared') == 'shared' else ''}; IFFIM "
        + ", ".join(f"{s}: {'unprojected' if d is None else f'projected to {d}'}" for s, d in iffim.items())
        + f"; λ: each weighting's best of {c.get('n_lambdas')} on the test queries"
    )
    if checks is None:
        return C13Verdict(verdict, labels, scope, NOT_RUN, {}, [], [])
    ran = set(checks.cases)
    judged = [(s, a) for s, a in cases if (s, a) in ran]
    reference = ("fit", _fit_text(GroupWeightConfig(**w))) if w else None

    def outcome(setting: str, attributor: str, check: str, value: str, split: str = "test") -> bool | None:
        if value not in checks.values(setting, attributor, check):
            return None
        return checks.row(setting, attributor, check, value, split)["difference"].exceeds(0)

    at_lambda = share_verdict([outcome(s, a, *reference) for s, a in judged]) if reference else NOT_RUN
    found: dict[str, str] = {}
    helps: list[str] = []
    for check in CHECKS:
        values = dict.fromkeys(v for s, a in judged for v in checks.values(s, a, check))
        for value in values:
            per_case = [outcome(s, a, check, value) for s, a in judged]
            per_case = [o if o is not None else outcome(s, a, *reference) for o, (s, a) in zip(per_case, judged)]
            found[f"{check}={value}"] = share_verdict(per_case)
            if checks.has_split("val"):
                on_val = [outcome(s, a, check, value, "val") for s, a in judged]
                if on_val and all(o is True for o in on_val):
                    helps.append(f"{check}={value}")
    changed = [f"{name} ({v})" for name, v in found.items() if v != at_lambda]
    return C13Verdict(verdict, labels, scope, at_lambda, found, changed, helps)
