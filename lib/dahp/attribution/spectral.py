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

Device: the Gram matrix, the eigendecomposition and the factor products run on ``device``
(:func:`dahp.core.device.resolve_device`) in float64; what they return is on the CPU (it is cached and
swept there). On a CUDA device ``torch.linalg.eigh`` runs there in float64; when the matrix does
not fit (CUDA out of memory) it falls back to the CPU (SciPy's LAPACK driver), with the same
eigenpairs up to rounding and eigenvector signs, neither of which changes a score.

Book: "Why hyperparameters matter" (how the sweeps are computed), "Walkthrough".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import torch

from dahp.core.config import InvalidParameterError
from dahp.core.device import resolve_device


class Sweepable:
    """Anything with ``scores(λ)`` can sweep a grid of λ."""

    def scores(self, regularization: float) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def sweep(self, regularizations: Iterable[float]) -> Iterator[tuple[float, torch.Tensor]]:
        """``(λ, scores)`` for each λ, in order."""
        for lam in regularizations:
            yield lam, self.scores(lam)

    def summed(self, membership: torch.Tensor) -> Sweepable:
        """A scorer whose "training points" are the rows of ``membership`` ``(M, n_train)``: its scores at
        any λ are ``membership @ self.scores(λ)`` (the subset sums the LDS needs). Here the product is
        formed at each λ; closed forms in λ fold ``membership`` in once (:meth:`SpectralFactors.summed`)."""
        return _Summed(self, membership)


@dataclasses.dataclass(frozen=True)
class _Summed(Sweepable):
    """:meth:`Sweepable.summed` of a scorer without a closed form in λ."""

    inner: Sweepable
    membership: torch.Tensor

    def scores(self, regularization: float) -> torch.Tensor:
        scores = self.inner.scores(regularization)
        return self.membership.to(scores.device, torch.float64) @ scores.double()


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

    def summed(self, membership: torch.Tensor) -> SpectralFactors:
        """The factors of the subset sums: ``(membership @ L) diag(1/(e + λ)) R``; the ``(M, r)`` left factor is
        formed once, so each λ then costs ``M × r × q`` instead of ``n × r × q``."""
        return dataclasses.replace(self, left=membership.to(self.left.device, self.left.dtype) @ self.left)


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


def symmetric_eigh(matrix: torch.Tensor, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric matrix, in float64, returned on the CPU.

    On the CPU: LAPACK's divide-and-conquer driver through SciPy (~1.5x faster than
    ``torch.linalg.eigh`` on the 7,850-square Hessian here, same values to rounding). On a CUDA
    device: ``torch.linalg.eigh`` there, in float64; if the matrix and its workspace do not fit
    (``torch.cuda.OutOfMemoryError``), the CPU path instead -- the same eigenpairs up to rounding.
    """
    device = resolve_device(device)
    if device.type != "cpu":
        try:
            return _device_eigh(matrix, device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # and decompose on the CPU below
    import scipy.linalg
    from threadpoolctl import threadpool_limits

    # SciPy's OpenBLAS starts one thread per core of its own, beside torch's: on a small machine whose
    # cores are busy, its spinning threads made a 512-square decomposition ~50x slower (9 s instead of
    # 0.17 s on 2 shared cores). Small matrices gain nothing from threads, so they get one; large ones
    # get torch's thread count, so the two libraries never run more threads than torch was allowed.
    threads = 1 if len(matrix) < EIGH_THREADED_FROM else torch.get_num_threads()
    with threadpool_limits(limits=threads, user_api="blas"):
        values, vectors = scipy.linalg.eigh(
            matrix.detach().double().cpu().numpy(), driver="evd", overwrite_a=False, check_finite=False
        )
    return torch.from_numpy(values), torch.from_numpy(vectors)


#: Matrix size from which :func:`symmetric_eigh` lets LAPACK use more than one thread on the CPU.
EIGH_THREADED_FROM = 1024


def _device_eigh(matrix: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` in float64 on ``device``, the eigenpairs returned on the CPU."""
    values, vectors = torch.linalg.eigh(matrix.detach().to(device, torch.float64))
    return values.cpu(), vectors.cpu()


def _on_device_or_cpu(compute, device: torch.device):
    """``compute(device)``, repeated on the CPU if the (CUDA) device runs out of memory."""
    if device.type == "cpu":
        return compute(device)
    try:
        return compute(device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return compute(torch.device("cpu"))


def choose_form(n: int, p: int) -> str:
    """The dual form when there are no more training points than features, else the primal."""
    return "dual" if n <= p else "primal"


def eigendecompose(
    train: torch.Tensor, scale: float = 1.0, form: str | None = None, device: str | torch.device | None = None
) -> Eigendecomposition:
    """Eigenpairs of ``s GGᵀ`` (dual) or ``s GᵀG`` (primal) in float64, null directions dropped.

    The Gram matrix and its eigendecomposition are computed on ``device`` (on the CPU if the CUDA
    device runs out of memory); the eigenpairs are returned on the CPU.
    """
    n, p = train.shape
    form = form or choose_form(n, p)
    if form not in ("dual", "primal"):
        raise InvalidParameterError("form", form, ["dual", "primal"])

    def compute(where: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        G = train.to(where, torch.float64)
        gram = G @ G.T if form == "dual" else G.T @ G
        del G
        return symmetric_eigh(scale * gram, where)

    eigenvalues, vectors = _on_device_or_cpu(compute, resolve_device(device))
    keep = _keep(eigenvalues, len(eigenvalues))
    return Eigendecomposition(form, eigenvalues[keep].contiguous(), vectors[:, keep].contiguous())


def curvature_eigendecomposition(
    curvature: torch.Tensor, device: str | torch.device | None = None
) -> Eigendecomposition:
    """Eigenpairs of a symmetric ``(p, p)`` curvature (e.g. a Hessian), all kept, on the CPU.

    Decomposed in float64 on ``device`` (on the CPU if the CUDA device runs out of memory). An
    exact Hessian can be indefinite; λ must then exceed ``-min(e)`` for the inverse to exist, as for
    a direct solve.
    """
    eigenvalues, vectors = symmetric_eigh(curvature, device)
    return Eigendecomposition("curvature", eigenvalues, vectors)


def factors(
    eig: Eigendecomposition,
    train: torch.Tensor,
    queries: torch.Tensor,
    sign: float = 1.0,
    device: str | torch.device | None = None,
) -> SpectralFactors:
    """Spectral factors of ``G (C + λI)⁻¹ Qᵀ`` from the eigenpairs of ``C`` (or of ``s GGᵀ``).

    The products are formed in float64 on ``device`` (on the CPU if the CUDA device runs out of
    memory); the factors are returned on the CPU.
    """
    d = train.shape[1]

    def compute(where: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        G, Q, vectors = (t.to(where, torch.float64) for t in (train, queries, eig.vectors))
        if eig.form == "dual":
            return vectors, vectors.T @ (G @ Q.T)
        return G @ vectors, vectors.T @ Q.T

    left, right = _on_device_or_cpu(compute, resolve_device(device))
    return SpectralFactors(left.cpu(), eig.eigenvalues.cpu(), right.cpu(), sign, eig.form, d)


def factorize(
    train: torch.Tensor,
    queries: torch.Tensor,
    scale: float = 1.0,
    sign: float = 1.0,
    form: str | None = None,
    device: str | torch.device | None = None,
) -> SpectralFactors:
    """Factor ``G (s GᵀG + λI)⁻¹ Qᵀ`` for all λ, in the dual form when n ≤ p, else the primal.

    Args:
        train: ``G``, ``(n, p)``.
        queries: ``Q``, ``(q, p)``.
        scale: ``s``.
        sign: multiplies every score (``-1`` for influence functions, whose score is ``-gᵀ(...)⁻¹ G_i``).
        form: force ``"dual"`` or ``"primal"`` (tests compare the two).
        device: where the eigendecomposition and the products run (the factors come back to the CPU).
    """
    device = resolve_device(device)
    return factors(eigendecompose(train, scale, form, device), train, queries, sign, device)
