"""λ-selection cases: the ξ rule and every baseline, judged by the LDS on the test queries (Fig 2, 3, 5, 6).

A *case* is one (setting, attributor, projection, TRAK ensemble, subset fraction α). Every
retraining-free rule of the registry (:data:`dahp.selection.rules.RULES`, under its registry name)
picks λ from what a user would have: the validation queries, the full-data model(s), the setting's
training recipe and the published default (:func:`case_rule_input`); the LDS that judges the picks
uses the test queries and the retrained models. The paper's pick is ``xi_grid_0.5``
(:data:`SELECTED`), the package's default ``median_xi_recipe`` (:data:`PACKAGE_DEFAULT`). Every
rule's pick gets its per-query test LDS, so the records (:class:`dahp.experiments.cases.SelectionCase`)
compare picks paired, query by query. Cases are cached whole, so Fig 2/3/5/6 and the removal table share them. Every
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
from dahp.attribution import dattri_bridge
from dahp.attribution.lds import lds_of_sums, membership_matrix
from dahp.attribution.scales import CASE_POINTS, case_grid
from dahp.attribution.spectral import SpectralFactors
from dahp.core.cache import Cache, default_cache
from dahp.core.config import GroundTruthConfig, InvalidParameterError
from dahp.core.device import resolve_device
from dahp.core.published import PUBLISHED_DEFAULTS
from dahp.core.results import _int_or_none, matches, read_json, write_json
from dahp.core.statistics import Estimate, mean_estimate, paired_difference, paired_ratio
from dahp.data.settings import Setting, get_setting
from dahp.selection import rules
from dahp.selection.algorithm import check_threshold, mean_xi, xi_bar_curve
from dahp.selection.rules import RecipeFacts, RuleInput
from dahp.selection.selector import SELECTABLE, SelectorResult, select_regularization
from dahp.training.ground_truth import ground_truth

#: Registry names of the spectrum-quantile rules (Fig 2 / Fig 3 draw them as grey lines).
QUANTILE_RULES = tuple(name for name, rule in rules.RULES.items() if rule.family == "spectrum")
#: Registry names of Algorithm 1 at the thresholds Fig 5 compares (0.4, 0.5, 0.6).
THRESHOLD_RULES = tuple(name for name, rule in rules.RULES.items() if rule.family == "xi_grid")

#: The cases of Fig 2, 3, 5 and 6: (setting, projection dimension); CIFAR-2 and MAESTRO need user data.
PAPER_CASES = (
    ("mnist_lr", None),
    ("mnist_lr", 2048),
    ("mnist_mlp", 512),
    ("mnist_mlp", 2048),
    ("cifar2_resnet9", 2048),
    ("maestro_mt", 2048),
)


def default_grid(setting: Setting, attributor: str, n_points: int = CASE_POINTS) -> list[float]:
    """The candidate λ of a case of ``setting``: :func:`dahp.attribution.scales.case_grid` (IFFIM:
    1e-6 .. 1e2 on the mean-loss scale; TRAK: the same span on its scale)."""
    if not (isinstance(n_points, int) and n_points >= 2):
        raise InvalidParameterError("n_points", n_points, "an integer >= 2")
    return case_grid(attributor, setting.data().n_train, setting.n_params(), n_points)


def case_rule_input(
    setting: Setting,
    attributor: str,
    members: Sequence[SpectralFactors],
    grid: Sequence[float],
    train_margins: np.ndarray | None = None,
) -> RuleInput:
    """What the rules see of a case: the validation-query factors, the grid, the setting's training
    recipe (:meth:`RecipeFacts.from_recipe`), the published default and, for TRAK, the training
    margins; no retrained model."""
    recipe = RecipeFacts.from_recipe(setting.recipe, setting.data().n_train, setting.n_params())
    return RuleInput(
        attributor,
        list(members),
        list(grid),
        recipe,
        PUBLISHED_DEFAULTS[attributor],
        train_margins=train_margins,
    )


#: Training points per batch of per-example gradients when a setting is run through the selector.
SELECTOR_TRAIN_BATCH = 500


def setting_selection(
    setting: Setting,
    attributor: str,
    proj_dim: int | None = None,
    ensemble_size: int | None = None,
    threshold: float = 0.5,
    cache: Cache | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> SelectorResult:
    """:func:`dahp.selection.selector.select_regularization` on a setting, as a user would call it on
    their own model: the setting's full-data model(s) as a dattri ``AttributionTask`` (TRAK: one
    checkpoint per ensemble member, margins as its training function), its training points and
    validation queries, the case grid (:func:`default_grid`) as candidates and the setting's recipe.
    No retraining; ``regularization`` is the package default's pick (``median_xi_recipe``)."""
    _check_attributor(attributor)
    check_threshold(threshold)
    params = selection_params(attributor, proj_dim, ensemble_size)
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    members = params.ensemble_size if attributor == "trak" else 1
    epoch = params.training_epoch or setting.recipe.epochs
    states = [attr.full_data_state(setting, k, epoch, cache, progress, device)[0] for k in range(members)]
    task = dattri_bridge.task(setting, states, "target" if attributor == "trak" else "loss", device)
    dtype = next(iter(states[0].values())).dtype
    train_loader, val_loader = dattri_bridge.loaders(setting, "val", dtype, train_batch=SELECTOR_TRAIN_BATCH)
    recipe = RecipeFacts.from_recipe(setting.recipe, setting.data().n_train, setting.n_params())
    candidates = default_grid(setting, attributor)
    return select_regularization(
        task,
        train_loader,
        val_loader,
        attributor,
        params.proj_dim,
        candidates,
        threshold,
        proj_seed=params.proj_seed,
        device=device,
        recipe=recipe,
        progress=progress,
    )


