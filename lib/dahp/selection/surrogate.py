"""The surrogate indicator ξ and its retraining partner ω (spec: "The surrogate indicator").

From the spectral factors of an attributor (:mod:`dahp.attribution.spectral`), with ``c_k`` the squared
projection of a query's gradient on eigen-direction ``k`` of the curvature,

    ξ(z', λ) = Σ c_k/(e_k+λ)² / sqrt( Σ c_k/(e_k+λ) · Σ c_k/(e_k+λ)³ )  ∈ [0, 1],

which is ``uᵀB²u / sqrt(uᵀBu · uᵀB³u)`` with ``B = (K+λI)⁻¹`` in the dual form and
``gᵀFA²g / sqrt(gᵀFAg · gᵀFA³g)`` with ``A = (F+λI)⁻¹`` in the primal form. The two weightings of
``c_k`` differ by the constant ``n`` (``u = Gg``), which cancels: the forms give the same ξ. ξ needs
only the model trained on all the data. Components with ``e_k = 0`` drop out.

Book: "The surrogate indicator ξ", "Theory check".
"""

from __future__ import annotations

import torch

from dahp.attribution.spectral import SpectralFactors, check_regularization, factorize
from dahp.core.config import InvalidParameterError


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


def dual_view(factors: SpectralFactors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(V, Vᵀu, κ)``: orthonormal eigenvectors of the kernel ``K`` (n × r), the queries' ``u = Gg``
    in that basis (r × q) and the eigenvalues, from factors of either form.

    In the primal form ``L = GW`` has orthogonal columns with ``‖L_k‖² = σ_k / s`` (``s`` the
    curvature's scale, since ``GᵀG w_k = (σ_k/s) w_k``), so ``V = L / ‖L‖`` and
    ``v_kᵀu = (Gw_k)ᵀ G g / ‖L_k‖ = ‖L_k‖ R_k``. The kernel is ``K = s GGᵀ`` with ``u = Gg``.
    """
    if factors.form == "dual":
        return factors.left, factors.right, factors.eigenvalues
    if factors.form != "primal":
        raise InvalidParameterError("factors.form", factors.form, ["dual", "primal"])
    norms = factors.left.norm(dim=0)
    return factors.left / norms, norms.unsqueeze(1) * factors.right, factors.eigenvalues


def _b_forms(factors: SpectralFactors, beta: torch.Tensor, regularization: float):
    """``uᵀB^m u`` (m = 1..3), ``uᵀBβ``, ``uᵀB²β``, ``βᵀBβ`` per query, ``B = (K + λI)⁻¹`` on all of R^n."""
    V, u_coef, kappa = dual_view(factors)
    beta = beta.double()
    b_coef = V.T @ beta  # (r, q)
    outside = (beta**2).sum(0) - (b_coef**2).sum(0)  # β's part in the null space of K, where B = 1/λ
    inv = (1.0 / (kappa + regularization)).unsqueeze(1)
    uu = [((u_coef**2) * inv**m).sum(0) for m in (1, 2, 3)]
    ub1 = (u_coef * b_coef * inv).sum(0)
    ub2 = (u_coef * b_coef * inv**2).sum(0)
    bb = (b_coef**2 * inv).sum(0) + outside.clamp_min(0) / regularization
    return uu, ub1, ub2, bb


def omega(factors: SpectralFactors, beta: torch.Tensor, regularization: float) -> torch.Tensor:
    """ω(z', λ) = uᵀBβ / sqrt(uᵀBu · βᵀBβ) for every query; ``beta`` is ``(n, q)``. Needs λ > 0."""
    if not regularization > 0:
        raise InvalidParameterError("regularization", regularization, "a number > 0 (ω involves 1/λ)")
    uu, ub1, _, bb = _b_forms(factors, beta, regularization)
    return ub1 / torch.sqrt(uu[0] * bb)


def population_pearson(factors: SpectralFactors, beta: torch.Tensor, regularization: float) -> torch.Tensor:
    """``⟨Bu, β⟩ / ‖Bu‖`` per query: proportional (with a positive factor independent of λ) to the
    Population Pearson LDS of the attribution ``Bu`` against the retraining effects ``β``."""
    uu, ub1, _, _ = _b_forms(factors, beta, regularization)
    return ub1 / torch.sqrt(uu[1])


def exact_condition(factors: SpectralFactors, beta: torch.Tensor, regularization: float) -> torch.Tensor:
    """True where the Population Pearson LDS increases with λ: (uᵀBβ)(uᵀB³u) > (uᵀB²β)(uᵀB²u)."""
    uu, ub1, ub2, _ = _b_forms(factors, beta, regularization)
    return ub1 * uu[2] > ub2 * uu[1]


def beta_hat(membership: torch.Tensor, targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """Estimated retraining effects ``β̂_i = (1/M) Σ_j (1{i∈S_j} − α)(f_j − mean f)``, shape ``(n, q)``.

    Args:
        membership: ``(M, n)`` 0/1 subset indicators.
        targets: ``(M, q)`` query targets under each retrained model.
    """
    centred = targets.double() - targets.double().mean(0)
    return (membership.double() - alpha).T @ centred / membership.shape[0]


def planted_problem(
    seed: int,
    n: int = 12,
    p: int = 30,
    q: int = 5,
    form: str = "dual",
    true_regularization: float = 0.05,
    noise: float = 0.3,
):
    """A small problem where every quantity of the theory is exact: ``(factors, beta, G, Q)``.

    Training features ``G`` (n, p) and query features ``Q`` (q, p) with a decaying spectrum; the
    retraining effects ``beta`` are the influence at ``true_regularization`` plus Gaussian noise,
    so the Population Pearson LDS peaks at a finite λ. Used by the tests and the theory page.
    """

    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -2, p, dtype=torch.float64)
    G = torch.randn(n, p, generator=gen, dtype=torch.float64) * scales
    Q = torch.randn(q, p, generator=gen, dtype=torch.float64) * scales
    f = factorize(G, Q, scale=1 / n, form=form, device="cpu")  # tiny: the same bits on every machine
    curvature = G.T @ G / n + true_regularization * torch.eye(p, dtype=torch.float64)
    beta = G @ torch.linalg.solve(curvature, Q.T) + noise * torch.randn(n, q, generator=gen, dtype=torch.float64)
    return f, beta, G, Q


def theorem_rows(factors: SpectralFactors, beta: torch.Tensor, regularizations: list[float]) -> list[dict]:
    """Per (λ, query): ξ, ω, whether ξ < ω (the premise of Theorem 4.3) and whether the Population
    Pearson LDS rises with λ there (the exact condition, i.e. the sign of its derivative)."""
    rows = []
    for lam in regularizations:
        xi_values, omega_values = xi(factors, lam), omega(factors, beta, lam)
        rises = exact_condition(factors, beta, lam)
        for k in range(len(xi_values)):
            rows.append(
                {
                    "regularization": lam,
                    "query": k,
                    "xi": float(xi_values[k]),
                    "omega": float(omega_values[k]),
                    "premise": bool(xi_values[k] < omega_values[k]),
                    "lds_rises": bool(rises[k]),
                }
            )
    return rows
