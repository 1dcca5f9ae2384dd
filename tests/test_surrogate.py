"""ξ: bounded, tends to one, monotone on a grid, and the same number in the primal and dual forms."""

import numpy as np
import pytest
import torch

from dahp.attribution.spectral import factorize
from dahp.selection.surrogate import xi, xi_curve

GRID = list(np.logspace(-6, 3, 37))


def random_problem(n=40, p=25, q=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -3, p, dtype=torch.float64)  # a spread spectrum, as real gradients have
    G = torch.randn(n, p, generator=gen, dtype=torch.float64) * scales
    Q = torch.randn(q, p, generator=gen, dtype=torch.float64) * scales
    return G, Q


def xi_direct(G, g, lam):
    """gᵀFA²g / sqrt(gᵀFAg · gᵀFA³g), the primal definition, by explicit matrices."""
    n, p = G.shape
    F = G.T @ G / n
    A = torch.linalg.inv(F + lam * torch.eye(p, dtype=G.dtype))
    quad = lambda M: g @ F @ M @ g
    return quad(A @ A) / torch.sqrt(quad(A) * quad(A @ A @ A))


@pytest.mark.parametrize("n, p", [(40, 25), (15, 25)])
def test_primal_and_dual_give_the_same_xi_and_match_the_definition(n, p):
    G, Q = random_problem(n=n, p=p)
    dual = xi_curve(factorize(G, Q, scale=1 / n, form="dual"), GRID)
    primal = xi_curve(factorize(G, Q, scale=1 / n, form="primal"), GRID)
    torch.testing.assert_close(dual, primal, rtol=1e-7, atol=1e-10)
    for lam in (1e-4, 1e-1, 10.0):
        torch.testing.assert_close(xi(factorize(G, Q, scale=1 / n), lam)[0], xi_direct(G, Q[0], lam), rtol=1e-7, atol=0)


@pytest.mark.parametrize("seed", range(5))
def test_xi_in_unit_interval_rising_to_one(seed):
    G, Q = random_problem(seed=seed)
    curve = xi_curve(factorize(G, Q, scale=1 / 40), GRID)
    assert torch.all(curve >= 0) and torch.all(curve <= 1 + 1e-12)
    assert torch.all(curve[-1] > 0.99)
    # ξ̄, the mean over queries that Algorithm 1 bisects, rises along the whole grid, not only end to end
    assert torch.all(torch.diff(curve.mean(1)) >= -1e-12)
    # a single query's ξ is monotone only "in practice" (the spec): small dips happen, large ones do not
    assert torch.all(torch.diff(curve, dim=0) >= -0.01)


def test_a_single_query_can_dip_so_monotonicity_is_empirical_not_a_theorem():
    G, Q = random_problem(seed=0)
    steps = torch.diff(xi_curve(factorize(G, Q, scale=1 / 40), GRID), dim=0)
    assert steps.min() < -1e-4  # a real dip on this problem: the book never claims per-query monotonicity


def test_single_direction_gives_xi_one():
    G = torch.zeros(5, 3, dtype=torch.float64)
    G[:, 0] = torch.arange(1.0, 6.0)
    Q = torch.tensor([[2.0, 1.0, -1.0]], dtype=torch.float64)
    assert xi(factorize(G, Q), 0.3).item() == pytest.approx(1.0)
