"""Grids judged by dattri's published benchmark (GroundTruthConfig(source="dattri")): dattri's full-data
models attributed on dattri's points, nothing trained, the LDS against the folder's own targets."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import dahp.training.ground_truth
import dahp.training.train
from dahp.attribution import dattri_bridge
from dahp.attribution.attributors import make_params, scorer
from dahp.attribution.lds import lds
from dahp.cli import main
from dahp.core.cache import Cache
from dahp.core.config import GroundTruthConfig, InvalidParameterError
from dahp.data.benchmark_folder import (
    INDICES_FILE,
    MNIST_FILES,
    MNIST_RAW,
    TARGETS_FILE,
    benchmark_models,
    benchmark_setting,
    read_benchmark,
    write_fixture,
)
from dahp.data.settings import MissingDataError
from dahp.experiments.grid import GridRecord, make_grid_spec, run_grid
from dahp.training.ground_truth import attributed_setting, ground_truth

DATTRI = GroundTruthConfig(source="dattri")
GRID = {"proj_dim": [16, 32], "regularization": [0.0, 1e-2]}


@pytest.fixture()
def dattri_dir(tmp_path, monkeypatch):
    """An mnist_lr fixture in dattri's layout (2 full-data models, 6 subsets, MNIST files), as $DAHP_DATTRI_DIR."""
    root = tmp_path / "dattri"
    write_fixture(root, "mnist_lr", n_full=2, n_half=6, with_data=True)
    monkeypatch.setenv("DAHP_DATTRI_DIR", str(root))
    return root


@pytest.fixture()
def no_training(monkeypatch):
    """Any call into training fails the test."""

    def trained(*args, **kwargs):
        raise AssertionError("a model was trained, but dattri's published models were to be used")

    for module, name in [
        (dahp.training.train, "train_many"),
        (dahp.training.train, "train_one"),
        (dahp.training.ground_truth, "train_many"),
    ]:
        monkeypatch.setattr(module, name, trained)


def test_default_config_and_its_keys_are_unchanged():
    assert GroundTruthConfig().as_dict() == {"alpha": 0.5, "n_models": 50, "seed": 0, "models_per_chunk": 25}
    assert GroundTruthConfig(n_models=7).as_dict() == {"alpha": 0.5, "n_models": 7, "seed": 0, "models_per_chunk": 25}
    assert DATTRI.as_dict() == {**GroundTruthConfig().as_dict(), "source": "dattri"}


def test_bad_source_and_ignored_fields_are_refused():
    with pytest.raises(InvalidParameterError, match=r"invalid source='dattri-lds'; valid: one of 'retrain', 'dattri'"):
        GroundTruthConfig(source="dattri-lds")
    for field, value in (("n_models", 10), ("alpha", 0.3), ("seed", 1)):
        with pytest.raises(InvalidParameterError, match=rf"invalid {field}=.*with source='dattri'"):
            GroundTruthConfig(source="dattri", **{field: value})


def test_grid_on_dattris_benchmark(dattri_dir, no_training, tmp_path):
    """The grid attributes dattri's full-data models on dattri's points (TRAK agrees with dattri's own
    TRAKAttributor on them) and its LDS is dahp.attribution.lds of those scores against the folder's targets."""
    cache = Cache(tmp_path / "cache")
    spec = make_grid_spec("mnist_lr", "trak", GRID, {"ensemble_size": 2}, DATTRI, n_queries=20)
    record = run_grid(spec, cache, progress=False, device="cpu")

    source = dattri_dir / "benchmark" / "mnist_lr"
    targets, subsets = torch.load(source / TARGETS_FILE), torch.load(source / INDICES_FILE)
    assert (targets < 0).all()  # dattri's negated loss: it enters the LDS as it is stored
    folder = read_benchmark(dattri_dir, "mnist_lr")
    points = benchmark_setting(folder)
    queries = torch.as_tensor(np.linspace(0, 499, 20).round().astype(int))
    assert sorted(set(record.per_query["query"])) == queries.tolist()
    for dim in GRID["proj_dim"]:
        params = make_params("trak", proj_dim=dim, ensemble_size=2)
        member_scores = scorer(points, "trak", params, "test", cache, progress=False, query_index=queries)
        for lam in GRID["regularization"]:
            scores = member_scores.scores(lam)
            if lam == GRID["regularization"][dim == 32]:  # dattri's own TRAK is slow: two of the four points
                reference = dattri_bridge.run_trak(
                    points, list(folder.models_full), dim, lam, "test", query_index=queries
                )
                assert ((scores - reference.double()).norm() / reference.double().norm()).item() < 1e-4
            by_hand = lds(scores, targets[:, queries], subsets)
            np.testing.assert_array_equal(record.per_query_at(proj_dim=dim, regularization=lam), by_hand.per_query)
            row = record.table[(record.table.proj_dim == dim) & (record.table.regularization == lam)]
            assert row.lds_mean.item() == pytest.approx(by_hand.mean, abs=1e-12)

    # the record names the folder and its content digest, and never replaces the retrained grid's files
    assert record.stem == "grid_mnist_lr_trak_proj_dim_regularization_dattri"
    truth = record.spec["ground_truth"]
    assert truth["source"] == "dattri" and truth["folder"] == str(source)
    assert (truth["n_models"], truth["alpha"]) == (6, 0.5)
    assert truth["sha256"] == benchmark_models(points).identity()["sha256"]
    saved = tmp_path / "results"
    saved.mkdir()
    record.save(saved)
    assert GridRecord.load(saved, record.stem).stem == record.stem
    assert not (saved / "grid_mnist_lr_trak_proj_dim_regularization.json").exists()