def selection_params(attributor: str, proj_dim: int | None, ensemble_size: int | None = None):
    """The attributor's default hyperparameters with the projection given (and TRAK's ensemble size)."""
    values = {"proj_dim": proj_dim}
    if attributor == "trak" and ensemble_size is not None:
        values["ensemble_size"] = ensemble_size
    return attr.make_params(attributor, **values)


def _check_attributor(attributor: str) -> None:
    if attributor not in SELECTABLE:
        raise InvalidParameterError("attributor", attributor, SELECTABLE)


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
    margins = (
        attr.train_margins(setting, len(validation.members), cache, progress, device) if attributor == "trak" else None
    )
    inp = case_rule_input(setting, attributor, validation.members, grid, margins)
    made = [rules.RULES[name](inp) for name in rules.retraining_free(inp)]
    xi_seconds = time.perf_counter() - started
    picks = {pick.rule: pick.regularization for pick in made}
    diagnoses = {pick.rule: pick.diagnosis for pick in made}

    def per_query(lam: float) -> np.ndarray:
        return lds_of_sums(summed.scores(lam), truth.targets("test")).per_query

    started = time.perf_counter()
    truth = ground_truth(setting, truth_config, cache, progress, device=device)
    summed = test.summed(membership_matrix(truth.subsets, setting.data().n_train))  # subset sums in closed form
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
        diagnoses=diagnoses,
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
        "diagnoses": case.diagnoses,
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
        diagnoses=dict(payload["diagnoses"]),
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
    _prefetch_projections(settings, cases, attributor, members, configs, n_points, cache, progress, device)
    built = []
    for config in configs:
        for setting, (_, proj_dim) in zip(settings, cases):
            key = _case_key(setting, attributor, proj_dim, members, config)
            reason = setting.data_not_supplied()
            if reason:
                built.append(SelectionCase(**key, status=reason))
                continue
            spec = _case_spec(setting, key, n_points, config)

            def compute(setting=setting, grid=spec["grid"], proj_dim=proj_dim, config=config) -> dict:
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
        "rules": "every retraining-free rule of dahp.selection.rules.RULES that can run (fitted rules left out)",
        "paper_rule": SELECTED,
        "package_default": PACKAGE_DEFAULT,
        "published_defaults": PUBLISHED_DEFAULTS,
    }
    return SelectionStudy(name, built, config, profile)


