"""The CUDA path computes what the CPU path computes (skipped where no CUDA device is present).

The CPU is the reference: its numbers are pinned (``test_device_pin.py``) and compared with dattri
elsewhere. Here every stage that takes ``device`` runs once on the CPU and once on CUDA on the same
inputs, and the two must agree to float32 rounding -- or, for the LDS (a rank statistic over 400
training points, where reordering near-ties moves it), to a small absolute difference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dahp.attribution import spectral
from dahp.attribution.attributors import TRAKParams, checkpoint_spec, trak_scorer
from dahp.attribution.features import Projection, per_example_gradients, project
from dahp.attribution.lds import lds
from dahp.core.config import GroundTruthConfig
from dahp.training.ground_truth import ground_truth
from dahp.training.train import StackedState, train_full, train_many, train_one
from helpers import registered, small

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = "cuda"


def max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


def test_training_on_cuda_matches_the_cpu_and_batched_matches_sequential_there():
    setting = small("mnist_lr", epochs=2)
    data = setting.data()
    indices = torch.arange(0, data.n_train, 2)
    on_cpu = train_one(setting, data.x_train, data.y_train, indices, seed=3, device="cpu").state_dict()
    on_cuda = train_one(setting, data.x_train, data.y_train, indices, seed=3, device=CUDA).state_dict()
    for name in on_cpu:
        assert on_cuda[name].device.type == "cpu", "trained states come back to the CPU"
        assert max_relative(on_cuda[name], on_cpu[name]) < 1e-4, name

    index_sets = torch.stack([indices, torch.arange(1, data.n_train, 2)])
    stacked: StackedState = train_many(setting, data.x_train, data.y_train, index_sets, [3, 4], device=CUDA)
    second = train_one(setting, data.x_train, data.y_train, index_sets[1], seed=4, device=CUDA).state_dict()
    for name in on_cpu:
        assert max_relative(stacked[name][0], on_cuda[name]) < 1e-4, name
        assert max_relative(stacked[name][1], second[name]) < 1e-4, name


def test_gradients_and_projection_on_cuda_match_the_cpu(cache):
    setting = small("mnist_mlp", epochs=1)
    state = train_full(setting, 0, cache, progress=False, device="cpu").state()
    data = setting.data()
    x, y = data.x_test[:64], data.y_test[:64]
    on_cpu = per_example_gradients(setting, state, x, y, setting.target, device="cpu")
    on_cuda = per_example_gradients(setting, state, x, y, setting.target, device=CUDA)
    assert on_cuda.shape == on_cpu.shape
    assert max_relative(on_cuda, on_cpu) < 1e-4

    projection = Projection(256, seed=0, ensemble_id=1)
    assert max_relative(project(on_cpu, projection, CUDA), project(on_cpu, projection, "cpu")) < 1e-4


@pytest.mark.parametrize(("n", "p"), [(300, 80), (80, 300)])  # primal and dual forms
def test_factorization_on_cuda_matches_the_cpu(n, p):
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(n, p, generator=generator)
    queries = torch.randn(7, p, generator=generator)
    on_cpu = spectral.factorize(train, queries, scale=1.0 / n, sign=-1.0, device="cpu")
    on_cuda = spectral.factorize(train, queries, scale=1.0 / n, sign=-1.0, device=CUDA)
    assert on_cuda.eigenvalues.device.type == "cpu", "factors come back to the CPU"
    top = on_cpu.eigenvalues.max().item()
    for lam in (1e-3 * top, 1e-1 * top, top):
        assert max_relative(on_cuda.scores(lam), on_cpu.scores(lam)) < 1e-5, lam


def test_ground_truth_and_lds_on_cuda_match_the_cpu():
    name = registered(small("mnist_lr", epochs=2), "mnist_lr_small_cuda_quick")
    config = GroundTruthConfig(n_models=8, models_per_chunk=4)
    truth_cpu = ground_truth(name, config, progress=False, device="cpu")
    truth_cuda = ground_truth(name, config, progress=False, device=CUDA)
    np.testing.assert_array_equal(truth_cuda.subsets, truth_cpu.subsets)
    assert max_relative(truth_cuda.targets("test"), truth_cpu.targets("test")) < 1e-4

    scores = torch.randn(400, 500, generator=torch.Generator().manual_seed(1))
    on_cpu = lds(scores, truth_cpu.targets("test"), truth_cpu.subsets, device="cpu")
    on_cuda = lds(scores, truth_cpu.targets("test"), truth_cpu.subsets, device=CUDA)
    np.testing.assert_allclose(on_cuda.per_query, on_cpu.per_query, atol=1e-9)


def test_trak_on_cuda_matches_trak_on_the_cpu(cache):
    setting = small("mnist_mlp", epochs=2)
    states = [train_full(setting, seed, cache, progress=False, device="cpu").state() for seed in range(2)]
    specs = [checkpoint_spec(setting, k, 2) for k in range(2)]
    params = TRAKParams(proj_dim=256, ensemble_size=2)
    on_cpu = trak_scorer(setting, states, specs, params, "test", cache, progress=False, device="cpu")
    fresh = type(cache)(cache.root / "cuda")  # nothing shared: the CUDA run computes its own features
    on_cuda = trak_scorer(setting, states, specs, params, "test", fresh, progress=False, device=CUDA)
    top = max(m.eigenvalues.max().item() for m in on_cpu.members)
    for lam in (1e-3 * top, top):
        assert max_relative(on_cuda.scores(lam), on_cpu.scores(lam)) < 1e-3, lam


@pytest.mark.parametrize("attributor", ["iffim", "trak"])
def test_the_pinned_cpu_grid_is_reproduced_on_cuda_up_to_rank_ties(attributor):
    from test_device_pin import PINNED, grid_values

    found = grid_values(attributor, device=CUDA)
    for key, (mean, _) in PINNED.items():
        if key[0] == attributor:
            assert abs(found[key][0] - mean) < 0.01, (key, found[key][0], mean)


def test_the_device_projector_draws_its_own_gaussian_on_cuda_under_its_own_key(cache, monkeypatch):
    from dahp.attribution.features import PROJECTOR_ENV, gradient_features

    rows = torch.randn(64, 3000, generator=torch.Generator().manual_seed(5))
    dattri_matrix = project(rows, Projection(512), CUDA)
    own = project(rows, Projection(512, generator="cuda"), CUDA)
    assert own.device.type == "cuda"
    assert max_relative(own, dattri_matrix) > 0.5, "another matrix"
    again = project(rows, Projection(512, generator="cuda"), CUDA)
    assert torch.equal(own, again), "seeded: the same matrix every time"
    ratio = (own.norm(dim=1) ** 2 / rows.cuda().norm(dim=1) ** 2).mean().item()
    assert abs(ratio - 1) < 0.1, "a Gaussian sketch scaled by 1/sqrt(dim) keeps squared norms on average"

    setting = small("mnist_lr", epochs=1)
    state = train_full(setting, 0, cache, progress=False, device="cpu").state()
    spec = checkpoint_spec(setting, 0, 1)
    kw = dict(cache=cache, progress=False, device=CUDA)
    default = gradient_features(setting, state, spec, "test", "trak", (256,), **kw)[256]
    monkeypatch.setenv(PROJECTOR_ENV, "device")
    drawn_on_cuda = gradient_features(setting, state, spec, "test", "trak", (256,), **kw)[256]
    assert max_relative(drawn_on_cuda, default) > 0.5, "not served the default projector's cached entry"
