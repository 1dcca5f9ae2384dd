"""The linear datamodeling score (Definition 2.1 of the paper; spec: "LDS").

For each query, the Spearman rank correlation, across the ``M`` retrained models, between the
attribution summed over each model's training subset and the query's actual target under that
model. Computed for all queries at once (one matrix product, then ranks), it equals
``dattri.metric.lds`` on the same inputs; queries whose predicted or actual column is constant
have no correlation and are dropped from the mean, and the number dropped is reported.

Book: "Data attribution and the LDS".
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy.stats import rankdata

from dahp.config import InvalidParameterError

ArrayLike = np.ndarray | torch.Tensor


@dataclasses.dataclass(frozen=True)
class LDSResult:
    """Per-query LDS and its summary."""

    per_query: np.ndarray  #: ``(n_queries,)`` Spearman correlation per query (NaN where undefined)
    mean: float  #: mean over the queries with a defined correlation
    sem: float  #: standard error of that mean
    n_dropped: int  #: queries left out of the mean because a column was constant

    def __str__(self) -> str:
        dropped = f", {self.n_dropped} dropped" if self.n_dropped else ""
        return f"LDS {self.mean:.4f} ± {self.sem:.4f} (n={len(self.per_query) - self.n_dropped}{dropped})"


def _numpy(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def subset_sums(scores: ArrayLike, subsets: ArrayLike) -> np.ndarray:
    """``(M, n_queries)``: for each subset, the attribution summed over its training points."""
    scores, subsets = _numpy(scores).astype(np.float64), _numpy(subsets)
    membership = np.zeros((subsets.shape[0], scores.shape[0]))
    np.put_along_axis(membership, subsets.astype(np.int64), 1.0, axis=1)
    return membership @ scores


def columnwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b`` (NaN if constant)."""
    ra = rankdata(a, axis=0) - (a.shape[0] + 1) / 2
    rb = rankdata(b, axis=0) - (b.shape[0] + 1) / 2
    norm = np.sqrt((ra**2).sum(0) * (rb**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (ra * rb).sum(0) / norm, np.nan)


def lds(scores: ArrayLike, targets: ArrayLike, subsets: ArrayLike) -> LDSResult:
    """Linear datamodeling score of ``scores`` against retraining outcomes.

    Args:
        scores: ``(n_train, n_queries)`` attribution of each training point to each query.
        targets: ``(M, n_queries)`` the query targets under the ``M`` retrained models.
        subsets: ``(M, m)`` training indices each model was retrained on.
    """
    scores_np, targets_np, subsets_np = _numpy(scores), _numpy(targets), _numpy(subsets)
    if scores_np.ndim != 2 or targets_np.ndim != 2 or scores_np.shape[1] != targets_np.shape[1]:
        raise InvalidParameterError(
            "scores/targets shapes",
            (scores_np.shape, targets_np.shape),
            "scores (n_train, n_queries) and targets (M, n_queries) with the same n_queries",
        )
    if subsets_np.shape[0] != targets_np.shape[0] or targets_np.shape[0] < 2:
        raise InvalidParameterError(
            "subsets.shape[0]", subsets_np.shape[0], f"the number of target rows M={targets_np.shape[0]} (M >= 2)"
        )
    per_query = columnwise_spearman(subset_sums(scores_np, subsets_np), targets_np.astype(np.float64))
    valid = per_query[~np.isnan(per_query)]
    sem = float(valid.std(ddof=1) / np.sqrt(len(valid))) if len(valid) > 1 else float("nan")
    return LDSResult(
        per_query=per_query,
        mean=float(valid.mean()) if len(valid) else float("nan"),
        sem=sem,
        n_dropped=int(np.isnan(per_query).sum()),
    )
