"""The surrogate indicator ξ and its retraining partner ω (spec: "The surrogate indicator").

From the spectral factors of an attributor (:mod:`dahp.spectral`), with ``c_k`` the squared
projection of a query's gradient on eigen-direction ``k`` of the curvature,

    ξ(z', λ) = Σ c_k/(e_k+λ)² / sqrt( Σ c_k/(e_k+λ) · Σ c_k/(e_k+λ)³ )  ∈ [0, 1],

which is ``uᵀB²u / sqrt(uᵀBu · uᵀB³u)`` with ``B = (K+λI)⁻¹`` in the dual form and
``gᵀFA²g / sqrt(gᵀFAg · gᵀFA³g)`` with ``A = (F+λI)⁻¹`` in the primal form. The two weightings of
``c_k`` differ by the constant ``n`` (``u = Gg``), which cancels: the forms give the same ξ. ξ needs
only the model trained on all the data. Components with ``e_k = 0`` drop out.
"""

from __future__ import annotations

import torch

from dahp.spectral import SpectralFactors, check_regularization


def query_weights(factors: SpectralFactors) -> torch.Tensor:
    """``(r, q)`` weights ``c_k`` of every eigen-direction for every query.

    Dual form: ``c_k = (v_kᵀ u)²`` with ``u = G g``; primal: ``c_k = e_k (w_kᵀ g)²``.
    """
    if factors.form == "dual":
        return factors.right**2
    return factors.eigenvalues.clamp_min(0).unsqueeze(1) * factors.right**2


def xi(factors: SpectralFactors, regularization: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """ξ of every query at one λ, shape ``(q,)``; queries with no spectral weight give NaN."""
    check_regularization(regularization)
    c = query_weights(factors) if weights is None else weights
    inverse = 1.0 / (factors.eigenvalues.clamp_min(0) + regularization)
    inverse = torch.where(factors.eigenvalues > 0, inverse, torch.zeros_like(inverse)).unsqueeze(1)
    first, second, third = ((c * inverse**m).sum(0) for m in (1, 2, 3))
    return second / torch.sqrt(first * third)


def xi_curve(factors: SpectralFactors, regularizations: list[float]) -> torch.Tensor:
    """``(len(λ), q)`` ξ of every query at every λ of a grid (weights computed once)."""
    c = query_weights(factors)
    return torch.stack([xi(factors, lam, c) for lam in regularizations])
