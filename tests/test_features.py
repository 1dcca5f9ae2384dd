"""Per-example gradients and dattri's projections, computed once and nested."""

import math

import pytest
import torch

from dahp.attribution.features import (
    PROJECTOR_ENV,
    Projection,
    gradient_features,
    per_example_gradients,
    project,
    project_nested,
    project_on_device,
    projection_block,
    projection_generator,
)
from dahp.core.config import InvalidParameterError
from dahp.data.settings import get_setting
from dahp.training.train import train_full
from helpers import quick


def test_per_example_gradients_equal_an_autograd_loop():
    setting = quick("mnist_mlp", epochs=1)
    state = train_full(setting, progress=False).state()
    data = setting.data()
    x, y = data.x_test[:5], data.y_test[:5]
    rows = per_example_gradients(setting, state, x, y, setting.target)
    model = setting.make_model().eval()
    model.load_state_dict(state)
    for i in range(5):
        model.zero_grad()
        setting.target(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(rows[i], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dims", [(128, 300, 512), (100, 250)])
def test_nested_projection_equals_dattri_at_every_dimension(dims):
    features = torch.randn(7, 900, generator=torch.Generator().manual_seed(0))
    nested = project_nested(features, dims, seed=3, ensemble_id=2)
    for dim in dims:
        torch.testing.assert_close(nested[dim], project(features, Projection(dim, 3, 2)), rtol=1e-5, atol=1e-6)


def test_projection_depends_on_seed_and_ensemble_member():
    features = torch.randn(4, 500, generator=torch.Generator().manual_seed(0))
    base = project(features, Projection(128))
    assert not torch.allclose(base, project(features, Projection(128, seed=1)))
    assert not torch.allclose(base, project(features, Projection(128, ensemble_id=1)))
    # a Gaussian sketch scaled by 1/sqrt(dim) preserves squared norms on average
    ratio = base.norm(dim=1) ** 2 / features.norm(dim=1) ** 2
    assert 0.7 < ratio.mean().item() < 1.3


def test_gradient_features_cached_and_projected_consistently(cache):
    setting = quick("mnist_lr", epochs=1)
    state = train_full(setting, cache=cache, progress=False).state()
    spec = {"test": 1}
    found = gradient_features(setting, state, spec, "val", "loss", proj_dims=(None, 256), cache=cache, progress=False)
    assert found[None].shape == (500, 7850) and found[256].shape == (500, 256)
    torch.testing.assert_close(found[256], project(found[None], Projection(256)), rtol=1e-5, atol=1e-6)
    again = gradient_features(setting, state, spec, "val", "loss", proj_dims=(256,), cache=cache, progress=False)
    assert torch.equal(again[256], found[256])


def test_trak_features_are_margin_gradients_scaled_by_root_parameter_count(cache):
    setting = quick("mnist_lr", epochs=1)
    state = train_full(setting, cache=cache, progress=False).state()
    spec = {"test": 2}
    trak = gradient_features(setting, state, spec, "test", "trak", cache=cache, progress=False)[None]
    target = gradient_features(setting, state, spec, "test", "target", cache=cache, progress=False)[None]
    torch.testing.assert_close(trak, target / math.sqrt(7850))


def test_projection_larger_than_parameter_count_is_refused():
    setting = get_setting("mnist_lr")
    with pytest.raises(InvalidParameterError, match=r"proj_dim=8000.*1\.\.7850"):
        gradient_features(setting, {}, {}, "test", "loss", proj_dims=(8000,))


def test_the_device_projector_is_dattris_on_the_cpu_and_keys_change_only_off_it(monkeypatch):
    features = torch.randn(5, 700, generator=torch.Generator().manual_seed(2))
    assert projection_generator("cpu", "device") == "cpu"  # the CPU's own generator is dattri's
    assert projection_generator("cpu") == "cpu"
    monkeypatch.setenv(PROJECTOR_ENV, "device")
    assert projection_generator("cpu") == "cpu"
    # a generator named in the projection is used even on the CPU path, and gives dattri's numbers there
    forced = project_on_device(features, Projection(300, seed=4, ensemble_id=1, generator="cpu"), "cpu")
    torch.testing.assert_close(forced, project(features, Projection(300, seed=4, ensemble_id=1)), rtol=1e-5, atol=1e-6)
    assert Projection(300).as_dict() == {"dim": 300, "seed": 0, "ensemble_id": 0}  # keys from before the option
    assert Projection(300, generator="cuda").as_dict()["generator"] == "cuda"


def test_bad_projector_and_a_generator_for_another_device_are_refused(monkeypatch):
    with pytest.raises(InvalidParameterError, match="projector"):
        projection_generator("cpu", "fast")
    monkeypatch.setenv(PROJECTOR_ENV, "sjlt")
    with pytest.raises(InvalidParameterError, match="projector"):
        projection_generator("cpu")
    with pytest.raises(InvalidParameterError, match="generator"):
        projection_block(10, Projection(128, generator="cuda"), 0, torch.float32, "cpu")