def test_the_attributed_model_is_dattris(dattri_dir, no_training, tmp_path):
    """IF explicit (one model) and IFFIM take dattri's full-data model 0: the scores equal those of the
    same computation on a setting whose model is that checkpoint and nothing else."""
    folder = read_benchmark(dattri_dir, "mnist_lr")
    points = attributed_setting("mnist_lr", DATTRI)
    assert points.data().fingerprint == benchmark_setting(folder).data().fingerprint
    queries = torch.arange(0, 500, 50)
    scores = scorer(points, "iffim", make_params("iffim", proj_dim=64), "test", Cache(tmp_path / "c"), False, queries)
    # IFFIM by its definition on dattri's model 0: -g_train (F + λI)^-1 g_query with F = GᵀG / n
    from dahp.attribution.features import gradient_features

    spec = {"test": "dattri full model 0"}
    kw = dict(proj_dims=(64,), cache=Cache(tmp_path / "d"), progress=False)
    G = gradient_features(points, folder.models_full[0], spec, "train", "loss", **kw)[64].double()
    g = gradient_features(points, folder.models_full[0], spec, "test", "target", **kw)[64].double()[queries]
    fisher = G.T @ G / len(G) + 1e-5 * torch.eye(64, dtype=torch.float64)
    expected = -G @ torch.linalg.solve(fisher, g.T)
    assert ((scores.scores(1e-5) - expected).norm() / expected.norm()).item() < 1e-6


def test_folder_identity_is_its_contents(dattri_dir, tmp_path):
    """The identity (in every cache key built on dattri's points) follows the files' contents, not their path."""
    points = attributed_setting("mnist_lr", DATTRI)
    before = points.spec()
    assert before["model"]["ground_truth_source"] == "dattri" and before["model"]["benchmark"] == "mnist_lr"
    copy = tmp_path / "copy"
    shutil.copytree(dattri_dir, copy)  # new paths and times, same contents
    assert benchmark_setting(read_benchmark(copy, "mnist_lr")).spec() == before
    checkpoint = copy / "benchmark" / "mnist_lr" / "models_full" / "1" / "model_weights_0.pt"
    state = torch.load(checkpoint)
    torch.save({k: v + 1 for k, v in state.items()}, checkpoint)
    changed = benchmark_setting(read_benchmark(copy, "mnist_lr")).spec()
    assert changed["model"]["sha256"] != before["model"]["sha256"] and changed["data"] == before["data"]


def test_what_dattris_published_models_cannot_do_is_refused_before_compute(dattri_dir, no_training):
    def refused(parameter, match, **kwargs):
        arguments = {"vary": {"regularization": [0.0]}, "fixed": {"ensemble_size": 2}} | kwargs
        attributor = arguments.pop("attributor", "trak")
        with pytest.raises(InvalidParameterError, match=match) as caught:
            make_grid_spec(
                "mnist_lr", attributor, arguments["vary"], arguments["fixed"], DATTRI, **arguments.get("kw", {})
            )
        assert caught.value.parameter == parameter

    # an epoch sweep: dattri publishes only final weights
    refused("training_epoch", "only their final weights", vary={"training_epoch": [1, 2]})
    refused("training_epoch", "only their final weights", fixed={"ensemble_size": 2, "training_epoch": 3})
    refused("ensemble_size", r"1\.\.2 \(the full-data models dattri published", fixed={"ensemble_size": 3})
    refused("attributor", "iffim, trak, if_explicit", attributor="if_cg", fixed={})
    refused("attributor", "iffim, trak, if_explicit", attributor="grad_dot", vary={"proj_dim": [None]}, fixed={})
    refused("split", "no validation queries", kw={"split": "val"})


def test_ground_truth_refuses_our_own_points(dattri_dir):
    with pytest.raises(InvalidParameterError, match="dattri's full-data model on dattri's points"):
        ground_truth("mnist_lr", DATTRI)
    truth = ground_truth(attributed_setting("mnist_lr", DATTRI), DATTRI)
    assert (truth.n_models, truth.alpha) == (6, 0.5)


def test_missing_folder_or_points_are_named_before_compute(tmp_path, monkeypatch, no_training):
    monkeypatch.setenv("DAHP_DATTRI_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(MissingDataError, match=str(tmp_path / "nowhere" / "benchmark" / "mnist_lr") + ": missing"):
        make_grid_spec("mnist_lr", "trak", GRID, {"ensemble_size": 2}, DATTRI)
    root = tmp_path / "dattri"
    write_fixture(root, "mnist_lr")  # checkpoints and ground truth, but no data points
    monkeypatch.setenv("DAHP_DATTRI_DIR", str(root))
    with pytest.raises(MissingDataError, match=MNIST_FILES["train"][0] + ": missing"):
        make_grid_spec("mnist_lr", "trak", GRID, {"ensemble_size": 2}, DATTRI)
    assert not (root / "dataset" / MNIST_RAW).exists()


def test_command_line(dattri_dir, no_training, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAHP_DATA_DIR", str(tmp_path / "data"))
    grid = ["grid", "--setting", "mnist_lr", "--attributor", "trak", "--vary", "proj_dim=16", "--device", "cpu"]
    grid += ["--fixed", "ensemble_size=2", "--queries", "10"]
    assert main([*grid, "--ground-truth", "dattri"]) == 0
    out = capsys.readouterr().out
    assert "in place of our retraining" in out
    assert (tmp_path / "data" / "results" / "cli" / "grid_mnist_lr_trak_proj_dim_dattri.csv").exists()
    assert main([*grid, "--ground-truth", "dattri-lds"]) == 2
    assert capsys.readouterr().err.strip() == "error: invalid source='dattri-lds'; valid: one of 'retrain', 'dattri'"
    assert main([*grid, "--ground-truth", "dattri", "--n-models", "10"]) == 2
    assert "invalid n_models=10" in capsys.readouterr().err
