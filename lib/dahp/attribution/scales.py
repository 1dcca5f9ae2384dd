"""The λ scale of every attributor and every λ grid of the package, in one place.

λ is added to a curvature, and each attributor builds its curvature at its own scale:

- IFFIM (and the influence functions): the empirical Fisher of the *mean* training loss,
  ``(1/n) Σ_i ∇L_i ∇L_iᵀ`` -- unit feature scale, Gram normalisation ``1/n`` (:func:`gram_scale`);
- TRAK: ``ΦᵀΦ`` *summed* over the training points, with margin-gradient features divided by
  ``sqrt(#parameters)`` as dattri's ``TRAKAttributor`` does (:func:`feature_scale`), Gram
  normalisation 1.

So a λ on the mean-loss scale becomes TRAK's by the factor ``n / #parameters``
(:func:`trak_per_mean_loss`, :func:`from_mean_loss`). The grids: the cases' 33 points over eight
decades (:func:`case_grid`), the selector's default candidates (:func:`selector_grid`), the
robustness suite's dense grid (:func:`suite_grid`) and the fine grid of ``xi_max_slope``
(:func:`fine_grid`); the bisection bracket of the ξ̄ crossing (:data:`CROSSING_BRACKET`).

Book: "Fig 2", "Fig 3" (the grids), "The selector on your own model" (the scales).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dahp.core.config import InvalidParameterError

#: Attributors whose λ is on the mean-loss scale (the Fisher or Hessian of the mean training loss).
MEAN_LOSS_ATTRIBUTORS = ("iffim", "if_explicit", "if_cg", "if_lissa")
#: Attributors whose λ scale this module knows.
SCALED_ATTRIBUTORS = (*MEAN_LOSS_ATTRIBUTORS, "trak")
#: Gradient-feature kinds (:data:`dahp.attribution.features.FEATURE_KINDS`) and their attributor scale.
_TRAK_KINDS = ("trak",)


def _check_attributor(attributor: str) -> None:
    if attributor not in SCALED_ATTRIBUTORS:
        raise InvalidParameterError("attributor", attributor, SCALED_ATTRIBUTORS)


def _check_count(name: str, value: int) -> None:
    if not (isinstance(value, (int, np.integer)) and value >= 1):
        raise InvalidParameterError(name, value, "an integer >= 1")


def feature_scale(kind: str, n_params: int) -> float:
    """The factor per-example gradients are multiplied by: ``1/sqrt(#parameters)`` for TRAK's features
    (``kind`` ``"trak"``: dattri's convention), 1 for every other kind or attributor."""
    _check_count("n_params", n_params)
    return 1.0 / math.sqrt(n_params) if kind in _TRAK_KINDS else 1.0


def gram_scale(attributor: str, n_train: int) -> float:
    """The factor of ``GᵀG`` in the curvature: ``1/n`` for IFFIM (the Fisher of the mean loss), 1 for
    TRAK (``ΦᵀΦ`` summed over the training points)."""
    _check_attributor(attributor)
    _check_count("n_train", n_train)
    return 1.0 if attributor == "trak" else 1.0 / n_train


def trak_per_mean_loss(n_train: int, n_params: int) -> float:
    """``n / #parameters``: TRAK's λ per unit of λ on the mean-loss scale.

    TRAK sums ``n`` outer products of gradients divided by ``sqrt(#parameters)``; the mean-loss Fisher
    averages them unscaled; so the same curvature is ``n / #parameters`` times larger on TRAK's scale.
    """
    _check_count("n_train", n_train)
    _check_count("n_params", n_params)
    return n_train / n_params


def from_mean_loss(attributor: str, regularization: float, n_train: int, n_params: int) -> float:
    """``regularization`` given on the mean-loss scale, on ``attributor``'s scale."""
    _check_attributor(attributor)
    if attributor == "trak":
        return regularization * trak_per_mean_loss(n_train, n_params)
    return regularization


def trace_per_parameter(attributor: str, trace: float, n_train: int, n_params: int) -> float:
    """The mean per-example squared gradient per parameter, ``mean_i ‖∇_i‖² / #parameters``, from the
    trace of ``attributor``'s curvature.

    IFFIM's trace is ``mean_i ‖∇L_i‖²`` (divide by ``#parameters``); TRAK's, ``Σ_i ‖∇f_i‖² /
    #parameters`` (divide by ``n``) -- of margin, not loss, gradients.
    """
    _check_attributor(attributor)
    _check_count("n_train", n_train)
    _check_count("n_params", n_params)
    return trace / n_train if attributor == "trak" else trace / n_params


def scale_description(attributor: str) -> str:
    """One line saying on which curvature λ is added for ``attributor``."""
    _check_attributor(attributor)
    if attributor == "trak":
        return (
            "TRAK's scale: added to ΦᵀΦ summed over the training points, features divided by sqrt(#parameters) "
            "(dattri's TRAKAttributor regularization)"
        )
    return "the mean-loss scale: added to the empirical Fisher of the mean training loss (IFFIM)"


# ------------------------------------------------------------------------------------------------
# grids

#: The cases' grid on the mean-loss scale: 10^-6 .. 10^2 (eight decades).
CASE_DECADES = (-6, 2)
#: Points of the cases' grid: four per decade.
CASE_POINTS = 33


def case_grid(attributor: str, n_train: int, n_params: int, n_points: int = CASE_POINTS) -> list[float]:
    """The candidate λ of a Fig 2/3 case: ``n_points`` log-spaced values over :data:`CASE_DECADES` on the
    mean-loss scale, converted to ``attributor``'s (TRAK: times ``n / #parameters``)."""
    _check_attributor(attributor)
    if not (isinstance(n_points, int) and n_points >= 2):
        raise InvalidParameterError("n_points", n_points, "an integer >= 2")
    grid = np.logspace(*CASE_DECADES, n_points)
    if attributor == "trak":
        grid = grid * trak_per_mean_loss(n_train, n_params)
    return [float(v) for v in grid]


#: The selector's default candidates relative to the largest eigenvalue: 10^-11 .. 10^1, 33 points.
SELECTOR_DECADES = (-11, 1)
SELECTOR_POINTS = 33


def selector_grid(top_eigenvalue: float) -> list[float]:
    """The selector's default candidates: :data:`SELECTOR_POINTS` values, four per decade, over twelve
    decades ending ten times above the largest eigenvalue (scale-free: it follows the spectrum)."""
    return [float(v) for v in top_eigenvalue * np.logspace(*SELECTOR_DECADES, SELECTOR_POINTS)]


def suite_grid(top_eigenvalue: float, per_decade: int, decades: int, top_decades: int) -> list[float]:
    """The robustness suite's dense grid: ``per_decade`` points per decade over ``decades`` decades ending
    ``top_decades`` above the largest eigenvalue."""
    points = per_decade * decades + 1
    exponents = np.linspace(top_decades - decades, top_decades, points)
    return [float(top_eigenvalue * 10.0**e) for e in exponents]


#: The bisection bracket of the ξ̄ crossing, in decades relative to the largest eigenvalue.
CROSSING_BRACKET = (-8, 4)


def crossing_bracket(top_eigenvalue: float) -> tuple[float, float]:
    """``[1e-8, 1e4] ×`` the largest eigenvalue: where the ξ̄ crossing is searched by default."""
    low, high = CROSSING_BRACKET
    return top_eigenvalue * 10.0**low, top_eigenvalue * 10.0**high


def fine_grid(top_eigenvalue: float, per_decade: int) -> np.ndarray:
    """``per_decade`` points per decade over :data:`CROSSING_BRACKET` relative to the largest eigenvalue."""
    low, high = CROSSING_BRACKET
    return top_eigenvalue * np.logspace(low, high, (high - low) * per_decade + 1)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A λ axis of a figure: log-spaced values over ``decades`` (on the axis's attributor's own scale).

    ``points`` fixes the number of values (``None``: the page's profile gives it); ``with_zero`` puts
    λ = 0 first (the attributor's unregularized default) and spends one point on it; ``anchors`` are
    values always on the axis (the paper's comparison points), merged into the log-spaced ones.
    """

    decades: tuple[int, int]
    points: int | None = None
    with_zero: bool = False
    anchors: tuple[float, ...] = ()


#: Every figure's λ axis by name (the pages ask for theirs here).
SWEEPS: dict[str, Sweep] = {
    # Fig 1a: IF (CG); the paper compares λ = 1e-4 with 1e-2
    "fig1a_cg": Sweep((-4, 0), anchors=(1e-4, 1e-2)),
    # Fig 1b / 1c: TRAK against its projection dimension, from dattri's default λ = 0
    "fig1b_trak": Sweep((-4, 2), with_zero=True),
    # Fig 1f: LoGra's λ is relative to each layer's trace, centred on its default 1e-3
    "fig1f_logra": Sweep((-5, 1), points=7),
    # Fig 4: IF (explicit)'s λ on the mean-loss scale
    "fig4_if_explicit": Sweep((-6, 2)),
    # Theorem 4.3: the planted problems (a fixed dense axis) and the real data
    "theorem_planted": Sweep((-4, 2), points=25),
    "theorem_real": Sweep((-6, 2)),
    # the walkthrough's least-squares example
    "walkthrough": Sweep((-7, 2), points=19),
}


def sweep(name: str, n_points: int | None = None) -> list[float]:
    """The λ values of the figure axis ``name`` (:data:`SWEEPS`), with ``n_points`` values in all when the
    sweep leaves the number to the page's profile (λ = 0 and the anchors included)."""
    if name not in SWEEPS:
        raise InvalidParameterError("sweep", name, sorted(SWEEPS))
    axis = SWEEPS[name]
    points = axis.points if axis.points is not None else n_points
    if not (isinstance(points, int) and points >= 2):
        raise InvalidParameterError("n_points", n_points, f"an integer >= 2 (sweep {name!r} takes it from the profile)")
    if axis.with_zero:
        return [0.0, *(float(v) for v in np.logspace(*axis.decades, points - 1))]
    values = np.logspace(*axis.decades, points)
    if axis.anchors:
        # rounded so that an anchor the log spacing hits exactly is not listed twice
        return sorted({*axis.anchors, *(float(v) for v in values.round(12))})
    return [float(v) for v in values]
