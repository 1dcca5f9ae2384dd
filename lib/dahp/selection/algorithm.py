"""Choosing λ without retraining: Algorithm 1 and the baselines it is compared with (spec: "Algorithm 1").

- :func:`select_on_grid` -- Algorithm 1: the candidate whose mean ξ over validation queries is
  closest to a threshold (0.5 by default);
- :func:`select_continuous` -- the crossing ``ξ̄(λ) = threshold`` found by bisection in ``log λ``
  (ξ̄ rises with λ, so no grid is needed);
- baselines that also need no retraining: an eigenvalue of the curvature at a fixed quantile
  (:func:`spectrum_quantile`), ``0.1 ×`` the mean eigenvalue (:func:`mean_eigenvalue_rule`), the
  attributor's published default. The training-recipe rule is :func:`dahp.selection.rules.recipe_rule`
  (the package's only one: the effective step of SGD, momentum, Adam and schedules).

Every λ here is on the scale of the attributor it is computed for. These are the pure rules; the
experiments that judge them by the LDS are in :mod:`dahp.experiments.cases`.

Book: "The surrogate indicator ξ" (Algorithm 1), "Fig 2" and "Fig 3" (the baselines).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from dahp.attribution.scales import crossing_bracket
from dahp.attribution.spectral import SpectralFactors
from dahp.core.config import InvalidParameterError
from dahp.selection.surrogate import xi_curve


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
        raise InvalidParameterError(
            "candidates", len(regularizations), f"a non-empty grid matching ξ̄ ({len(xi_bar)} values)"
        )
    distance = np.abs(np.asarray(xi_bar, dtype=float) - threshold)
    best = int(np.argmin(distance))
    return Selection(float(regularizations[best]), float(xi_bar[best]), threshold)


def select_continuous(
    members: Sequence[SpectralFactors],
    threshold: float = 0.5,
    low: float | None = None,
    high: float | None = None,
    tolerance: float = 1e-3,
) -> Selection:
    """The λ where ξ̄ crosses ``threshold``, by bisection in ``log λ`` (to ``tolerance`` in log10 λ).

    The bracket defaults to ``[1e-8, 1e4] ×`` the largest eigenvalue. When ξ̄ is already above the
    threshold at the low end (or below it at the high end), that end is returned.
    """
    check_threshold(threshold)
    default_low, default_high = crossing_bracket(max(float(m.eigenvalues.max()) for m in members))
    lo = math.log10(low if low is not None else default_low)
    hi = math.log10(high if high is not None else default_high)
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


def xi_selection(
    members: Sequence[SpectralFactors], candidates: Sequence[float], threshold: float = 0.5
) -> XiSelection:
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
