"""Numbers with their uncertainty: a mean with its standard error, and paired comparisons.

Two numbers measured on the same queries are compared *paired*, query by query
(:func:`paired_difference`, :func:`paired_ratio`), which is far tighter than comparing two means
with their own standard errors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dahp.core.config import InvalidParameterError

#: A difference counts as established when it exceeds this many standard errors.
SIGNIFICANCE_SE = 2.0


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A measured number and its standard error (NaN when it has none)."""

    value: float
    se: float = float("nan")

    def exceeds(self, threshold: float = 0.0) -> bool:
        """True when the value is above ``threshold`` by more than :data:`SIGNIFICANCE_SE` standard errors."""
        se = 0.0 if math.isnan(self.se) else self.se
        return self.value - SIGNIFICANCE_SE * se > threshold

    def below(self, threshold: float = 0.0) -> bool:
        """True when the value is below ``threshold`` by more than :data:`SIGNIFICANCE_SE` standard errors."""
        se = 0.0 if math.isnan(self.se) else self.se
        return self.value + SIGNIFICANCE_SE * se < threshold

    def text(self, digits: int = 3) -> str:
        """``0.123 ± 0.004`` (the ± part left out when there is no standard error)."""
        if math.isnan(self.se):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} ± {self.se:.{digits}f}"

    def as_dict(self) -> dict[str, float]:
        """``{"value": ..., "se": ...}`` for the JSON beside a record."""
        return {"value": float(self.value), "se": float(self.se)}


def mean_estimate(values: Sequence[float]) -> Estimate:
    """Mean and its standard error over the finite entries of ``values``."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return Estimate(float("nan"))
    se = float(finite.std(ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else float("nan")
    return Estimate(float(finite.mean()), se)


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise InvalidParameterError("paired values", (a.shape, b.shape), "two arrays of the same shape")
    both = np.isfinite(a) & np.isfinite(b)
    return a[both], b[both]


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """Mean of ``a - b`` over the queries (or seeds) where both are defined, with its standard error."""
    a, b = _paired(a, b)
    return mean_estimate(a - b)


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> Estimate:
    """``mean(numerator) / mean(denominator)`` over the paired entries, standard error by the delta method
    (with the covariance of the pairs)."""
    a, b = _paired(numerator, denominator)
    n = len(a)
    if n < 2 or b.mean() == 0:
        return Estimate(float(a.mean() / b.mean()) if n and b.mean() else float("nan"))
    ma, mb = a.mean(), b.mean()
    ratio = ma / mb
    cov = np.cov(a, b, ddof=1) / n
    variance = (cov[0, 0] / mb**2) - 2 * ma * cov[0, 1] / mb**3 + ma**2 * cov[1, 1] / mb**4
    return Estimate(float(ratio), float(math.sqrt(max(variance, 0.0))))


#: LDS / best at or above this counts as a success of a rule on a problem (issue 13's target).
GOOD_FRACTION = 0.95


def fraction_summary(values: Sequence[float]) -> dict[str, Any]:
    """Worst, 10th percentile, median of LDS / best, how many reach :data:`GOOD_FRACTION`, and of how many.

    A NaN (no defined LDS at the pick) counts as a failure and as the worst value.
    """
    array = np.asarray(values, dtype=float)
    if not len(array):
        return {"worst": float("nan"), "p10": float("nan"), "median": float("nan"), "count_ge_095": 0, "n": 0}
    filled = np.where(np.isfinite(array), array, -np.inf)
    finite = np.where(np.isfinite(array), array, np.nan)
    return {
        "worst": float(filled.min()) if np.isfinite(filled.min()) else float("nan"),
        "p10": float(np.nanpercentile(finite, 10)) if np.isfinite(finite).any() else float("nan"),
        "median": float(np.nanmedian(finite)) if np.isfinite(finite).any() else float("nan"),
        "count_ge_095": int((filled >= GOOD_FRACTION).sum()),
        "n": len(array),
    }


# --------------------------------------------------------------------------------------------
# Verdicts on a claim: the words a page and the reproduction status both use

HOLDS, PARTLY, FAILS, NOT_RUN = "holds", "holds in part", "does not hold", "not run here"
VERDICTS = (HOLDS, PARTLY, FAILS, NOT_RUN)


def share_verdict(checks: Sequence[bool]) -> str:
    """holds when every check passes, in part when some do, does not hold when none do (not run: no check)."""
    if not checks:
        return NOT_RUN
    return HOLDS if all(checks) else PARTLY if any(checks) else FAILS
