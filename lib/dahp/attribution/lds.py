"""The linear datamodeling score (Definition 2.1 of the paper; spec: "LDS").

For each query, the Spearman rank correlation, across the ``M`` retrained models, between the
attribution summed over each model's training subset and the query's actual target under that
model. Computed for all queries at once (one matrix product, then ranks), it equals
``dattri.metric.lds`` on the same inputs; queries whose predicted or actual column is constant
have no correlation and are dropped from the mean, and the number dropped is reported.

Device: the one product with the scores (the subset sums, ``(M, n) @ (n, q)``) runs on
``device`` in float64 (NumPy on the CPU, as before; torch elsewhere); the ranks and correlations
of the resulting ``(M, q)`` matrix are computed on the CPU.

Book: "Data attribution and the LDS".
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy.stats import rankdata

from dahp.core.config import InvalidParameterError
from dahp.core.device import resolve_device

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


def subset_sums(scores: ArrayLike, subsets: ArrayLike, device: str | torch.device | None = None) -> np.ndarray:
    """``(M, n_queries)``: for each subset, the attribution summed over its training points (float64,
    formed on ``device``, returned as a NumPy array)."""
    device = resolve_device(device)
    if device.type != "cpu":
        return _subset_sums_torch(scores, subsets, device)
    scores = _numpy(scores).astype(np.float64)
    return membership_matrix(subsets, scores.shape[0]).numpy() @ scores


def membership_matrix(subsets: ArrayLike, n_train: int) -> torch.Tensor:
    """``(M, n_train)`` float64 0/1 matrix: row ``j`` marks the training points of subset ``j``."""
    index = torch.as_tensor(_numpy(subsets).astype(np.int64))
    return torch.zeros(index.shape[0], n_train, dtype=torch.float64).scatter_(1, index, 1.0)


def _subset_sums_torch(scores: ArrayLike, subsets: ArrayLike, device: torch.device) -> np.ndarray:
    """:func:`subset_sums` with torch on ``device`` (the same float64 sums, up to summation order)."""
    values = torch.as_tensor(scores).to(device, torch.float64)
    return (membership_matrix(subsets, values.shape[0]).to(device) @ values).cpu().numpy()


def columnwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b`` (NaN if constant)."""
    ra = rankdata(a, axis=0) - (a.shape[0] + 1) / 2
    rb = rankdata(b, axis=0) - (b.shape[0] + 1) / 2
    norm = np.sqrt((ra**2).sum(0) * (rb**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (ra * rb).sum(0) / norm, np.nan)


def lds(
    scores: ArrayLike, targets: ArrayLike, subsets: ArrayLike, device: str | torch.device | None = None
) -> LDSResult:
    """Linear datamodeling score of ``scores`` against retraining outcomes.

    Args:
        scores: ``(n_train, n_queries)`` attribution of each training point to each query.
        targets: ``(M, n_queries)`` the query targets under the ``M`` retrained models.
        subsets: ``(M, m)`` training indices each model was retrained on.
        device: where the subset sums are formed (see the module docstring).
    """
    device = resolve_device(device)
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
    sums = subset_sums(scores if device.type != "cpu" else scores_np, subsets_np, device)
    return lds_of_sums(sums, targets_np)


def lds_of_sums(sums: ArrayLike, targets: ArrayLike) -> LDSResult:
    """:func:`lds` from the subset sums ``(M, n_queries)`` already formed (e.g. by a scorer's
    :meth:`~dahp.attribution.spectral.Sweepable.summed`) and the targets ``(M, n_queries)``."""
    sums, targets = _numpy(sums).astype(np.float64), _numpy(targets).astype(np.float64)
    if sums.shape != targets.shape:
        raise InvalidParameterError("sums.shape", sums.shape, f"the targets' shape {targets.shape}")
    per_query = columnwise_spearman(sums, targets)
    valid = per_query[~np.isnan(per_query)]
    sem = float(valid.std(ddof=1) / np.sqrt(len(valid))) if len(valid) > 1 else float("nan")
    return LDSResult(
        per_query=per_query,
        mean=float(valid.mean()) if len(valid) else float("nan"),
        sem=sem,
        n_dropped=int(np.isnan(per_query).sum()),
    )
