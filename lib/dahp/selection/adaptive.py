"""The adaptive budget search (issue 21): retrained models' validation-query LDS over the whole λ grid,
smoothed in log λ, the retraining-free estimates as a soft prior, retrainings added one at a time
while the pick is uncertain.

Why each part:

- **the whole grid**: a span built from the retraining-free estimates can exclude the best λ by more
  than a decade (issue 21's Adam-trained MLP); searching every candidate is never worse than the plain
  search by construction of the search space;
- **smoothing in log λ**: with a few retrained models the per-query correlation is coarse (over 3
  models a Spearman correlation takes four values) and its mean over queries jumps from one grid
  point to the next; the LDS curve itself is smooth in log λ, so a Gaussian kernel of
  :data:`SMOOTH_DECADES` over neighbouring candidates averages the noise without moving the peak;
- **Pearson on the subset sums** (:data:`STATISTIC`) where the models are few: it uses the sizes of the
  retrained models' differences, not only their order, and is continuous in λ;
- **a soft prior**: outside the span of the retraining-free estimates a candidate loses
  :data:`PRIOR_PENALTY` of LDS per decade -- a tie-breaker between nearly equal candidates, never a
  hard bound;
- **adaptive retraining**: start with :data:`START_MODELS`; stop when the pick is stable (the pick of
  one model fewer lies within one grid step) and the bootstrap over validation queries puts the
  pick's LDS at :data:`STOP_RATIO` of the best candidate's or above at its lower
  :data:`INTERVAL` end; else retrain one more model, never beyond the stated maximum.

The result states the expected ratio of the pick's validation LDS to the best candidate's, with an
interval, from a bootstrap over the retrained models and the validation queries together
(:func:`model_and_query_interval`); the stopping rule's bootstrap over queries alone is narrower and
was over-confident (on the small suite it covered the test ratio on 15 of 21 development cases).

Designed and tuned on the development families' validation queries only (see
:data:`dahp.experiments.suite.SEALED_FAMILIES`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from dahp.core.config import InvalidParameterError

#: Retrained models the search starts with (two give a correlation of ±1 only).
START_MODELS = 3
#: The default most retrained models the search may use.
MAX_MODELS = 8
#: Standard deviation, in decades of λ, of the Gaussian kernel that smooths the LDS over candidates.
SMOOTH_DECADES = 0.25
#: LDS lost per decade outside the span of the retraining-free estimates (a tie-breaker).
PRIOR_PENALTY = 0.005
#: Stop retraining once the lower end of the interval of LDS(pick) / LDS(best candidate) reaches this.
STOP_RATIO = 0.97
#: The interval's coverage (bootstrap percentiles over validation queries).
INTERVAL = 0.9
#: Bootstrap resamples of the validation queries.
BOOTSTRAP = 200
#: The per-query correlation of subset sums with retrained outputs the search maximizes.
STATISTIC = "pearson"
STATISTICS = ("pearson", "spearman")

#: ``(models, lambdas) -> (sums, targets)``: ``sums`` ``(len(lambdas), models, q)`` the attribution
#: summed over each of the first ``models`` retrained models' subsets, ``targets`` ``(models, q)`` those
#: models' outputs on the validation queries.
ValidationSums = Callable[[int, Sequence[float]], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class AdaptivePick:
    """What the adaptive search found."""

    index: int  #: the pick's index in the grid
    regularization: float
    models: int  #: retrained models used
    ratio: float  #: expected validation LDS(pick) / LDS(best candidate) (bootstrap mean, models and queries)
    ratio_interval: tuple[float, float]  #: its :data:`INTERVAL` bootstrap interval (models and queries)
    curve: np.ndarray  #: the smoothed validation statistic at every candidate, with the last models
    history: tuple[int, ...]  #: the pick's grid index after each number of models tried


def _columnwise_pearson(sums: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``(G, q)``: per candidate and query, Pearson's correlation over models (NaN where constant)."""
    a = sums - sums.mean(1, keepdims=True)
    b = targets - targets.mean(0, keepdims=True)
    norm = np.sqrt((a**2).sum(1) * (b**2).sum(0)[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a * b[None]).sum(1) / norm
    out[~np.isfinite(out)] = np.nan
    return out


def _columnwise_spearman(sums: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``(G, q)`` per candidate and query, Spearman's correlation over models (Pearson of the ranks)."""
    from_ranks = np.argsort(np.argsort(sums, axis=1), axis=1).astype(float)
    target_ranks = np.argsort(np.argsort(targets, axis=0), axis=0).astype(float)
    return _columnwise_pearson(from_ranks, target_ranks)


def per_query_statistic(sums: np.ndarray, targets: np.ndarray, statistic: str = STATISTIC) -> np.ndarray:
    """``(G, q)`` the per-query correlation at every candidate (:data:`STATISTICS`)."""
    if statistic not in STATISTICS:
        raise InvalidParameterError("statistic", statistic, STATISTICS)
    if statistic == "pearson":
        return _columnwise_pearson(sums, targets)
    return _columnwise_spearman(sums, targets)


def smoothing_kernel(grid: Sequence[float], decades: float = SMOOTH_DECADES) -> np.ndarray:
    """``(G, G)`` Gaussian weights in log10 λ (rows: the candidate smoothed; λ = 0 treated as the
    smallest positive candidate a decade lower)."""
    values = np.asarray(grid, dtype=float)
    positive = values[values > 0]
    floor = positive.min() / 10 if len(positive) else 1.0
    logs = np.log10(np.where(values > 0, values, floor))
    if decades <= 0:
        return np.eye(len(values))
    return np.exp(-0.5 * ((logs[:, None] - logs[None, :]) / decades) ** 2)


def smooth(per_query: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``(G, q)`` the kernel-weighted mean over candidates, per query, ignoring undefined (NaN) entries."""
    defined = np.isfinite(per_query)
    values = np.where(defined, per_query, 0.0)
    weight = kernel @ defined.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (kernel @ values) / weight


def prior_penalty(grid: Sequence[float], estimates: Sequence[float], per_decade: float = PRIOR_PENALTY) -> np.ndarray:
    """``(G,)`` the penalty of each candidate: ``per_decade`` times its distance, in decades, outside
    the span of the retraining-free ``estimates`` (zero inside; zero everywhere without estimates)."""
    values = np.asarray(grid, dtype=float)
    positive = [e for e in estimates if e > 0 and math.isfinite(e)]
    if not positive:
        return np.zeros(len(values))
    low, high = math.log10(min(positive)), math.log10(max(positive))
    logs = np.log10(np.maximum(values, 1e-300))
    outside = np.maximum(low - logs, 0.0) + np.maximum(logs - high, 0.0)
    return per_decade * outside


def _score(smoothed: np.ndarray, columns: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(smoothed[:, columns], axis=1)
    return np.where(np.isfinite(mean), mean - penalty, -np.inf)


def ratio_interval(
    per_query: np.ndarray, index: int, penalty: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Bootstrap over queries of LDS(candidate ``index``) / LDS(the best candidate of the resample),
    both on the (smoothed) per-query statistic: its mean and :data:`INTERVAL` percentile interval."""
    rng = np.random.default_rng(seed)
    q = per_query.shape[1]
    ratios = []
    for _ in range(resamples):
        columns = rng.integers(0, q, size=q)
        with np.errstate(invalid="ignore"):
            ratios.append(_ratio_to_best(np.nanmean(per_query[:, columns], axis=1), index, penalty))
    return _mean_and_interval(ratios)


def _ratio_to_best(mean: np.ndarray, index: int, penalty: np.ndarray) -> float | None:
    """One resample's LDS(candidate ``index``) / LDS(its best-scoring candidate), capped at 1 (0 for a
    non-positive pick); None where the resample has no usable best or pick."""
    score = np.where(np.isfinite(mean), mean - penalty, -np.inf)
    if not np.any(np.isfinite(score)):
        return None
    top = mean[int(np.argmax(score))]
    if not (top > 0 and np.isfinite(mean[index])):
        return None
    return min(mean[index] / top, 1.0) if mean[index] > 0 else 0.0


def _mean_and_interval(ratios: Sequence[float | None]) -> tuple[float, tuple[float, float]]:
    """The mean and :data:`INTERVAL` percentile interval of the usable bootstrap ratios (NaN without any)."""
    values = np.asarray([r for r in ratios if r is not None])
    if not len(values):
        return math.nan, (math.nan, math.nan)
    tail = (1 - INTERVAL) / 2 * 100
    return float(values.mean()), (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))


def model_and_query_interval(
    sums: np.ndarray,
    targets: np.ndarray,
    index: int,
    kernel: np.ndarray,
    penalty: np.ndarray,
    statistic: str = STATISTIC,
    resamples: int = BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """Bootstrap of LDS(candidate ``index``) / LDS(the resample's best candidate) over the retrained
    models *and* the validation queries: its mean and :data:`INTERVAL` percentile interval.

    With a few retrained models, which models were drawn moves the validation curve more than which
    queries were; :func:`ratio_interval` (queries only) leaves that out and is over-confident. Each
    resample here draws the models (with replacement, at least two distinct) and the queries, forms the
    per-query statistic from those models' subset sums, smooths it and scores it as the search does.
    """
    rng = np.random.default_rng(seed)
    models, q = targets.shape
    ratios = []
    for _ in range(resamples):
        rows = rng.integers(0, models, size=models)
        if len(np.unique(rows)) < 2:
            continue
        columns = rng.integers(0, q, size=q)
        per_query = per_query_statistic(sums[:, rows][:, :, columns], targets[rows][:, columns], statistic)
        with np.errstate(invalid="ignore"):
            ratios.append(_ratio_to_best(np.nanmean(smooth(per_query, kernel), axis=1), index, penalty))
    return _mean_and_interval(ratios)


def adaptive_search(
    validation_sums: ValidationSums,
    grid: Sequence[float],
    estimates: Sequence[float] = (),
    max_models: int = MAX_MODELS,
    start_models: int = START_MODELS,
    statistic: str = STATISTIC,
    smooth_decades: float = SMOOTH_DECADES,
    prior_per_decade: float = PRIOR_PENALTY,
    stop_ratio: float = STOP_RATIO,
) -> AdaptivePick:
    """The adaptive search over ``grid`` (see the module's docstring); ``validation_sums`` is called
    with at most ``max_models`` models, and the models are used in order (a caller retrains lazily)."""
    if not (isinstance(max_models, int) and max_models >= 2):
        raise InvalidParameterError("max_models", max_models, "an integer >= 2")
    if not (isinstance(start_models, int) and 2 <= start_models):
        raise InvalidParameterError("start_models", start_models, "an integer >= 2")
    if statistic not in STATISTICS:
        raise InvalidParameterError("statistic", statistic, STATISTICS)
    start = min(start_models, max_models)
    kernel = smoothing_kernel(grid, smooth_decades)
    penalty = prior_penalty(grid, estimates, prior_per_decade)
    history: list[int] = []
    models = start
    while True:
        sums, targets = validation_sums(models, list(grid))
        smoothed = smooth(per_query_statistic(np.asarray(sums), np.asarray(targets), statistic), kernel)
        score = _score(smoothed, np.arange(smoothed.shape[1]), penalty)
        index = int(np.argmax(score)) if np.any(np.isfinite(score)) else 0
        history.append(index)
        ratio, interval = ratio_interval(smoothed, index, penalty)
        stable = len(history) >= 2 and abs(history[-1] - history[-2]) <= 1
        sure = math.isfinite(interval[0]) and interval[0] >= stop_ratio
        if (stable and sure) or models >= max_models:
            curve = np.nanmean(smoothed, axis=1) if smoothed.size else np.full(len(grid), np.nan)
            # the stated interval also resamples the models (the stopping rule above, on queries only,
            # decides when to stop; what the result claims about its pick includes the models' noise)
            ratio, interval = model_and_query_interval(
                np.asarray(sums), np.asarray(targets), index, kernel, penalty, statistic
            )
            return AdaptivePick(index, float(grid[index]), models, ratio, interval, curve, tuple(history))
        models += 1
