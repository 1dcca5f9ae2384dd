"""The settings registry and the fixed, documented embedded MNIST split."""

import pickle

import numpy as np
import pytest
import torch

from dahp.core.config import InvalidParameterError
from dahp.data.settings import (
    MNIST_PER_CLASS,
    MissingDataError,
    _split_by_class,
    available_settings,
    get_setting,
    load_cifar2,
)


def test_registry_holds_the_papers_settings():
    # tests add *_quick; importing dahp.experiments.suite adds the robustness suite's suite_* problems
    paper = [name for name in available_settings() if not name.endswith("_quick") and not name.startswith("suite_")]
    assert paper == ["mnist_lr", "mnist_mlp", "cifar2_resnet9", "wikitext2_gpt2", "maestro_mt"]
    assert [n for n in available_settings(embedded_only=True) if n in paper] == ["mnist_lr", "mnist_mlp"]


def test_unknown_setting_names_the_valid_choices():
    with pytest.raises(InvalidParameterError) as error:
        get_setting("mnist_cnn")
    message = str(error.value)
    assert "setting" in message and "'mnist_cnn'" in message and "'mnist_mlp'" in message


@pytest.mark.parametrize("name, params", [("mnist_lr", 7_850), ("mnist_mlp", 109_386)])
def test_models_are_dattris_benchmark_models(name, params):
    assert get_setting(name).n_params() == params


def test_mnist_split_sizes_balance_and_standardization():
    data = get_setting("mnist_lr").data()
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (4000, 500, 500)
    for labels, per_class in [(data.y_train, 400), (data.y_val, 50), (data.y_test, 50)]:
        assert torch.bincount(labels, minlength=10).tolist() == [per_class] * 10
    assert data.x_train.dtype == torch.float32 and data.x_train.shape[1] == 784
    assert data.x_train.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert data.x_train.std().item() == pytest.approx(1.0, abs=1e-3)


def test_split_is_a_partition_and_reproducible():
    labels = np.repeat(np.arange(10), 500)
    first = _split_by_class(labels, MNIST_PER_CLASS, seed=0)
    again = _split_by_class(labels, MNIST_PER_CLASS, seed=0)
    together = np.concatenate(list(first.values()))
    assert len(together) == len(np.unique(together)) == 5000
    assert all(np.array_equal(first[k], again[k]) for k in first)


def test_both_mnist_settings_share_one_split_and_fingerprint():
    assert get_setting("mnist_lr").data().fingerprint == get_setting("mnist_mlp").data().fingerprint


def test_missing_user_data_stops_with_what_to_put_where(tmp_path):
    setting = get_setting("cifar2_resnet9")
    with pytest.raises(MissingDataError) as error:
        setting.data(tmp_path)
    message = str(error.value)
    assert "cifar2_resnet9" in message
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
    assert "cifar-10-python.tar.gz" in message


def _write_fake_cifar(root, n_per_batch=1400):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"labels": list(rng.choice([3, 5, 1], n_per_batch, p=[0.45, 0.45, 0.1])),
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)


def test_cifar2_loader_reads_the_python_batches(tmp_path):
    _write_fake_cifar(tmp_path)
    get_setting("cifar2_resnet9").check_data(tmp_path)  # all files present: no error
    data = load_cifar2(tmp_path)
    assert data.x_train.shape == (5000, 3, 32, 32) and len(data.y_val) == 500
    assert set(data.y_train.tolist()) == {0, 1}  # cat -> 0, dog -> 1, other classes dropped
    assert data.x_train.min() >= -1 and data.x_train.max() <= 1
