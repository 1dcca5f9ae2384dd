"""Choosing λ without retraining: Algorithm 1 and the baselines it is compared with (spec: "Algorithm 1").

- :func:`select_on_grid` -- Algorithm 1: the candidate whose mean ξ over validation queries is
  closest to a threshold (0.5 by default);
- :func:`select_continuous` -- the crossing ``ξ̄(λ) = threshold`` found by bisection in ``log λ``
  (ξ̄ rises with λ, so no grid is needed);
- baselines that also need no retraining: an eigenvalue of the curvature at a fixed quantile
  (:func:`spectrum_quantile`), ``0.1 ×`` the mean eigenvalue (:func:`mean_eigenvalue_rule`), the
  attributor's published default, and the training-recipe rule ``λ = 1/(η_eff T)``
  (:func:`recipe_regularization`): gradient descent stopped after ``T`` steps of size ``η`` acts
  like a ridge penalty of that strength on the mean-loss scale.

Every λ here is on the scale of the attributor it is computed for.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from dahp.config import InvalidParameterError
from dahp.settings import Setting
from dahp.spectral import SpectralFactors
from dahp.surrogate import xi_curve


def check_threshold(threshold: float) -> None:
    """A ξ threshold lies strictly between 0 and 1."""
    if not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise InvalidParameterError("threshold", threshold, "a number in the open interval (0, 1)")


def mean_xi(members: Sequence[SpectralFactors], regularization: float) -> float:
    """ξ̄: ξ averaged over the queries of every member (queries without spectral weight skipped)."""
    return float(xi_bar_curve(members, [regularization])[0])


def xi_bar_curve(members: Sequence[SpectralFactors], regularizations: Sequence[float]) -> np.ndarray:
    """ξ̄ at every λ of a grid (the per-query weights are computed once per member)."""
    values = torch.cat([xi_curve(m, list(regularizations)) for m in members], dim=1)  # (λ, queries)
    return np.nanmean(values.numpy(), axis=1)


@dataclasses.dataclass(frozen=True)
class Selection:
    """A λ chosen by the ξ rule."""

    regularization: float  #: the selected λ
    xi_bar: float  #: ξ̄ at the selected λ
    threshold: float  #: the target value of ξ̄


def select_on_grid(xi_bar: Sequence[float], regularizations: Sequence[float], threshold: float = 0.5) -> Selection:
    """Algorithm 1: the candidate λ whose ξ̄ is closest to ``threshold`` (the smaller λ on a tie)."""
    check_threshold(threshold)
    if len(xi_bar) != len(regularizations) or not len(regularizations):
        raise InvalidParameterError("candidates", len(regularizations), f"a non-empty grid matching ξ̄ ({len(xi_bar)} values)")
    distance = np.abs(np.asarray(xi_bar, dtype=float) - threshold)
    best = int(np.argmin(distance))
    return Selection(float(regularizations[best]), float(xi_bar[best]), threshold)


def select_continuous(
    members: Sequence[SpectralFactors], threshold: float = 0.5, low: float | None = None, high: float | None = None,
    tolerance: float = 1e-3,
) -> Selection:
    """The λ where ξ̄ crosses ``threshold``, by bisection in ``log λ`` (to ``tolerance`` in log10 λ).

    The bracket defaults to ``[1e-8, 1e4] ×`` the largest eigenvalue. When ξ̄ is already above the
    threshold at the low end (or below it at the high end), that end is returned.
    """
    check_threshold(threshold)
    top = max(float(m.eigenvalues.max()) for m in members)
    lo = math.log10(low if low is not None else top * 1e-8)
    hi = math.log10(high if high is not None else top * 1e4)
    at_low, at_high = mean_xi(members, 10**lo), mean_xi(members, 10**hi)
    if at_low >= threshold:
        return Selection(10**lo, at_low, threshold)
    if at_high <= threshold:
        return Selection(10**hi, at_high, threshold)
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        if mean_xi(members, 10**mid) < threshold:
            lo = mid
        else:
            hi = mid
    lam = 10 ** ((lo + hi) / 2)
    return Selection(lam, mean_xi(members, lam), threshold)


@dataclasses.dataclass(frozen=True)
class XiSelection:
    """The ξ rule on a candidate grid and in between."""

    xi_bar: np.ndarray  #: ξ̄ at every candidate
    grid_pick: Selection  #: Algorithm 1 on the candidates
    continuous: Selection  #: the bisection crossing


def xi_selection(members: Sequence[SpectralFactors], candidates: Sequence[float], threshold: float = 0.5) -> XiSelection:
    """ξ̄ over ``candidates``, Algorithm 1's pick and the continuous crossing at ``threshold``."""
    curve = xi_bar_curve(members, candidates)
    return XiSelection(curve, select_on_grid(curve, candidates, threshold), select_continuous(members, threshold))


