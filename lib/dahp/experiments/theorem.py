"""Theorem 4.3 (ξ < ω ⇒ the Population Pearson LDS rises with λ), checked twice.

On *planted* problems (:func:`dahp.surrogate.planted_problem`) the retraining effects β are exact,
so the check verifies our algebra of ξ, ω and the exact condition. On *real* data β must be
estimated from the retrained models (β̂, :func:`dahp.surrogate.beta_hat`); whether the premise ever
holds there is itself a finding. The real check's retraining and attribution run on ``device``
(:func:`dahp.device.resolve_device`); the planted problems are tiny and stay on the CPU.

Book: "Theory check".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from dahp import attributors as attr
from dahp.cache import Cache
from dahp.config import GroundTruthConfig, InvalidParameterError
from dahp.device import resolve_device
from dahp.experiments.records import TheoremRecord
from dahp.ground_truth import ground_truth
from dahp.lds import lds
from dahp.settings import Setting
from dahp.surrogate import beta_hat, omega, planted_problem, theorem_rows, xi


def planted_check(n_problems: int, regularizations: Sequence[float], seed: int = 0) -> pd.DataFrame:
    """:func:`dahp.surrogate.theorem_rows` on ``n_problems`` planted problems, one row per (problem, λ, query)."""
    return pd.DataFrame(
        [
            {**row, "problem": k}
            for k in range(n_problems)
            for row in theorem_rows(*planted_problem(seed + k)[:2], list(regularizations))
        ]
    )


def attribution_aligned_beta(factors, beta: np.ndarray):
    """β̂ in the direction ω measures: the attribution is ``sign · L diag(1/(e+λ)) R`` and ω is defined for
    ``+B u``, so an influence function (sign −1) has its β̂ flipped to keep ω's sign meaningful."""
    return beta * factors.sign


def real_check(
    setting: Setting,
    attributor: str,
    regularizations: Sequence[float],
    proj_dim: int | None = None,
    ground_truth_config: GroundTruthConfig | None = None,
    cache: Cache | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """Per test query and consecutive λ pair: is ξ < ω̂, and does the query's LDS rise?

    ω̂ uses β̂ from the same retrained models as the LDS. One row per (query, λ_i): ``xi``,
    ``omega``, ``premise`` (ξ < ω̂), ``lds`` and ``lds_next`` (the query's Spearman LDS at λ_i and
    λ_{i+1}), ``lds_rises``.
    """
    grid = sorted(float(v) for v in regularizations)
    if grid[0] <= 0:
        raise InvalidParameterError("regularizations", grid[0], "values > 0 (ω involves 1/λ)")
    params = attr.make_params(attributor, proj_dim=proj_dim)
    if attributor != "iffim":
        raise InvalidParameterError("attributor", attributor, "'iffim' (a single model without training-point weights)")
    device = resolve_device(device)
    truth = ground_truth(setting, ground_truth_config, cache, progress, device=device)
    test = attr.scorer(setting, attributor, params, "test", cache, progress, device=device)
    factors = test.members[0]
    beta = beta_hat(truth.membership(setting.data().n_train), truth.targets("test"), truth.config.alpha)
    beta = attribution_aligned_beta(factors, beta)
    per_query = np.stack(
        [lds(test.scores(lam), truth.targets("test"), truth.subsets, device=device).per_query for lam in grid]
    )
    rows = []
    for i, lam in enumerate(grid[:-1]):
        xi_values, omega_values = xi(factors, lam).numpy(), omega(factors, beta, lam).numpy()
        for q in range(per_query.shape[1]):
            rows.append(
                {
                    "regularization": lam,
                    "query": q,
                    "xi": xi_values[q],
                    "omega": omega_values[q],
                    "premise": bool(xi_values[q] < omega_values[q]),
                    "lds": per_query[i, q],
                    "lds_next": per_query[i + 1, q],
                    "lds_rises": bool(per_query[i + 1, q] > per_query[i, q]),
                }
            )
    return pd.DataFrame(rows)


def theorem_check(
    setting: Setting | None,
    n_planted: int,
    planted_regularizations: Sequence[float],
    real_regularizations: Sequence[float],
    ground_truth_config: GroundTruthConfig | None = None,
    seed: int = 0,
    cache: Cache | None = None,
    progress: bool = True,
    profile: str | None = None,
    device: str | torch.device | None = None,
) -> TheoremRecord:
    """Both checks as one record (the real one only when ``setting`` is given, run on ``device``)."""
    device = resolve_device(device)
    planted = planted_check(n_planted, planted_regularizations, seed)
    real = (
        None
        if setting is None
        else real_check(setting, "iffim", real_regularizations, None, ground_truth_config, cache, progress, device)
    )
    return TheoremRecord(planted, real, None if setting is None else setting.name, profile)
