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

Timing: the seconds to form the validation contributions and to fit the weights (all λ), next to the
seconds the attributor itself takes to score the judged test queries (:func:`dahp.attribution.attributors.scorer`
plus its scores at every λ). Both as measured in this run: features already cached are loaded, not
recomputed, in either.

Book: "Learned parameter-group weights".
"""

from __future__ import annotations

import contextlib
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
from dahp.attribution.spectral import SpectralFactors
from dahp.core.cache import Cache, default_cache
from dahp.core.config import GroundTruthConfig, InvalidParameterError
from dahp.core.device import resolve_device
from dahp.core.results import matches, read_json, write_json
from dahp.core.statistics import Estimate, mean_estimate, paired_difference, share_verdict
from dahp.data.settings import Setting, get_setting
from dahp.experiments.cases import default_grid
from dahp.experiments.grid import query_index
from dahp.experiments.profiles import get_profile
from dahp.methods.learned_weights import (
    LABELS,
    SIGNALS,
    GroupWeightConfig,
    RowWeightedContributions,
    SpectralContributions,
    SummedContributions,
    fit_weights,
    parameter_groups,
    setting_contributions,
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
#: Cases of the ablations: the cheap ones (the MLP's Grad-Dot and IFFIM need its full gradients).
ABLATION_CASES = ("mnist_lr trak", "mnist_lr iffim", "mnist_mlp trak")


def study_grid(setting: Setting, attributor: str, n_lambdas: int) -> list[float | None]:
    """λ of one case: none for Grad-Dot; for IFFIM and TRAK ``n_lambdas`` points of the package's
    default grid on the attributor's own scale (:func:`dahp.experiments.cases.default_grid`)."""
    if attributor == "grad_dot":
        return [None]
    return default_grid(setting, attributor, n_lambdas)


def study_params(attributor: str, trak_ensemble: int):
    """The attributor's defaults (TRAK with the profile's ensemble); IFFIM unprojected (learned weights
    of projected IFFIM are not implemented)."""
    if attributor == "trak":
        return attr.make_params("trak", ensemble_size=trak_ensemble)
    return attr.make_params(attributor)


def _spectral_parts(contributions) -> list[SpectralContributions]:
    """The per-member spectral contributions of IFFIM (one) or TRAK (one per ensemble member)."""
    if isinstance(contributions, RowWeightedContributions):
        contributions = contributions.inner
    if isinstance(contributions, SummedContributions):
        return list(contributions.parts)
    return [contributions]


def weighted_members(members: Sequence[SpectralFactors], contributions, weights: torch.Tensor) -> list[SpectralFactors]:
    """The validation scorer's spectral factors with query side ``Σ_j w_j R_j`` (ξ of the weighted attributor).

    Checks that the contributions split exactly these factors (``Σ_j R_j = R`` per member).
    """
    parts = _spectral_parts(contributions)
    if len(parts) != len(members):
        raise InvalidParameterError("members", len(members), f"{len(parts)} (one per contribution part)")
    out = []
    for member, part in zip(members, parts):
        # TRAK's scorer projects in float32: agreement to float32 rounding of the largest entry
        gap = float((part.rights.sum(0) - member.right.double()).abs().max())
        if gap > 1e-5 * float(member.right.abs().max()):
            raise InvalidParameterError("contributions", "per-group rights", "a split of the scorer's own factors")
        right = torch.einsum("m,mrq->rq", weights.double(), part.rights)
        out.append(dataclasses.replace(member, right=right.to(member.right.dtype)))
    return out


