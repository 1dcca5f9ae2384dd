"""λ-selection cases: the ξ rule and every baseline, judged by the LDS on the test queries (Fig 2, 3, 5, 6).

A *case* is one (setting, attributor, projection, TRAK ensemble, subset fraction α). The ξ rule
(:mod:`dahp.selection`) sees only the validation queries and the full-data model(s); the LDS that
judges it uses the test queries and the retrained models. Every rule's pick gets its per-query
test LDS, so the records (:class:`dahp.experiments.records.SelectionCase`) compare picks paired,
query by query. Cases are cached whole, so Fig 2/3/5/6 and the removal table share them. Every
computation runs on ``device`` (:func:`dahp.device.resolve_device`), which is not part of a
case's key: its numbers do not depend on it beyond rounding.

Book: "Fig 2", "Fig 3", "Fig 5", "Fig 6".
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from dahp import attributors as attr
from dahp.cache import Cache, default_cache
from dahp.config import GroundTruthConfig, InvalidParameterError
from dahp.device import resolve_device
from dahp.experiments.records import SelectionCase, SelectionStudy
from dahp.ground_truth import ground_truth
from dahp.lds import lds
from dahp.selection import (
    mean_eigenvalue_rule,
    mean_xi,
    recipe_regularization,
    select_continuous,
    select_on_grid,
    spectrum_quantile,
    xi_bar_curve,
)
from dahp.settings import Setting, get_setting

PUBLISHED_DEFAULTS = {"iffim": 1e-5, "trak": 0.0}  #: IFFIM borrows IF explicit's default (same scale)
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
    between the two scales (see :func:`dahp.selection.recipe_regularization`).
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
