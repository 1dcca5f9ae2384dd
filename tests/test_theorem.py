"""ω, the exact condition and Theorem 4.3 on random small problems where everything is exact."""

import numpy as np
import pytest
import torch

from dahp.selection.surrogate import beta_hat, exact_condition, omega, planted_problem, population_pearson, xi

LAMBDAS = list(np.logspace(-4, 2, 25))


def problem(seed, n=12, p=30, q=5, form="dual"):
    return planted_problem(seed, n, p, q, form)


def test_omega_and_population_pearson_by_explicit_matrices():
    f, beta, G, Q = problem(0)
    n = G.shape[0]
    K = G @ G.T / n
    for lam in (1e-3, 0.1, 5.0):
        B = torch.linalg.inv(K + lam * torch.eye(n, dtype=K.dtype))
        u = G @ Q.T
        expected_omega = (u * (B @ beta)).sum(0) / torch.sqrt((u * (B @ u)).sum(0) * (beta * (B @ beta)).sum(0))
        torch.testing.assert_close(omega(f, beta, lam), expected_omega)
        tau = B @ u
        torch.testing.assert_close(population_pearson(f, beta, lam), (tau * beta).sum(0) / tau.norm(dim=0))


def test_primal_and_dual_forms_agree_for_omega_and_the_condition():
    dual, beta, _, _ = problem(1, n=40, p=12, form="dual")
    primal, _, _, _ = problem(1, n=40, p=12, form="primal")
    for lam in (1e-3, 0.3):
        torch.testing.assert_close(omega(dual, beta, lam), omega(primal, beta, lam), rtol=1e-7, atol=1e-10)
        assert torch.equal(exact_condition(dual, beta, lam), exact_condition(primal, beta, lam))


@pytest.mark.parametrize("seed", range(8))
def test_exact_condition_is_the_sign_of_the_derivative(seed):
    f, beta, _, _ = problem(seed)
    for lam in LAMBDAS:
        step = lam * 1e-5
        slope = population_pearson(f, beta, lam + step) - population_pearson(f, beta, lam - step)
        clear = slope.abs() > 1e-12  # skip numerically flat points
        assert torch.equal((slope > 0)[clear], exact_condition(f, beta, lam)[clear])


@pytest.mark.parametrize("seed", range(8))
def test_theorem_xi_below_omega_never_meets_a_falling_lds(seed):
    f, beta, _, _ = problem(seed)
    seen_premise = 0
    for lam in LAMBDAS:
        premise = xi(f, lam) < omega(f, beta, lam)
        seen_premise += int(premise.sum())
        assert torch.all(exact_condition(f, beta, lam)[premise])
    assert seen_premise > 0  # the theorem was actually exercised


def test_beta_hat_on_a_hand_checked_example():
    membership = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    targets = torch.tensor([[2.0], [0.0], [3.0], [-1.0]])  # mean 1
    # β_0 = mean((m_0 - 0.5) * (f - 1)) = (0.5*1 - 0.5*-1 + 0.5*2 - 0.5*-2) / 4 = 0.75
    expected = torch.tensor([[0.75], [0.25]], dtype=torch.float64)
    torch.testing.assert_close(beta_hat(membership, targets, 0.5), expected)


def test_beta_is_flipped_for_an_influence_function_so_omega_keeps_the_sign_of_the_alignment():
    import dataclasses

    from dahp.experiments.theorem import attribution_aligned_beta

    f, beta, _, _ = problem(3)
    influence = dataclasses.replace(f, sign=-1.0)  # the attribution is -B u, as for IFFIM
    aligned = attribution_aligned_beta(influence, beta)
    for lam in (1e-3, 0.1, 10.0):
        scores = influence.scores(lam)
        alignment = (scores * beta).sum(0)  # the attribution's inner product with the true effects
        value = omega(influence, aligned, lam)
        assert torch.equal(torch.sign(value), torch.sign(alignment))
        torch.testing.assert_close(value, -omega(f, beta, lam))