@contextlib.contextmanager
def _one_thread():
    """Run the weight fit on one CPU thread: its tensors are small (groups × n_train × queries), and on a busy
    machine intra-op threads made a 300-step fit 10-80x slower (measured on 2 shared cores: 12 s vs 0.2 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _per_query(scores: torch.Tensor, truth, columns: np.ndarray, device: torch.device) -> np.ndarray:
    targets = truth.targets("test")[:, columns]
    return lds(scores, targets, truth.subsets, device=device).per_query


def run_learned_case(
    setting: Setting,
    attributor: str,
    n_lambdas: int,
    trak_ensemble: int,
    truth,
    n_queries: int | None,
    fit_queries: int | None,
    config: GroupWeightConfig,
    cache: Cache,
    progress: bool,
    device: torch.device,
) -> dict[str, list[dict]]:
    """One (setting, attributor): rows of the record's tables (per_query, groups, picks, timing)."""
    params = study_params(attributor, trak_ensemble)
    grid = study_grid(setting, attributor, n_lambdas)
    columns = query_index(len(setting.data().queries("test")[1]), n_queries)
    fit_columns = torch.from_numpy(query_index(len(setting.data().queries("val")[1]), fit_queries))
    key = {"setting": setting.name, "attributor": attributor}
    groups = parameter_groups(setting.make_model(), config.grouping)

    # the attributor's own cost: its test scorer on the judged queries and its scores at every λ
    started = time.perf_counter()
    judged = torch.from_numpy(columns)
    test_scorer = attr.scorer(setting, attributor, params, "test", cache, progress, judged, device)
    own = [test_scorer.scores(lam) if lam is not None else test_scorer.scores(0.0) for lam in grid]
    attributor_seconds = time.perf_counter() - started
    del own

    started = time.perf_counter()
    val = setting_contributions(setting, attributor, params, "val", config, cache, progress, device)
    contributions_seconds = time.perf_counter() - started
    test = setting_contributions(setting, attributor, params, "test", config, cache, progress, device)
    members = None
    if attributor != "grad_dot":
        members = attr.scorer(setting, attributor, params, "val", cache, progress, device=device).members

    rows: dict[str, list[dict]] = {"per_query": [], "groups": [], "picks": [], "timing": []}
    fit_seconds, xi_learned = 0.0, []
    for lam in grid:
        fitted_on = val.at(lam)[:, :, fit_columns].contiguous()
        with _one_thread():
            fit = fit_weights(fitted_on, config)
        fit_seconds += fit.seconds
        point = {**key, "regularization": lam}
        rows["groups"] += [
            {**point, "group": g.name, "size": g.size, "weight": float(w)} for g, w in zip(groups, fit.weights)
        ]
        c_test = test.at(lam)[:, :, columns]
        for weighting, weights in (("uniform", torch.ones(len(groups))), ("learned", fit.weights)):
            per_query = _per_query(weighted_scores(c_test, weights), truth, columns, device)
            rows["per_query"] += [
                {**point, "weighting": weighting, "query": int(q), "lds": float(v)} for q, v in zip(columns, per_query)
            ]
        if members is not None:
            xi_learned.append(float(xi_bar_curve(weighted_members(members, val, fit.weights), [lam])[0]))
    if members is not None:
        for weighting, curve in (("uniform", xi_bar_curve(members, grid)), ("learned", np.asarray(xi_learned))):
            pick = select_on_grid(curve, grid, XI_THRESHOLD)
            rows["picks"].append(
                {**key, "weighting": weighting, "regularization": pick.regularization, "xi_bar": pick.xi_bar}
            )
    rows["timing"].append(
        {
            **key,
            "attributor_seconds": attributor_seconds,
            "contributions_seconds": contributions_seconds,
            "fit_seconds": fit_seconds,
            "n_fits": len(grid),
        }
    )
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
) -> LearnedWeightsRecord:
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
    """
    config = config or GroupWeightConfig()
    for name in attributors:
        if name not in STUDY_ATTRIBUTORS:
            raise InvalidParameterError("attributor", name, STUDY_ATTRIBUTORS)
    if not (isinstance(n_lambdas, int) and n_lambdas >= 2):
        raise InvalidParameterError("n_lambdas", n_lambdas, "an integer >= 2")
    for label, value in (("n_queries", n_queries), ("fit_queries", fit_queries)):
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 2):
            raise InvalidParameterError(label, value, "None (all queries) or an integer >= 2")
    resolved = [get_setting(name) for name in settings]  # unknown names fail before any compute
    for s in resolved:
        if s.name not in STUDY_SETTINGS:
            raise InvalidParameterError("setting", s.name, STUDY_SETTINGS)
    valid_cases = [f"{s.name} {a}" for s in resolved for a in attributors]
    for case in left_out:
        if case not in valid_cases:
            raise InvalidParameterError("left_out", case, valid_cases)
    truth_config = GroundTruthConfig(n_models=n_models, seed=seed)
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    tables: dict[str, list[dict]] = {"per_query": [], "groups": [], "picks": [], "timing": []}
    for setting in resolved:
        running = [a for a in attributors if f"{setting.name} {a}" not in left_out]
        if not running:
            continue
        truth = ground_truth(setting, truth_config, cache, progress, device=device)
        for attributor in running:
            rows = run_learned_case(
                setting,
                attributor,
                n_lambdas,
                trak_ensemble,
                truth,
                n_queries,
                fit_queries,
                config,
                cache,
                progress,
                device,
            )
            for part, values in rows.items():
                tables[part] += values
    study_config = {
        "settings": [s.name for s in resolved],
        "attributors": list(attributors),
        "n_lambdas": n_lambdas,
        "trak_ensemble": trak_ensemble,
        "n_models": n_models,
        "n_queries": n_queries,
        "fit_queries": fit_queries,
        "left_out": list(left_out),
        "seed": seed,
        "xi_threshold": XI_THRESHOLD,
        "weights": config.as_dict(),
    }
    frames = {part: pd.DataFrame(rows) for part, rows in tables.items()}
    return LearnedWeightsRecord.from_per_query(frames, study_config, profile)


# --------------------------------------------------------------------------------------------
# Ablations (spec §4, §6): one item of the fit varied at a time, at one λ per case


def ablation_variants(
    base: GroupWeightConfig, ks: Sequence[int], penalties: Sequence[float]
) -> list[tuple[str, str, GroupWeightConfig]]:
    """``(ablation, value, config)`` of every variant: k, the signal, the query labels, λ_w; the rest as ``base``."""
    variants = [("k", _ablation_text(k), dataclasses.replace(base, k=k)) for k in ks]
    variants += [("signal", v, dataclasses.replace(base, signal=v)) for v in SIGNALS]
    variants += [("labels", v, dataclasses.replace(base, labels=v)) for v in LABELS]
    variants += [
        ("weight_penalty", _ablation_text(float(p)), dataclasses.replace(base, weight_penalty=p)) for p in penalties
    ]
    return variants


def run_ablation_case(
    setting: Setting,
    attributor: str,
    regularization: float | None,
    params,
    truth,
    columns: np.ndarray,
    fit_columns: torch.Tensor,
    base: GroupWeightConfig,
    ks: Sequence[int],
    penalties: Sequence[float],
    cache: Cache,
    progress: bool,
    device: torch.device,
) -> dict[str, list[dict]]:
    """One case's rows (``per_query``, ``weights``): the reference rows, every variant, every group alone.

    The validation contributions are formed once per label choice and every variant's weights are
    fitted on them (one fit per distinct configuration: the study's own appears in every ablation);
    all are judged on the same test contributions, so every row compares paired.
    """
    key = {"setting": setting.name, "attributor": attributor}
    groups = parameter_groups(setting.make_model(), base.grouping)
    test = setting_contributions(setting, attributor, params, "test", base, cache, progress, device)
    c_test = test.at(regularization)[:, :, columns]
    fitted_on: dict[str, torch.Tensor] = {}
    for labels in LABELS:
        config = dataclasses.replace(base, labels=labels)
        val = setting_contributions(setting, attributor, params, "val", config, cache, progress, device)
        fitted_on[labels] = val.at(regularization)[:, :, fit_columns].contiguous()

    rows: dict[str, list[dict]] = {"per_query": [], "weights": []}

    def judge(ablation: str, value: str, scores: torch.Tensor) -> None:
        per_query = _per_query(scores, truth, columns, device)
        rows["per_query"] += [
            {**key, "ablation": ablation, "value": value, "query": int(q), "lds": float(v)}
            for q, v in zip(columns, per_query)
        ]

    fits: dict[GroupWeightConfig, torch.Tensor] = {}
    judge(REFERENCE, "uniform", weighted_scores(c_test, torch.ones(len(groups))))
    for ablation, value, config in [(REFERENCE, "learned", base), *ablation_variants(base, ks, penalties)]:
        if config not in fits:
            with _one_thread():
                fits[config] = fit_weights(fitted_on[config.labels], config).weights
        rows["weights"] += [
            {**key, "ablation": ablation, "value": value, "group": g.name, "weight": float(w)}
            for g, w in zip(groups, fits[config])
        ]
        judge(ablation, value, weighted_scores(c_test, fits[config]))
    for j, group in enumerate(groups):
        judge(GROUP, group.name, c_test[j])
    return rows


def learned_weights_ablations(
    record: LearnedWeightsRecord,
    cases: Sequence[str] = ABLATION_CASES,
    ks: Sequence[int] | None = None,
    penalties: Sequence[float] | None = None,
    cache: Cache | None = None,
    progress: bool = False,
    profile: str | None = None,
    device: str | torch.device | None = None,
) -> LearnedAblationRecord:
    """The spec's ablations on the study's cheap cases, at the uniform weighting's best λ of ``record``.

    Varied one at a time from the study's configuration (``record.config["weights"]``): k over
    ``ks``, the signal (top-k, or both tails), the query labels the weights are learned with (true,
    or the model's prediction), λ_w over ``penalties``; plus the LDS of each group's contributions
    ``C_j`` alone (for IFFIM and TRAK: the group's share of the full attributor's score, not the
    attributor rerun on that group's parameters). Sizes (queries judged and fitted on, ground truth,
    TRAK's ensemble) are the study's own, from ``record.config``. A case the study did not run is
    skipped and listed in the result's ``config["not_run"]``.

    Args:
        record: the study's record (:func:`learned_weights_study`).
        cases: ``"<setting> <attributor>"`` of :data:`ABLATION_CASES`.
        ks: values of k (integers >= 1; None: the default profile's, the spec's 1, 5, 10, 20, 50, 100).
        penalties: values of λ_w (>= 0; None: the default profile's, the spec's 0, 1e-3, 1e-2).
    """
    default = get_profile("default")
    ks = default.learned_ablation_ks if ks is None else tuple(ks)
    penalties = default.learned_ablation_penalties if penalties is None else tuple(penalties)
    for case in cases:
        if case not in ABLATION_CASES:
            raise InvalidParameterError("cases", case, ABLATION_CASES)
    for k in ks:
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            raise InvalidParameterError("ks", k, "integers >= 1")
    for penalty in penalties:
        if not (isinstance(penalty, (int, float)) and not isinstance(penalty, bool) and penalty >= 0):
            raise InvalidParameterError("penalties", penalty, "numbers >= 0")
    sizes = record.config
    missing = [name for name in ("trak_ensemble", "n_models", "seed", "weights") if name not in sizes]
    if missing:
        raise InvalidParameterError("record", missing, "a study record whose config has its sizes and weights")
    base = GroupWeightConfig(**sizes["weights"])
    ran = {LearnedWeightsRecord.label(s, a) for s, a in record.cases}
    running = [c for c in cases if c in ran]
    for case in running:  # k above a training set is refused now, not after the first fits
        n_train = len(get_setting(case.split(" ")[0]).data().x_train)
        for k in ks:
            dataclasses.replace(base, k=k).check_n_train(n_train)
    truth_config = GroundTruthConfig(n_models=sizes["n_models"], seed=sizes["seed"])
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    tables: dict[str, list[dict]] = {"per_query": [], "weights": []}
    lambdas: dict[str, float | None] = {}
    truths: dict[str, object] = {}
    for case in running:
        name, attributor = case.split(" ")
        setting = get_setting(name)
        lam = record.best(name, attributor, "uniform")
        lambdas[case] = lam
        if name not in truths:
            truths[name] = ground_truth(setting, truth_config, cache, progress, device=device)
        columns = query_index(len(setting.data().queries("test")[1]), sizes.get("n_queries"))
        fit_columns = torch.from_numpy(query_index(len(setting.data().queries("val")[1]), sizes.get("fit_queries")))
        rows = run_ablation_case(
            setting,
            attributor,
            lam,
            study_params(attributor, sizes["trak_ensemble"]),
            truths[name],
            columns,
            fit_columns,
            base,
            ks,
            penalties,
            cache,
            progress,
            device,
        )
        for part, values in rows.items():
            tables[part] += values
    config = {
        "cases": list(cases),
        "not_run": [c for c in cases if c not in ran],
        "regularization": lambdas,
        "ks": list(ks),
        "penalties": [float(p) for p in penalties],
        "base": base.as_dict(),
        **{name: sizes.get(name) for name in ("trak_ensemble", "n_models", "n_queries", "fit_queries", "seed")},
    }
    key = ["setting", "attributor", "ablation", "value"]
    frames = {
        part: pd.DataFrame(rows, columns=[*key, *columns])
        for (part, rows), columns in zip(tables.items(), (["query", "lds"], ["group", "weight"]))
    }
    return LearnedAblationRecord(frames["per_query"], frames["weights"], config, profile)


# --------------------------------------------------------------------------------------------
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
