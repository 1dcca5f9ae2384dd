"""CIFAR-2: the fixture is in the real format, the loader checks the format, ResNet-9 trains batched on it."""

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from dahp.core.config import TrainingRecipe
from dahp.data.cifar import (
    CIFAR_DIR,
    FIXTURE_LABELS,
    TEST_BATCH,
    TRAIN_BATCHES,
    load_cifar2,
    split_sizes,
    write_fixture,
)
from dahp.data.settings import MissingDataError, get_setting
from dahp.training.train import accuracy_many, evaluate_many, train_many


def test_fixture_is_written_in_the_real_batch_format(tmp_path):
    write_fixture(tmp_path)
    for name in [*TRAIN_BATCHES, TEST_BATCH]:
        raw = (tmp_path / CIFAR_DIR / name).read_bytes()
        assert raw[:2] == b"\x80\x02"  # pickle protocol 2, as the Python 2 originals
        batch = pickle.loads(raw, encoding="bytes")
        assert list(batch) == [b"batch_label", b"labels", b"data", b"filenames"]
        assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (len(FIXTURE_LABELS), 3072)
        assert batch[b"labels"] == list(FIXTURE_LABELS) and all(type(v) is int for v in batch[b"labels"])
        assert all(isinstance(f, bytes) for f in batch[b"filenames"]) and isinstance(batch[b"batch_label"], bytes)
    assert (tmp_path / CIFAR_DIR / "batches.meta").is_file()


def test_fixture_round_trip_through_the_setting(tmp_path, monkeypatch):
    write_fixture(tmp_path)
    monkeypatch.setenv("DAHP_DATA_DIR", str(tmp_path))
    data = get_setting("cifar2_resnet9").data()  # the data directory comes from the environment
    cat_dog = [int(v == 5) for v in FIXTURE_LABELS if v in (3, 5)]  # per batch, in file order
    n_train, n_val, n_test = split_sizes(5 * len(cat_dog), len(cat_dog))
    assert (n_train, n_val, n_test) == (18, 2, 4)
    assert data.y_train.tolist() == (cat_dog * 5)[:18] and data.y_val.tolist() == (cat_dog * 5)[18:20]
    assert data.y_test.tolist() == cat_dog
    first = pickle.loads((tmp_path / CIFAR_DIR / "data_batch_1").read_bytes(), encoding="bytes")[b"data"][0]
    expected = torch.from_numpy((first.astype(np.float32) / 255.0 - 0.5) / 0.5).view(3, 32, 32)
    assert torch.equal(data.x_train[0], expected)  # the first image is a cat: kept, pixels to [-1, 1]
    assert data.x_train.shape == (18, 3, 32, 32) and data.x_train.dtype == torch.float32


def test_real_sizes_are_dattris():
    assert split_sizes(10_000, 2_000) == (5000, 500, 500)


def _rewrite(path, change):
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    path.write_bytes(pickle.dumps(change(batch), protocol=2))


@pytest.mark.parametrize(
    ("corrupt", "phrase"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "cannot be unpickled"),
        (lambda p: p.write_bytes(pickle.dumps([1, 2, 3])), "not a dict"),
        (lambda p: _rewrite(p, lambda b: {k: v for k, v in b.items() if k != b"labels"}), "lacks the key"),
        (lambda p: _rewrite(p, lambda b: {**b, b"data": b[b"data"].astype(np.float32)}), "uint8"),
        (lambda p: _rewrite(p, lambda b: {**b, b"data": b[b"data"][:, :3071]}), "shape (N, 3072)"),
        (lambda p: _rewrite(p, lambda b: {**b, b"labels": b[b"labels"][:-1]}), "one per image"),
        (lambda p: _rewrite(p, lambda b: {**b, b"labels": [10, *b[b"labels"][1:]]}), "0..9"),
    ],
)
def test_a_malformed_batch_names_itself(tmp_path, corrupt, phrase):
    write_fixture(tmp_path)
    bad = tmp_path / CIFAR_DIR / "data_batch_3"
    corrupt(bad)
    with pytest.raises(MissingDataError) as error:
        load_cifar2(tmp_path)
    message = str(error.value)
    assert str(bad) in message and phrase in message
    assert "cifar-10-python.tar.gz" in message  # where the real data comes from


def test_a_full_size_batch_must_be_the_real_file(tmp_path):
    write_fixture(tmp_path)
    fake = tmp_path / CIFAR_DIR / TEST_BATCH
    _rewrite(fake, lambda b: {**b, b"data": np.zeros((10_000, 3072), np.uint8), b"labels": [3] * 10_000})
    with pytest.raises(MissingDataError, match="MD5") as error:
        load_cifar2(tmp_path)
    assert str(fake) in str(error.value)


def test_too_few_cats_and_dogs_is_refused(tmp_path):
    write_fixture(tmp_path)
    _rewrite(tmp_path / CIFAR_DIR / TEST_BATCH, lambda b: {**b, b"labels": [0] * len(b[b"labels"])})
    with pytest.raises(MissingDataError, match="too few"):
        load_cifar2(tmp_path)


def test_resnet9_trains_batched_on_the_fixture_and_evaluates_with_its_running_statistics(tmp_path):
    torch.set_num_threads(1)
    write_fixture(tmp_path)
    setting = dataclasses.replace(
        get_setting("cifar2_resnet9"), recipe=TrainingRecipe(epochs=1, batch_size=4, lr=0.01, momentum=0.9)
    )
    data = setting.data(tmp_path)
    index_sets = torch.stack([torch.arange(0, 10), torch.arange(8, 18)])
    state = train_many(setting, data.x_train, data.y_train, index_sets, [0, 1], device="cpu")
    assert state["bn1.running_mean"].shape == (2, 64) and state["bn1.num_batches_tracked"].tolist() == [3, 3]
    assert not torch.equal(state["bn1.running_mean"][0], state["bn1.running_mean"][1])  # each model its own
    margins = evaluate_many(setting, state, data.x_test, data.y_test, device="cpu")
    assert margins.shape == (2, 4) and margins.device.type == "cpu"
    for k in range(2):
        model = setting.make_model()
        model.load_state_dict({name: value[k] for name, value in state.items()})
        with torch.no_grad():
            expected = setting.target(model.eval()(data.x_test), data.y_test)
        torch.testing.assert_close(margins[k], expected, rtol=1e-5, atol=1e-5)
    accuracy = accuracy_many(setting, state, data.x_test, data.y_test, device="cpu")
    assert torch.equal(accuracy, (margins > 0).float().mean(dim=1))