def _case_key(
    setting: Setting, attributor: str, proj_dim: int | None, members: int | None, config: GroundTruthConfig
) -> dict[str, Any]:
    """What names one case of a study (the fields of its :class:`SelectionCase` before the results)."""
    return {
        "setting": setting.name,
        "attributor": attributor,
        "proj_dim": proj_dim,
        "ensemble_size": members,
        "alpha": config.alpha,
    }


def _case_spec(setting: Setting, key: dict[str, Any], n_points: int, config: GroundTruthConfig) -> dict[str, Any]:
    """The cache key of one computed case: everything that determines it."""
    grid = default_grid(setting, attributor=key["attributor"], n_points=n_points)
    return {**setting.spec(), **key, "grid": grid, "ground_truth": config.as_dict()}


def _prefetch_projections(
    settings: Sequence[Setting],
    cases: Sequence[tuple[str, int | None]],
    attributor: str,
    members: int | None,
    configs: Sequence[GroundTruthConfig],
    n_points: int,
    cache: Cache,
    progress: bool,
    device: torch.device,
) -> None:
    """Project the gradients of every projection dimension a setting's uncomputed cases need in one pass.

    Cases of one setting that differ only in the projection share their per-example gradients; the
    projector's matrices are nested (:func:`dahp.attribution.features.project_nested`), so one pass per
    model and split fills the features of every dimension (each case then finds its own in the cache).
    """
    wanted: dict[str, tuple[Setting, set[int]]] = {}
    for config in configs:
        for setting, (_, proj_dim) in zip(settings, cases):
            if proj_dim is None or setting.data_not_supplied():
                continue
            key = _case_key(setting, attributor, proj_dim, members, config)
            if not cache.path("selection_case", _case_spec(setting, key, n_points, config)).exists():
                wanted.setdefault(setting.name, (setting, set()))[1].add(proj_dim)
    for setting, dims in wanted.values():
        if len(dims) < 2:
            continue  # nothing to share
        params = selection_params(attributor, max(dims), members)
        for split in ("val", "test"):
            attr.prefetch_features(setting, attributor, params, sorted(dims), split, cache, progress, device)


def case_scores(
    setting: Setting,
    attributor: str,
    proj_dim: int | None,
    rules_used: Sequence[str] = ("published_default", "xi_grid_0.5"),
    n_points: int = CASE_POINTS,
    ensemble_size: int | None = None,
    cache: Cache | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, tuple[float, torch.Tensor]]:
    """Test scores of ``attributor`` at the λ each registry rule of ``rules_used`` picks on the case's
    :func:`case_rule_input` (validation queries, :func:`default_grid`): rule -> (λ, scores)."""
    _check_attributor(attributor)
    free = [name for name in rules.RULES if not rules.RULES[name].retrains]
    unknown = [name for name in rules_used if name not in free]
    if unknown:
        raise InvalidParameterError("rules_used", unknown, free)
    device = resolve_device(device)
    params = selection_params(attributor, proj_dim, ensemble_size)
    validation = attr.scorer(setting, attributor, params, "val", cache, progress, device=device)
    margins = (
        attr.train_margins(setting, len(validation.members), cache, progress, device) if attributor == "trak" else None
    )
    inp = case_rule_input(setting, attributor, validation.members, default_grid(setting, attributor, n_points), margins)
    chosen = {name: rules.RULES[name](inp).regularization for name in rules_used}
    test = attr.scorer(setting, attributor, params, "test", cache, progress, device=device)
    return {rule: (lam, test.scores(lam)) for rule, lam in chosen.items()}


# --------------------------------------------------------------------------------------------
# The record


#: ξ̄ counts as non-decreasing when no step falls by more than this (rounding of float64 sums).
XI_MONOTONE_TOLERANCE = 1e-9


#: Columns that identify a selection case.
CASE_COLUMNS = ("setting", "attributor", "proj_dim", "ensemble_size", "alpha")


