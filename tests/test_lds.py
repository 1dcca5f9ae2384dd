"""Our LDS equals dattri's on the same inputs and behaves as a rank correlation should."""

import numpy as np
import pytest
import torch
from dattri.metric import lds as dattri_lds

from dahp.attribution.lds import lds, subset_sums
from dahp.core.config import InvalidParameterError


def random_problem(n_train=40, n_queries=7, n_models=12, m=20, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_train, n_queries))
    subsets = np.stack([np.sort(rng.choice(n_train, m, replace=False)) for _ in range(n_models)])
    truth = subset_sums(scores, subsets) + rng.normal(scale=2.0, size=(n_models, n_queries))
    return scores, truth, subsets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lds_equals_dattri(seed):
    scores, truth, subsets = random_problem(seed=seed)
    ours = lds(scores, truth, subsets)
    theirs, _ = dattri_lds(torch.tensor(scores), (torch.tensor(truth), torch.tensor(subsets)))
    np.testing.assert_allclose(ours.per_query, theirs.numpy(), rtol=1e-10, atol=1e-12)
    assert ours.mean == pytest.approx(theirs.mean().item())
    assert ours.n_dropped == 0


def test_lds_equals_dattri_with_ties_in_targets():
    scores, truth, subsets = random_problem(seed=3)
    truth = np.round(truth)  # many ties in the retrained outcomes
    ours = lds(scores, truth, subsets)
    theirs, _ = dattri_lds(torch.tensor(scores), (torch.tensor(truth), torch.tensor(subsets)))
    np.testing.assert_allclose(ours.per_query, theirs.numpy(), rtol=1e-10)


def test_exact_linear_model_has_lds_one_and_reversed_has_minus_one():
    scores, _, subsets = random_problem(seed=4)
    exact = subset_sums(scores, subsets)
    assert lds(scores, exact, subsets).mean == pytest.approx(1.0)
    assert lds(-scores, exact, subsets).mean == pytest.approx(-1.0)


def test_hand_checked_three_models():
    # two training points, one query; subsets {0}, {1}, {0, 1} -> sums 1, 2, 3 vs truth 3, 2, 1.
    scores = np.array([[1.0], [2.0]])
    subsets = [[0, 0], [1, 1], [0, 1]]  # repeated index = a one-point subset in this toy
    result = lds(scores, np.array([[3.0], [2.0], [1.0]]), np.array(subsets))
    assert result.per_query[0] == pytest.approx(-1.0)


def test_constant_columns_are_dropped_and_counted():
    scores, truth, subsets = random_problem(seed=5)
    truth[:, 2] = 1.5
    result = lds(scores, truth, subsets)
    assert np.isnan(result.per_query[2]) and result.n_dropped == 1
    assert result.mean == pytest.approx(np.nanmean(result.per_query))
    valid = result.per_query[~np.isnan(result.per_query)]
    assert result.sem == pytest.approx(valid.std(ddof=1) / np.sqrt(len(valid)))


def test_shape_mismatch_is_a_clear_error():
    scores, truth, subsets = random_problem()
    with pytest.raises(InvalidParameterError, match="n_queries"):
        lds(scores[:, :3], truth, subsets)