def spectrum_quantile(members: Sequence[SpectralFactors], quantile: float) -> float:
    """The eigenvalue at ``quantile`` of the non-zero spectrum, averaged over members."""
    if not 0 <= quantile <= 1:
        raise InvalidParameterError("quantile", quantile, "a number in [0, 1]")
    return float(np.mean([np.quantile(m.eigenvalues[m.eigenvalues > 0].numpy(), quantile) for m in members]))


def mean_eigenvalue_rule(members: Sequence[SpectralFactors], factor: float = 0.1) -> float:
    """``factor ×`` the mean eigenvalue of the curvature (trace / dimension), averaged over members.

    The mean runs over all ``d`` eigenvalues of the ``(d, d)`` curvature, the zeros included,
    so it equals trace / d -- the damping heuristic of Kronfluence-style libraries.
    """
    return float(np.mean([factor * m.eigenvalues.clamp_min(0).sum().item() / m.dimension for m in members]))


def recipe_regularization(setting: Setting, attributor: str, n_params: int | None = None) -> float:
    """The training-recipe rule ``λ = 1/(η_eff T)`` on the scale of ``attributor``.

    ``T`` is the number of SGD steps of the full-data training and ``η_eff = η/(1 - momentum)``
    (heavy-ball momentum multiplies the step of a steady gradient by ``1/(1 - momentum)``). This λ is
    on the scale of the mean-loss curvature (IFFIM, IF). TRAK's kernel sums ``n`` gradients scaled
    by ``1/sqrt(#parameters)``, so its λ is ``n / #parameters`` times that.
    """
    recipe = setting.recipe
    n_train = setting.data().n_train
    steps = recipe.epochs * recipe.steps_per_epoch(n_train)
    n_params = n_params if n_params is not None else setting.n_params()
    return recipe_lambda(attributor, recipe.lr, steps, recipe.momentum, n_train, n_params)


def recipe_lambda(attributor: str, lr: float, steps: int, momentum: float, n_train: int, n_params: int) -> float:
    """``(1 - momentum) / (lr · steps)`` on the scale of ``attributor`` (see :func:`recipe_regularization`)."""
    if not (lr > 0 and steps >= 1 and 0 <= momentum < 1):
        raise InvalidParameterError("lr, steps, momentum", (lr, steps, momentum), "lr > 0, steps >= 1, momentum in [0, 1)")
    lam = (1.0 - momentum) / (lr * steps)
    if attributor == "trak":
        return lam * n_train / n_params
    if attributor in ("iffim", "if_explicit", "if_cg", "if_lissa"):
        return lam
    raise InvalidParameterError("attributor", attributor, ["iffim", "trak", "if_explicit", "if_cg", "if_lissa"])


# --------------------------------------------------------------------------------------------
# One row of the selection table: the ξ pick against every baseline, judged by the LDS


PUBLISHED_DEFAULTS = {"iffim": 1e-5, "trak": 0.0}  #: IFFIM borrows IF explicit's default (same scale)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
THRESHOLDS = (0.4, 0.5, 0.6)