#: The paper's pick: Algorithm 1 at ξ̄ = 0.5 on the grid -- "the selected λ" of Fig 2 / Fig 3 and claim C8.
SELECTED = rules.PAPER_RULE
#: The package's default pick without retraining (what ``select_regularization`` returns).
PACKAGE_DEFAULT = rules.DEFAULT_NO_RETRAINING
#: The published default's registry name (the baseline of C8's gain).
PUBLISHED = "published_default"
#: C8: the paper's pick counts as close to the best from this fraction of the best LDS on.
CLOSE_TO_BEST = 0.9


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
    diagnoses: dict[str, str] = dataclasses.field(default_factory=dict)  #: rule -> its one-line diagnosis
    #: wall time of the retraining-free selection (validation features, factorization, ξ̄, every rule's pick)
    xi_seconds: float = float("nan")
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

    def gain(self, rule: str = SELECTED, over: str = PUBLISHED) -> Estimate:
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
        """One row per case that ran: the paper's pick (``xi_grid_0.5``) and the package default
        (``median_xi_recipe``) side by side with the best λ on the grid, each pick's LDS over the best
        and the paper pick's gain over the published default (all paired over queries)."""
        rows = []
        for c in self.ran:
            rows.append(
                {
                    "case": c.label,
                    "alpha": c.alpha,
                    f"λ {SELECTED}": c.regularization(SELECTED),
                    f"LDS {SELECTED}": c.lds(SELECTED).text(),
                    f"λ {PACKAGE_DEFAULT}": c.regularization(PACKAGE_DEFAULT),
                    f"LDS {PACKAGE_DEFAULT}": c.lds(PACKAGE_DEFAULT).text(),
                    "λ best": c.regularization("best"),
                    "LDS best": c.lds("best").text(),
                    f"{SELECTED} / best": c.ratio_to_best(SELECTED).text(2),
                    f"{PACKAGE_DEFAULT} / best": c.ratio_to_best(PACKAGE_DEFAULT).text(2),
                    f"{SELECTED} − {PUBLISHED}": c.gain(SELECTED, PUBLISHED).text(3),
                    f"LDS {PUBLISHED}": c.lds(PUBLISHED).text(),
                }
            )
        return pd.DataFrame(rows)

    def paper_rule_check(self, leave_out: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
        """Claim C8, per case run (headline keys, those in ``leave_out`` left out): the paper's pick's
        LDS over the best (``close``: at least :data:`CLOSE_TO_BEST`) and its gain over the published
        default (``above`` / ``below``: by more than two standard errors, paired over queries);
        ``holds`` when it is close and above."""
        found = {}
        for key, values in self.headline().items():
            if key in leave_out:
                continue
            ratio, gain = values["ratio_to_best"], values["gain_over_default"]
            close, above = ratio.value >= CLOSE_TO_BEST, gain.exceeds(0)
            found[key] = {
                "ratio_to_best": ratio,
                "gain_over_default": gain,
                "close": close,
                "above": above,
                "below": gain.below(0),
                "holds": close and above,
            }
        return found

    def rules_table(self) -> pd.DataFrame:
        """Per case and registry rule computed: λ, its LDS and the ratio of its LDS to the best (paired)."""
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
        """Per case: the paper's pick (``xi_grid_0.5``) over the best and its gain over the published default
        (both paired), the package default's pick and its ratio to the best, peaks, ξ̄ monotone."""
        return {
            c.label + (f", α={c.alpha}" if len({x.alpha for x in self.cases}) > 1 else ""): {
                "lambda_selected": c.regularization(SELECTED),
                "lds_selected": c.lds(SELECTED),
                "lambda_package_default": c.regularization(PACKAGE_DEFAULT),
                "lds_package_default": c.lds(PACKAGE_DEFAULT),
                "package_default_ratio_to_best": c.ratio_to_best(PACKAGE_DEFAULT),
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
                        "diagnosis": c.diagnoses.get(rule, ""),
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
        if "diagnosis" in picks and isinstance(pick.diagnosis, str):
            case.diagnoses[pick.rule] = pick.diagnosis
