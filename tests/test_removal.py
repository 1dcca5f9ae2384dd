"""Data selection by removal: ranking, the sets kept, retraining, the poster layout."""

import numpy as np
import pandas as pd
import pytest
import torch

from dahp.core.config import InvalidParameterError
from dahp.experiments.removal import RemovalConfig, RemovalRecord, kept_index_sets, ranking, removal_table
from helpers import quick


def test_ranking_orders_by_total_attribution_and_breaks_ties_by_index():
    scores = torch.tensor([[1.0, 1.0], [5.0, -1.0], [0.0, 0.0], [3.0, 1.0], [-2.0, -2.0]])
    # totals: 2, 4, 0, 4, -4 -> 1 and 3 tie at the top (stable: 1 first), then 0, 2, 4
    assert ranking(scores).tolist() == [1, 3, 0, 2, 4]


def test_kept_sets_drop_exactly_the_top_of_the_ranking():
    order = torch.tensor([4, 0, 3, 1, 2, 9, 8, 7, 6, 5])
    kept = kept_index_sets(10, order, 0.3, [1, 2])
    assert kept.shape == (2, 7)
    assert kept[0].tolist() == [1, 2, 5, 6, 7, 8, 9] and torch.equal(kept[0], kept[1])


def test_random_removal_draws_a_different_subset_per_seed():
    kept = kept_index_sets(100, None, 0.5, [1, 2, 3])
    assert kept.shape == (3, 50)
    assert len({tuple(row.tolist()) for row in kept}) == 3
    assert all(len(set(row.tolist())) == 50 for row in kept)


def test_bad_config_is_refused_before_compute():
    with pytest.raises(InvalidParameterError, match="rates"):
        RemovalConfig(rates=(0.1, 1.0))
    with pytest.raises(InvalidParameterError, match="n_seeds"):
        RemovalConfig(n_seeds=0)


@pytest.mark.slow
def test_removing_the_points_that_support_the_test_labels_hurts_more_than_random(cache):
    setting = quick("mnist_lr", epochs=3)
    data = setting.data()
    # an "attribution" that credits every training point of the test set's majority classes:
    # removing half the data by it strips whole classes, which random removal does not
    counts = torch.bincount(data.y_test, minlength=10)
    favoured = torch.isin(data.y_train, torch.argsort(counts, descending=True)[:5])
    scores = favoured.double().unsqueeze(1).repeat(1, 3)
    config = RemovalConfig(rates=(0.5,), n_seeds=2)
    table = removal_table(setting, {"oracle": scores}, config, cache, progress=False)
    assert list(table.columns) == ["setting", "method", "removal_rate", "seed", "accuracy"]
    assert len(table) == 3 * 2  # Full (rate 0), Random and the oracle, two seeds each
    acc = table.groupby("method").accuracy.mean()
    assert acc["oracle"] < acc["Random"] - 20 and acc["Random"] < acc["Full"] + 1
    again = removal_table(setting, {"oracle": scores}, config, cache, progress=False)  # cached: identical
    pd.testing.assert_frame_equal(table, again)
    record = RemovalRecord(table, pd.DataFrame())
    layout = record.wide(setting.name)
    assert list(layout.index) == ["Full", "Random", "oracle"] and list(layout.columns) == ["50 %"]
    assert "(87.60 ± 0.06)" in layout.loc["Random", "50 %"]  # the poster's number beside ours


def _record(rows) -> RemovalRecord:
    return RemovalRecord(
        pd.DataFrame(rows, columns=["setting", "method", "removal_rate", "seed", "accuracy"]), pd.DataFrame()
    )


def test_selected_minus_default_is_paired_over_seeds():
    rows = []
    for seed, (default, selected) in enumerate([(80.0, 78.0), (90.0, 87.0), (85.0, 84.0)]):
        rows += [("s", "IFFIM default", 0.3, seed, default), ("s", "IFFIM selected", 0.3, seed, selected)]
    difference = _record(rows).selected_minus_default("s", "IFFIM", 0.3)
    # per-seed differences -2, -3, -1: mean -2, standard error 1/sqrt(3), although the cells' own spreads are wide
    assert difference.value == pytest.approx(-2.0) and difference.se == pytest.approx(1 / np.sqrt(3))
    assert difference.below(0)
