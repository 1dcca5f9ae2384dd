"""Theorem 4.3 (ξ < ω ⇒ the Population Pearson LDS rises with λ), checked twice.

On *planted* problems (:func:`dahp.selection.surrogate.planted_problem`) the retraining effects β are exact,
so the check verifies our algebra of ξ, ω and the exact condition. On *real* data β must be
estimated from the retrained models (β̂, :func:`dahp.selection.surrogate.beta_hat`); whether the premise ever
holds there is itself a finding. The real check's retraining and attribution run on ``device``
(:func:`dahp.core.device.resolve_device`); the planted problems are tiny and stay on the CPU.

Book: "Theory check".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dahp.attribution import attributors as attr
from dahp.attribution.lds import lds_of_sums, membership_matrix
from dahp.core.cache import Cache
from dahp.core.config import GroundTruthConfig, InvalidParameterError
from dahp.core.device import resolve_device
from dahp.core.results import read_json, write_json
from dahp.core.statistics import FAILS, HOLDS, NOT_RUN, PARTLY
from dahp.data.settings import Setting
from dahp.selection.surrogate import beta_hat, omega, planted_problem, theorem_rows, xi
from dahp.training.ground_truth import ground_truth


def planted_check(n_problems: int, regularizations: Sequence[float], seed: int = 0) -> pd.DataFrame:
    """:func:`dahp.selection.surrogate.theorem_rows` on ``n_problems`` planted problems, one row per (problem, λ, query)."""
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
    summed = test.summed(membership_matrix(truth.subsets, setting.data().n_train))  # subset sums in closed form
    per_query = np.stack([lds_of_sums(summed.scores(lam), truth.targets("test")).per_query for lam in grid])
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


# --------------------------------------------------------------------------------------------
# The record

#: C6: the rule behind :meth:`TheoremRecord.verdict`.
THEOREM_RULE = (
    "planted problems (exact β): every triple with ξ<ω has a rising LDS, else the code is wrong; "
    "real data (β̂ from retraining): share of premise pairs whose LDS rises — all: holds, most: in part"
)


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

    def real_by_lambda(self) -> pd.DataFrame:
        """The real-data check per λ (index): mean ξ, mean ω̂, and the shares of queries that meet the premise
        and whose LDS rises."""
        if self.real is None:
            raise InvalidParameterError("real", None, "a theorem record with its real-data check")
        return self.real.groupby("regularization").agg(
            mean_xi=("xi", "mean"),
            mean_omega=("omega", "mean"),
            premise_share=("premise", "mean"),
            lds_rises_share=("lds_rises", "mean"),
        )

    def verdict(self) -> tuple[str, str]:
        """C6 (:data:`THEOREM_RULE`): the verdict, and why it could not be judged (empty when it could).

        A planted check that fails is a failure whatever the real data say: β is exact there, so it
        tests our algebra. On real data the check is vacuous when no (query, λ) pair meets the premise.
        """
        planted, real = self.planted_summary(), self.real_summary()
        if planted["premise"] == 0 or planted["premise_and_rises"] < planted["premise"]:
            return FAILS, "the planted check failed"
        if real is None:
            return NOT_RUN, "real-data check not run"
        if real["premise"] == 0:
            return NOT_RUN, f"vacuous: premise held for 0 of {real['pairs']} pairs on real data"
        share = real["premise_and_rises"] / real["premise"]
        return (HOLDS if share == 1 else PARTLY if share > 0.5 else FAILS), ""

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
