"""Every λ of a grid from one eigendecomposition (spec: "Computing every λ at once").

For features ``G`` (n × p, one row per training point), query features ``Q`` (q × p) and a
curvature ``C = s GᵀG`` (the Fisher of IFFIM with ``s = 1/n``; TRAK's ``ΦᵀΦ`` with ``s = 1``),

    G (C + λI)⁻¹ Qᵀ = L diag(1 / (e + λ)) R

with, in the *dual* form (n ≤ p), ``s GGᵀ = V diag(e) Vᵀ``, ``L = V``, ``R = Vᵀ G Qᵀ`` (push-through
identity), and in the *primal* form (p < n), ``C = W diag(e) Wᵀ``, ``L = G W``, ``R = Wᵀ Qᵀ``. Any other
symmetric curvature (the exact Hessian of IF explicit) uses the primal form with its own
eigenvectors. One float64 eigendecomposition serves the whole grid; each λ then costs one
``(n × r) @ (r × q)`` product. Eigen-directions with (numerically) zero eigenvalue are dropped:
``L`` or ``R`` vanishes on them exactly, so this changes no score at any λ, and it makes λ = 0 the
pseudo-inverse.

Book: "Why hyperparameters matter" (how the sweeps are computed), "Walkthrough".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import torch

from dahp.config import InvalidParameterError


class Sweepable:
    """Anything with ``scores(λ)`` can sweep a grid of λ."""

    def scores(self, regularization: float) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def sweep(self, regularizations: Iterable[float]) -> Iterator[tuple[float, torch.Tensor]]:
        """``(λ, scores)`` for each λ, in order."""
        for lam in regularizations:
            yield lam, self.scores(lam)


@dataclasses.dataclass(frozen=True)
class SpectralFactors(Sweepable):
    """``scores(λ) = sign · L diag(1/(e + λ)) R``, shapes ``(n, r)``, ``(r,)``, ``(r, q)``, float64."""

    left: torch.Tensor
    eigenvalues: torch.Tensor
    right: torch.Tensor
    sign: float = 1.0
    form: str = "dual"  #: ``"dual"``, ``"primal"`` or ``"curvature"`` (how it was built)
    dimension: int = 0  #: side ``d`` of the curvature (number of features), zero eigenvalues included

    def scores(self, regularization: float) -> torch.Tensor:
        """``(n_train, n_queries)`` scores at one λ."""
        check_regularization(regularization)
        weights = 1.0 / (self.eigenvalues + regularization)
        return self.sign * (self.left @ (weights.unsqueeze(1) * self.right))


def check_regularization(regularization: float) -> None:
    """λ must be a finite number >= 0."""
    try:
        ok = float(regularization) >= 0 and float(regularization) != float("inf")
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidParameterError("regularization", regularization, "a finite number >= 0")


def _keep(eigenvalues: torch.Tensor, size: int) -> torch.Tensor:
    """Mask of the eigen-directions that are not numerically null."""
    top = eigenvalues.abs().max() if eigenvalues.numel() else torch.tensor(0.0, dtype=torch.float64)
    return eigenvalues > top * size * torch.finfo(torch.float64).eps * 10


@dataclasses.dataclass(frozen=True)
class Eigendecomposition:
    """The λ-independent part of a factorization: eigenpairs of ``s GGᵀ`` (dual) or of a ``(p, p)`` curvature."""

    form: str  #: ``"dual"``, ``"primal"`` or ``"curvature"``
    eigenvalues: torch.Tensor  #: ``(r,)`` float64
    vectors: torch.Tensor  #: ``(n, r)`` (dual) or ``(p, r)`` (primal, curvature), float64


def symmetric_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric float64 matrix.

    LAPACK's divide-and-conquer driver through SciPy: ~1.5x faster than ``torch.linalg.eigh`` on
    the 7,850-square Hessian here, same values to rounding.
    """
    import scipy.linalg

    values, vectors = scipy.linalg.eigh(
        matrix.detach().double().numpy(), driver="evd", overwrite_a=False, check_finite=False
    )
    return torch.from_numpy(values), torch.from_numpy(vectors)


def choose_form(n: int, p: int) -> str:
    """The dual form when there are no more training points than features, else the primal."""
    return "dual" if n <= p else "primal"


def eigendecompose(train: torch.Tensor, scale: float = 1.0, form: str | None = None) -> Eigendecomposition:
    """Eigenpairs of ``s GGᵀ`` (dual) or ``s GᵀG`` (primal) in float64, null directions dropped."""
    n, p = train.shape
    form = form or choose_form(n, p)
    if form not in ("dual", "primal"):
        raise InvalidParameterError("form", form, ["dual", "primal"])
    G = train.double()
    gram = G @ G.T if form == "dual" else G.T @ G
    eigenvalues, vectors = symmetric_eigh(scale * gram)
    keep = _keep(eigenvalues, gram.shape[0])
    return Eigendecomposition(form, eigenvalues[keep].contiguous(), vectors[:, keep].contiguous())


def curvature_eigendecomposition(curvature: torch.Tensor) -> Eigendecomposition:
    """Eigenpairs of a symmetric ``(p, p)`` curvature (e.g. a Hessian), all kept.

    An exact Hessian can be indefinite; λ must then exceed ``-min(e)`` for the inverse to exist,
    as for a direct solve.
    """
    eigenvalues, vectors = symmetric_eigh(curvature)
    return Eigendecomposition("curvature", eigenvalues, vectors)


def factors(eig: Eigendecomposition, train: torch.Tensor, queries: torch.Tensor, sign: float = 1.0) -> SpectralFactors:
    """Spectral factors of ``G (C + λI)⁻¹ Qᵀ`` from the eigenpairs of ``C`` (or of ``s GGᵀ``)."""
    G, Q = train.double(), queries.double()
    d = G.shape[1]
    if eig.form == "dual":
        return SpectralFactors(eig.vectors, eig.eigenvalues, eig.vectors.T @ (G @ Q.T), sign, "dual", d)
    return SpectralFactors(G @ eig.vectors, eig.eigenvalues, eig.vectors.T @ Q.T, sign, eig.form, d)


def factorize(
    train: torch.Tensor, queries: torch.Tensor, scale: float = 1.0, sign: float = 1.0, form: str | None = None
) -> SpectralFactors:
    """Factor ``G (s GᵀG + λI)⁻¹ Qᵀ`` for all λ, in the dual form when n ≤ p, else the primal.

    Args:
        train: ``G``, ``(n, p)``.
        queries: ``Q``, ``(q, p)``.
        scale: ``s``.
        sign: multiplies every score (``-1`` for influence functions, whose score is ``-gᵀ(...)⁻¹ G_i``).
        form: force ``"dual"`` or ``"primal"`` (tests compare the two).
    """
    return factors(eigendecompose(train, scale, form), train, queries, sign)
