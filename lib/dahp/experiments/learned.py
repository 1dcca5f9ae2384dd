"""Learned parameter-group weights against uniform ones, over λ, judged by the test LDS (issue 12).

For each (setting, attributor) the per-group contributions (:mod:`dahp.learned_weights`) are formed
once on the validation queries and once on the test queries. At every λ of the grid (IFFIM, TRAK;
Grad-Dot has none) the weights are fitted on the validation contributions with a configuration fixed
before any LDS is computed (:class:`dahp.learned_weights.GroupWeightConfig`), and both weightings are
then judged on the same test queries: uniform weights (the attributor's own scores) and the learned
ones, per query, so the two compare paired (:func:`dahp.experiments.records.paired_difference`).

The ξ rule (:mod:`dahp.selection`) is run for both weightings on the validation queries: with uniform
weights it is Algorithm 1 on the attributor's spectral factors; with learned weights the same rule
on the same factors whose query side is ``Σ_j w_j R_j`` (the weights learned at each λ), i.e. ξ of the
weighted attributor. Neither sees a test query.

Timing: the seconds to form the validation contributions and to fit the weights (all λ), next to the
seconds the attributor itself takes to score the judged test queries (:func:`dahp.attributors.scorer`
plus its scores at every λ). Both as measured in this run: features already cached are loaded, not
recomputed, in either.

Book: "Learned parameter-group weights".
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from dahp import attributors as attr
from dahp.cache import Cache, default_cache
from dahp.config import GroundTruthConfig, InvalidParameterError
from dahp.device import resolve_device
from dahp.experiments.cases import default_grid
from dahp.experiments.grid import query_index
from dahp.experiments.records import GROUP, REFERENCE, LearnedAblationRecord, LearnedWeightsRecord, _ablation_text
from dahp.ground_truth import ground_truth
from dahp.lds import lds
from dahp.learned_weights import (
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
from dahp.profiles import get_profile
from dahp.selection import select_on_grid, xi_bar_curve
from dahp.settings import Setting, get_setting
from dahp.spectral import SpectralFactors

#: The study's settings and attributors (issue 12: both embedded settings; Grad-Dot, TRAK, IFFIM).
STUDY_SETTINGS = ("mnist_lr", "mnist_mlp")
STUDY_ATTRIBUTORS = ("grad_dot", "trak", "iffim")
#: The weightings compared.
WEIGHTINGS = ("uniform", "learned")
#: ξ̄ target of the selector (Algorithm 1's default).
XI_THRESHOLD = 0.5
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
