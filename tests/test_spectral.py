"""One eigendecomposition gives the regularized inverse at every λ, in either form."""

import numpy as np
import pytest
import torch

from dahp.attribution.spectral import curvature_eigendecomposition, factorize, factors
from dahp.core.config import InvalidParameterError


def direct(G, Q, scale, lam, sign=1.0):
    p = G.shape[1]
    return sign * G @ torch.linalg.solve(scale * G.T @ G + lam * torch.eye(p, dtype=G.dtype), Q.T)


@pytest.fixture()
def problem():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(30, 12, generator=gen, dtype=torch.float64), torch.randn(
        5, 12, generator=gen, dtype=torch.float64
    )


@pytest.mark.parametrize("lam", [1e-4, 1e-1, 3.0, 1e3])
def test_primal_equals_dual_equals_direct_solve(problem, lam):
    G, Q = problem
    dual = factorize(G, Q, scale=1 / 30, form="dual").scores(lam)
    primal = factorize(G, Q, scale=1 / 30, form="primal").scores(lam)
    torch.testing.assert_close(dual, primal, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(primal, direct(G, Q, 1 / 30, lam), rtol=1e-9, atol=1e-12)


def test_form_is_chosen_by_shape(problem):
    G, Q = problem
    assert factorize(G, Q).form == "primal"  # n=30 > p=12
    assert factorize(G[:8], Q).form == "dual"


def test_sign_and_sweep(problem):
    G, Q = problem
    f = factorize(G, Q, scale=0.5, sign=-1.0)
    swept = dict(f.sweep([0.1, 1.0]))
    torch.testing.assert_close(swept[1.0], direct(G, Q, 0.5, 1.0, sign=-1.0))


def test_rank_deficient_kernel_drops_null_directions_and_lambda_zero_is_pseudo_inverse():
    gen = torch.Generator().manual_seed(1)
    G = torch.randn(6, 20, generator=gen, dtype=torch.float64) @ torch.randn(20, 20, generator=gen, dtype=torch.float64)
    G = torch.cat([G, G[:2] * 2.0])  # 8 rows of rank 6: two null directions of GGᵀ
    Q = torch.randn(3, 20, generator=gen, dtype=torch.float64)
    f = factorize(G, Q, form="dual")
    assert f.eigenvalues.numel() == 6
    torch.testing.assert_close(f.scores(0.0), G @ torch.linalg.pinv(G.T @ G) @ Q.T, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(f.scores(0.5), direct(G, Q, 1.0, 0.5), rtol=1e-9, atol=1e-10)


def test_curvature_form_matches_solve_with_that_curvature(problem):
    G, Q = problem
    A = torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    H = A @ A.T / 12
    eig = curvature_eigendecomposition(H)
    got = factors(eig, G, Q, sign=-1.0).scores(0.3)
    torch.testing.assert_close(got, -G @ torch.linalg.solve(H + 0.3 * torch.eye(12, dtype=H.dtype), Q.T))


@pytest.mark.parametrize("lam", [-1e-3, float("nan"), float("inf"), "big"])
def test_bad_regularization(problem, lam):
    f = factorize(*problem)
    with pytest.raises(InvalidParameterError, match="regularization"):
        f.scores(lam)


@pytest.mark.parametrize("lam", [1e-3, 1.0])
def test_summed_factors_give_the_subset_sums_and_the_same_lds(problem, lam):
    # the LDS grid folds the subsets into the left factor once; it must equal summing the full scores
    from dahp.attribution.attributors import SpectralScorer
    from dahp.attribution.lds import lds, lds_of_sums, membership_matrix
    from dahp.attribution.spectral import Sweepable

    g, q = problem
    member = factorize(g, q)
    generator = torch.Generator().manual_seed(7)
    subsets = torch.stack([torch.randperm(g.shape[0], generator=generator)[: g.shape[0] // 2] for _ in range(9)])
    membership = membership_matrix(subsets, g.shape[0])
    assert membership.sum(1).eq(g.shape[0] // 2).all()
    weights = torch.rand(g.shape[0], generator=generator, dtype=torch.float64)
    for scorer in (member, SpectralScorer([member, factorize(2 * g, q)], train_weights=weights)):
        direct = membership @ scorer.scores(lam)
        torch.testing.assert_close(scorer.summed(membership).scores(lam), direct, rtol=1e-10, atol=1e-12)
        # the generic path (no closed form): the product at each λ
        torch.testing.assert_close(Sweepable.summed(scorer, membership).scores(lam), direct, rtol=1e-12, atol=1e-12)
        targets = direct + torch.randn(direct.shape, generator=generator, dtype=torch.float64)
        np.testing.assert_allclose(
            lds_of_sums(scorer.summed(membership).scores(lam), targets).per_query,
            lds(scorer.scores(lam), targets, subsets).per_query,
            rtol=1e-12,
        )
