"""The checks of issue 23: per-layer groups, the short fit, TRAK's per-group projection, C13's scoped verdict,
and the checks' table for every MLP attributor."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dahp.attribution.features import Projection
from dahp.core.config import GroundTruthConfig
from dahp.core.statistics import FAILS, HOLDS
from dahp.experiments.learned import (
    ABLATION_COLUMNS,
    SHORT_FIT,
    LearnedAblationRecord,
    LearnedWeightsRecord,
    StudySizes,
    c13_verdict,
    run_learned_case,
)
from dahp.methods.learned_weights import (
    group_products,
    parameter_groups,
    per_group_projector,
    regroup,
    shared_projector,
)
from dahp.methods.weight_fit import GroupWeightConfig, fit_weights
from dahp.training.ground_truth import ground_truth
from helpers import small


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_layer_groups_hold_weight_and_bias_of_one_linear_and_regroup_sums_tensor_contributions():
    model = _MLP()
    tensors, layers = parameter_groups(model, "tensor"), parameter_groups(model, "layer")
    assert [g.name for g in tensors] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert [(g.name, g.tensors, g.size) for g in layers] == [
        ("fc1", ("fc1.weight", "fc1.bias"), 6 * 5 + 5),
        ("fc2", ("fc2.weight", "fc2.bias"), 5 * 3 + 3),
    ]
    assert sum(g.size for g in layers) == sum(p.numel() for p in model.parameters())
    torch.manual_seed(0)
    train, queries = torch.randn(7, 53), torch.randn(4, 53)
    np.testing.assert_allclose(
        regroup(group_products(train, queries, tensors), tensors, layers),
        group_products(train, queries, layers),
        rtol=1e-12,
    )


def _signal_in_one_group(n=200, q=30):
    """Contributions where group 0 ranks a fixed top-10 first for every query and group 1 is noise."""
    g = torch.Generator().manual_seed(1)
    signal = torch.randn(n, q, generator=g, dtype=torch.float64) * 0.1
    signal[:10] += 3.0
    return torch.stack(
        [
            signal,
            torch.randn(n, q, generator=g, dtype=torch.float64) * 2.0,
            torch.randn(n, q, generator=g, dtype=torch.float64),
        ]
    )


def test_short_fit_keeps_weights_within_ten_percent_of_uniform_while_the_long_fit_does_not():
    contributions = _signal_in_one_group()
    short = fit_weights(contributions, GroupWeightConfig(**SHORT_FIT)).weights
    assert float((short - 1).abs().max()) <= 0.1
    assert float(short[0]) > 1.0  # it moves, toward the group that carries the signal
    long = fit_weights(contributions, GroupWeightConfig(), record_at=(0, 10, 300))
    assert float((long.weights - 1).abs().max()) > 0.5
    assert torch.equal(long.checkpoints[0], torch.ones(3, dtype=torch.float64))
    assert torch.allclose(long.checkpoints[300], long.weights)


def test_per_group_projection_scores_a_group_only_from_its_own_training_coordinates():
    model = _MLP()
    groups = parameter_groups(model, "tensor")
    d = sum(g.size for g in groups)
    torch.manual_seed(0)
    train, query = torch.randn(9, d), torch.randn(2, d)
    other = train.clone()
    other[:, groups[0].stop :] += torch.randn(9, d - groups[0].stop)  # every group but fc1.weight changes
    separate = per_group_projector(groups, 8, seed=3)  # fc1.weight (30) and fc2.weight (15) projected to 8
    assert [b.stop - b.start for b in separate.blocks] == [8, 5, 8, 3]
    shared = shared_projector(d, Projection(8, 3), groups)
    for projector, independent in ((separate, True), (shared, False)):
        parts = projector.by_group(query)
        assert torch.allclose(parts.sum(0), projector.features(query), atol=1e-5)
        before = parts[0] @ projector.features(train).T
        after = parts[0] @ projector.features(other).T
        assert torch.allclose(before, after, atol=1e-5) is independent


def _checks_record(diffs, val_diffs, settings=("mnist_lr", "mnist_mlp"), n=60):
    """A study and a checks record: ``diffs[(attributor, check, value)]`` is added to the learned LDS of that row on
    the test queries (``val_diffs`` on the validation ones); every other row equals uniform."""
    rng = np.random.default_rng(0)
    study, rows = [], []
    weights = GroupWeightConfig().as_dict()
    reference = ("fit", f"{weights['steps']} steps at lr {weights['lr']:g}")
    for setting in settings:
        for attributor in ("grad_dot", "trak"):
            base = rng.normal(0.2, 0.05, n)
            for weighting in ("uniform", "learned"):
                shift = diffs.get((attributor, *reference), 0.0) if weighting == "learned" else 0.0
                study += [
                    dict(
                        setting=setting, attributor=attributor, regularization=None, weighting=weighting, query=q, lds=v
                    )
                    for q, v in enumerate(base + shift)
                ]
            for split, shifts in (("test", diffs), ("val", val_diffs)):
                noise = rng.normal(0, 0.01, n)
                for check, value in (("uniform", "shared"), reference, ("fit", "10 steps at lr 0.005"), ("k", "1")):
                    shift = shifts.get((attributor, check, value), 0.0)
                    rows += [
                        dict(
                            setting=setting,
                            attributor=attributor,
                            regularization=None,
                            check=check,
                            value=value,
                            split=split,
                            query=q,
                            lds=v,
                        )
                        for q, v in enumerate(base + noise * (check != "uniform") + shift)
                    ]
    timing = pd.DataFrame(
        [
            dict(setting=s, attributor=a, contributions_seconds=1.0, fit_seconds=1.0)
            for s in settings
            for a in ("grad_dot", "trak")
        ]
    )
    frames = {"per_query": pd.DataFrame(study), "groups": pd.DataFrame(), "picks": pd.DataFrame(), "timing": timing}
    config = {"settings": list(settings), "weights": weights, "n_lambdas": 1, "iffim_proj_dim_by_setting": {}}
    record = LearnedWeightsRecord.from_per_query(frames, config, "quick")
    checks = LearnedAblationRecord(
        pd.DataFrame(rows), pd.DataFrame(columns=["check", "value", "setting", "attributor", "group", "weight"]), config
    )
    return record, checks


def test_c13_verdict_is_scoped_and_says_which_check_changes_it():
    long = ("fit", "300 steps at lr 0.05")
    short = ("fit", "10 steps at lr 0.005")
    diffs = {(a, *long): -0.05 for a in ("grad_dot", "trak")} | {(a, *short): 0.05 for a in ("grad_dot", "trak")}
    record, checks = _checks_record(diffs, {("grad_dot", *short): 0.05})
    verdict = c13_verdict(record, checks)
    assert verdict.verdict == FAILS and verdict.at_lambda == FAILS
    assert verdict.checks["fit=10 steps at lr 0.005"] == HOLDS and verdict.checks["k=1"] == FAILS
    assert verdict.changed_by == ["fit=10 steps at lr 0.005 (holds)"]
    assert verdict.helps_on_validation == []  # on validation the short fit helps Grad-Dot only
    assert "mnist_lr and mnist_mlp" in verdict.scope and "300 full-batch Adam steps" in verdict.scope
    assert verdict.cases == ["mnist_lr grad_dot", "mnist_lr trak", "mnist_mlp grad_dot", "mnist_mlp trak"]
    # on validation the short fit now helps everywhere: a candidate default, whatever the test queries say
    record, checks = _checks_record({}, {(a, *short): 0.05 for a in ("grad_dot", "trak")})
    assert c13_verdict(record, checks).helps_on_validation == ["fit=10 steps at lr 0.005"]
    # a setting left out of the judgment leaves the verdict to the others
    diffs = {("grad_dot", *long): 0.05, ("trak", *long): 0.05}
    record, checks = _checks_record(diffs, {}, settings=("mnist_lr",))
    assert c13_verdict(record, checks).verdict == HOLDS
    assert c13_verdict(record, checks, excluded_settings={"mnist_lr"}).cases == []
    assert c13_verdict(record, None).checks == {}


def test_every_mlp_attributor_gets_the_four_checks(cache):
    setting = small("mnist_mlp", epochs=2)
    truth = ground_truth(setting, GroundTruthConfig(n_models=4, models_per_chunk=4), cache, progress=False)
    sizes = StudySizes(2, 1, 4, 20, 20, 20, 64, 0, (5,), (0.0,))
    config = GroupWeightConfig(steps=30)
    per_query, weights = [], []
    for attributor in ("grad_dot", "trak", "iffim"):
        _, rows = run_learned_case(setting, attributor, sizes, truth, config, True, cache, False, torch.device("cpu"))
        per_query += rows["per_query"]
        weights += rows["weights"]
    record = LearnedAblationRecord(pd.DataFrame(per_query), pd.DataFrame(weights), {"weights": config.as_dict()})
    table = record.table()
    assert list(table.columns) == list(ABLATION_COLUMNS)
    for attributor in ("grad_dot", "trak", "iffim"):
        rows = table[table.attributor == attributor]
        found = set(zip(rows.check, rows.value))
        assert {("grouping", "tensor"), ("grouping", "layer"), ("k", "5")} <= found, attributor
        assert {("fit", "30 steps at lr 0.05"), ("fit", "10 steps at lr 0.005")} <= found, attributor
        assert {("fit_trace", "0"), ("fit_trace", "10"), ("fit_trace", "30")} <= found, attributor
        assert (("projection", "per_group") in found) is (attributor == "trak")
        # step 0 of the fit is uniform weights: no difference at all
        zero = rows[(rows.check == "fit_trace") & (rows.value == "0")].iloc[0]
        assert zero.difference == 0.0 and zero.lds_learned == zero.lds_uniform
        assert rows.difference_se.notna().all() and rows.val_difference.notna().all()
    layer = record.weights_of(setting.name, "grad_dot", "grouping", "layer")
    assert list(layer.index) == ["fc1", "fc2", "fc3"] and layer.mean() == pytest.approx(1.0)