def selection_row(
    setting: Setting, attributor: str, regularizations: Sequence[float], proj_dim: int | None = None,
    ensemble_size: int | None = None, ground_truth_config=None, cache=None, progress: bool = True,
) -> dict:
    """ξ selection on the validation queries, judged by the LDS on the test queries.

    Returns one flat dict: the grid, the ξ̄ curve, the pick at each threshold (and the continuous
    0.5 crossing), the oracle (best LDS on the grid), the published default, the recipe rule,
    the spectrum-quantile and mean-eigenvalue baselines -- each with its λ and test LDS -- and
    the wall times of the ξ selection and of the grid search it replaces.
    """
    import time

    from dahp import attributors as attr
    from dahp.ground_truth import ground_truth
    from dahp.lds import lds

    if attributor not in PUBLISHED_DEFAULTS:
        raise InvalidParameterError("attributor", attributor, list(PUBLISHED_DEFAULTS))
    params = selection_params(attributor, proj_dim, ensemble_size)
    grid = [float(v) for v in regularizations]

    started = time.perf_counter()
    validation = attr.scorer(setting, attributor, params, "val", cache, progress)
    rule = xi_selection(validation.members, grid, 0.5)
    curve, continuous = rule.xi_bar, rule.continuous
    picks = {t: select_on_grid(curve, grid, t) for t in THRESHOLDS}
    xi_seconds = time.perf_counter() - started

    truth = ground_truth(setting, ground_truth_config, cache, progress)
    test = attr.scorer(setting, attributor, params, "test", cache, progress)

    def test_lds(lam: float) -> float:
        return lds(test.scores(lam), truth.targets("test"), truth.subsets).mean

    started = time.perf_counter()
    lds_curve = np.array([test_lds(lam) for lam in grid])
    grid_search_seconds = truth.train_seconds + time.perf_counter() - started
    best = int(np.nanargmax(lds_curve))

    row = {
        "setting": setting.name, "attributor": attributor, "proj_dim": proj_dim,
        "grid": json_list(grid), "xi_bar": json_list(curve), "lds_grid": json_list(lds_curve),
        "lambda_selected": picks[0.5].regularization, "xi_selected": picks[0.5].xi_bar,
        "lds_selected": lds_curve[grid.index(picks[0.5].regularization)],
        "lambda_best": grid[best], "lds_best": lds_curve[best],
        "lambda_default": PUBLISHED_DEFAULTS[attributor], "lds_default": test_lds(PUBLISHED_DEFAULTS[attributor]),
        "lambda_continuous": continuous.regularization, "lds_continuous": test_lds(continuous.regularization),
    }
    for t in (0.4, 0.6):
        row[f"lambda_xi{t}"] = picks[t].regularization
        row[f"lds_xi{t}"] = lds_curve[grid.index(picks[t].regularization)]
    recipe = recipe_regularization(setting, attributor)
    row.update({"lambda_recipe": recipe, "lds_recipe": test_lds(recipe), "xi_recipe": mean_xi(validation.members, recipe)})
    mean_rule = mean_eigenvalue_rule(validation.members)
    row.update({"lambda_mean_eig": mean_rule, "lds_mean_eig": test_lds(mean_rule)})
    for q in QUANTILES:
        lam = spectrum_quantile(validation.members, q)
        row.update({f"lambda_q{q}": lam, f"lds_q{q}": test_lds(lam)})
    row.update({"xi_seconds": xi_seconds, "grid_search_seconds": grid_search_seconds})
    return row


def selection_params(attributor: str, proj_dim: int | None, ensemble_size: int | None = None):
    """The hyperparameter record a selection runs on: the defaults, with the projection given and,
    for TRAK, the ensemble size when given."""
    from dahp import attributors as attr

    values = {"proj_dim": proj_dim}
    if attributor == "trak" and ensemble_size is not None:
        values["ensemble_size"] = ensemble_size
    return attr.make_params(attributor, **values)


#: The rows of ``data/results/selection.csv``: (setting, attributor, projection dimension).
SELECTION_ROWS = [
    ("mnist_lr", "iffim", None), ("mnist_lr", "iffim", 2048), ("mnist_lr", "trak", None), ("mnist_lr", "trak", 2048),
    ("mnist_mlp", "iffim", 512), ("mnist_mlp", "iffim", 2048), ("mnist_mlp", "trak", 512), ("mnist_mlp", "trak", 2048),
]


def default_grid(setting: Setting, attributor: str, n_points: int = 33) -> list[float]:
    """The candidate λ of the selection table: ``n_points`` log-spaced values over 8 decades
    (33: four per decade) on each attributor's scale.

    IFFIM: 1e-6 .. 1e2 (mean-loss scale, as in the spec's check). TRAK: the same span shifted by
    ``n / #parameters``, the factor between the two scales (see :func:`recipe_regularization`).
    """
    if not (isinstance(n_points, int) and n_points >= 2):
        raise InvalidParameterError("n_points", n_points, "an integer >= 2")
    grid = np.logspace(-6, 2, n_points)
    if attributor == "trak":
        grid = grid * setting.data().n_train / setting.n_params()
    return [float(v) for v in grid]


def json_list(values: Sequence[float]) -> str:
    """A compact JSON list for one CSV cell."""
    import json

    return json.dumps([float(f"{v:.6g}") for v in values])


