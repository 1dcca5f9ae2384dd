"""One ``device`` honoured end to end: the CPU numbers do not depend on how the CPU is named, the
device paths compute the CPU's numbers, and a bad ``--device`` fails before any compute."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dahp.attribution import attributors as attr
from dahp.attribution import spectral
from dahp.attribution.features import Projection, project, project_nested, project_on_device
from dahp.attribution.lds import _subset_sums_torch, subset_sums
from dahp.cli import main
from dahp.core.cache import Cache
from dahp.core.config import GroundTruthConfig
from dahp.data.settings import get_setting
from dahp.experiments.grid import make_grid_spec, run_grid
from dahp.training.ground_truth import ground_truth
from helpers import registered, small

TRUTH = GroundTruthConfig(n_models=6, models_per_chunk=6)
#: Every way to name the CPU; no name at all means the CPU only where CUDA is absent.
CPU_SPELLINGS = ["cpu", torch.device("cpu")] + ([] if torch.cuda.is_available() else [None])


def small_lr() -> str:
    return registered(small("mnist_lr"), "mnist_lr_small_device_quick")


def test_cpu_results_are_identical_whatever_the_cpu_is_called(tmp_path, monkeypatch):
    """Every spelling of the CPU (and ``$DAHP_DEVICE=cpu``) recomputes, in its own cache, the same bits."""
    monkeypatch.delenv("DAHP_DEVICE", raising=False)
    setting = get_setting(small_lr())
    runs = [(device, {}) for device in CPU_SPELLINGS] + [(None, {"DAHP_DEVICE": "cpu"})]
    outcomes = []
    for k, (device, environment) in enumerate(runs):
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        cache = Cache(tmp_path / f"cache{k}")
        iffim = attr.scorer(setting, "iffim", attr.make_params("iffim", proj_dim=128), cache=cache, device=device)
        trak = attr.scorer(
            setting, "trak", attr.make_params("trak", proj_dim=256, ensemble_size=1), cache=cache, device=device
        )
        truth = ground_truth(setting, TRUTH, cache, progress=False, device=device)
        outcomes.append((iffim.scores(1e-2), trak.scores(1e-1), truth.targets("test"), truth.test_accuracy))
        for name in environment:
            monkeypatch.delenv(name)
    reference = outcomes[0]
    assert reference[0].abs().max() > 0 and reference[1].abs().max() > 0
    for other in outcomes[1:]:
        for a, b in zip(reference, other):
            assert torch.equal(a, b)


def test_grid_table_is_identical_for_none_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("DAHP_DATA_DIR", str(tmp_path / "data"))
    spec = make_grid_spec(small_lr(), "iffim", {"proj_dim": [128, None], "regularization": [1e-3, 1.0]}, {}, TRUTH)
    tables = [
        run_grid(spec, cache=Cache(tmp_path / f"c{k}"), progress=False, device=device).table
        for k, device in enumerate(CPU_SPELLINGS)
    ]
    columns = ["proj_dim", "regularization", "lds_mean", "lds_sem", "n_dropped"]
    for table in tables[1:]:
        assert table[columns].equals(tables[0][columns])


@pytest.mark.parametrize("dim", [64, 100, 250])
@pytest.mark.parametrize("ensemble_id", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_device_projection_draws_dattris_cpu_matrix(dim, ensemble_id, dtype):
    """What a CUDA device runs (dattri's CPU blocks, multiplied where the features are) equals
    dattri's CPU projector, here computed with the CPU as the device."""
    features = torch.randn(37, 530, generator=torch.Generator().manual_seed(1), dtype=dtype)
    projection = Projection(dim, seed=5, ensemble_id=ensemble_id)
    expected = project(features, projection, "cpu")
    found = project_on_device(features, projection, "cpu")
    assert found.dtype == expected.dtype and found.shape == (37, dim)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(found, expected, rtol=tolerance, atol=tolerance * float(expected.abs().max()))
    other = project_on_device(features, Projection(dim, seed=6, ensemble_id=ensemble_id), "cpu")
    assert not torch.allclose(other, expected)


def test_nested_projection_on_the_device_path_equals_dattri(monkeypatch):
    """``project_nested`` routed through the device path (as on CUDA) gives dattri's numbers."""
    features = torch.randn(20, 400, generator=torch.Generator().manual_seed(2))
    expected = project_nested(features, [128, 256], seed=1, ensemble_id=1, device="cpu")
    monkeypatch.setattr(
        "dahp.attribution.features.project", lambda f, p, device=None: project_on_device(f, p, "cpu"), raising=True
    )
    found = project_nested(features, [128, 256], seed=1, ensemble_id=1, device="cpu")
    for dim in (128, 256):
        torch.testing.assert_close(found[dim], expected[dim], rtol=1e-5, atol=1e-5 * float(expected[dim].abs().max()))


def test_subset_sums_on_a_device_equal_numpy():
    generator = np.random.default_rng(0)
    scores = generator.standard_normal((50, 7))
    subsets = np.stack([np.sort(generator.choice(50, 25, replace=False)) for _ in range(9)])
    expected = subset_sums(scores, subsets, device="cpu")
    np.testing.assert_allclose(_subset_sums_torch(scores, subsets, torch.device("cpu")), expected, rtol=1e-12)
    np.testing.assert_allclose(expected[0], scores[subsets[0]].sum(0), rtol=1e-12)


def test_eigendecomposition_falls_back_to_the_cpu_when_the_device_runs_out_of_memory(monkeypatch):
    matrix = torch.randn(30, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    matrix = matrix @ matrix.T
    expected = spectral.symmetric_eigh(matrix, "cpu")
    tried = []

    def out_of_memory(m, device):
        tried.append(device)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(spectral, "resolve_device", lambda device=None: torch.device("cuda"))
    monkeypatch.setattr(spectral, "_device_eigh", out_of_memory)
    values, vectors = spectral.symmetric_eigh(matrix)
    assert tried == [torch.device("cuda")]
    assert torch.equal(values, expected[0]) and torch.equal(vectors, expected[1])


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--setting", "mnist_lr"],
        ["ground-truth", "--setting", "mnist_lr"],
        ["grid", "--setting", "mnist_lr", "--attributor", "iffim", "--vary", "regularization=1"],
        ["selection"],
        ["select", "--setting", "mnist_lr", "--attributor", "iffim"],
        ["run-plan", "--profile", "quick"],
    ],
)
def test_bad_device_on_the_command_line_fails_before_any_compute(command, monkeypatch, capsys):
    for name in ("_cmd_train", "_cmd_ground_truth", "_cmd_grid", "_cmd_selection", "_cmd_select", "_cmd_run_plan"):
        monkeypatch.setattr(f"dahp.cli.{name}", lambda args: pytest.fail("computed despite a bad --device"))
    assert main([*command, "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: invalid device='gpu'; valid: 'cpu', 'cuda' or 'cuda:N'"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_on_the_command_line_without_cuda_says_so(monkeypatch, capsys):
    monkeypatch.setattr("dahp.cli._cmd_grid", lambda args: pytest.fail("computed without a device"))
    command = ["grid", "--setting", "mnist_lr", "--attributor", "iffim", "--vary", "regularization=1"]
    assert main([*command, "--device", "cuda"]) == 2
    assert "this machine has no CUDA device" in capsys.readouterr().err


def test_the_command_line_passes_the_device_down(monkeypatch):
    seen = []
    monkeypatch.setattr("dahp.cli._cmd_select", lambda args: seen.append(args.device))
    assert main(["select", "--setting", "mnist_lr", "--attributor", "iffim", "--device", "cpu"]) == 0
    assert seen == [torch.device("cpu")]


def test_run_plan_hands_the_device_to_the_notebook_kernels_through_the_environment(monkeypatch):
    monkeypatch.setenv("DAHP_DEVICE", "")  # restored after the test
    seen = []
    monkeypatch.setattr("dahp.book.plan.run_plan", lambda *a, **k: seen.append(os.environ["DAHP_DEVICE"]))
    assert main(["run-plan", "--profile", "quick", "--device", "cpu"]) == 0
    assert seen == ["cpu"]