def theorem_check(setting: Setting, attributor: str, regularizations: Sequence[float], proj_dim: int | None = None,
                  ground_truth_config=None, cache=None, progress: bool = True):
    """Theorem 4.3 on real data: per test query and consecutive λ pair, is ξ < ω̂, and does the LDS rise?

    ω̂ uses ``β̂`` from the same retrained models as the LDS. Returns a tidy table with one row per
    (query, λ_i): ``xi``, ``omega``, ``premise`` (ξ < ω̂), ``lds`` and ``lds_next`` (the query's
    Spearman LDS at λ_i and λ_{i+1}), ``lds_rises``.
    """
    import pandas as pd

    from dahp import attributors as attr
    from dahp.ground_truth import ground_truth
    from dahp.lds import lds
    from dahp.surrogate import beta_hat, omega, xi

    grid = sorted(float(v) for v in regularizations)
    if grid[0] <= 0:
        raise InvalidParameterError("regularizations", grid[0], "values > 0 (ω involves 1/λ)")
    truth = ground_truth(setting, ground_truth_config, cache, progress)
    params = attr.make_params(attributor, proj_dim=proj_dim)
    test = attr.scorer(setting, attributor, params, "test", cache, progress)
    if len(test.members) != 1 or test.train_weights is not None:
        raise InvalidParameterError("attributor", attributor, "a single-model attributor without weights (iffim)")
    factors = test.members[0]
    beta = beta_hat(truth.membership(setting.data().n_train), truth.targets("test"), truth.config.alpha)
    # the attribution τ = -B u is the negative of the direction ω measures; flip β to match
    beta = beta * factors.sign
    per_query = np.stack([lds(test.scores(lam), truth.targets("test"), truth.subsets).per_query for lam in grid])
    rows = []
    for i, lam in enumerate(grid[:-1]):
        xi_values, omega_values = xi(factors, lam).numpy(), omega(factors, beta, lam).numpy()
        for q in range(per_query.shape[1]):
            rows.append({"regularization": lam, "query": q, "xi": xi_values[q], "omega": omega_values[q],
                         "premise": bool(xi_values[q] < omega_values[q]), "lds": per_query[i, q],
                         "lds_next": per_query[i + 1, q], "lds_rises": bool(per_query[i + 1, q] > per_query[i, q])})
    return pd.DataFrame(rows)


def selection_table(
    cases: Sequence[tuple[str, int | None]], attributor: str, n_points: int, ensemble_size: int | None = None,
    ground_truth_config=None, cache=None, progress: bool = False,
):
    """:func:`selection_row` for each ``(setting, proj_dim)`` case (Fig 2, Fig 3, Fig 5, Fig 6).

    A case whose data is not supplied gets a row with only its ``status`` (the message saying what
    to put where) instead of stopping the others; computed rows have ``status`` ``"ok"``. Rows are
    cached by everything that determines them, so the pages that share a case compute it once
    (the wall-time columns are those of the first computation).
    """
    import pandas as pd

    from dahp.cache import default_cache
    from dahp.config import GroundTruthConfig
    from dahp.settings import MissingDataError, get_setting

    cache = default_cache() if cache is None else cache
    truth = ground_truth_config or GroundTruthConfig()

    settings = [get_setting(name) for name, _ in cases]  # unknown names fail before any compute
    rows = []
    for setting, (_, proj_dim) in zip(settings, cases):
        try:
            setting.check_data()
        except MissingDataError as missing:
            rows.append({"setting": setting.name, "attributor": attributor, "proj_dim": proj_dim,
                         "status": str(missing).splitlines()[0]})
            continue
        grid = default_grid(setting, attributor, n_points)
        key = {**setting.spec(), "attributor": attributor, "proj_dim": proj_dim, "grid": grid,
               "ensemble_size": ensemble_size, "ground_truth": truth.as_dict()}
        row = cache.get_or_compute("selection_row", key, lambda: _plain(selection_row(
            setting, attributor, grid, proj_dim, ensemble_size, truth, cache, progress)))
        rows.append({**row, "status": "ok"})
    table = pd.DataFrame(rows)
    table["proj_dim"] = table["proj_dim"].astype("Int64")
    return table


def _plain(row: dict) -> dict:
    """NumPy scalars as Python numbers (the cache stores plain containers only)."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}


def case_label(setting: str, proj_dim) -> str:
    """``mnist_mlp, p=512`` / ``mnist_lr, full gradients``."""
    import pandas as pd

    return f"{setting}, " + ("full gradients" if pd.isna(proj_dim) else f"p={int(proj_dim)}")
