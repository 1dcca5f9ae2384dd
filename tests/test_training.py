"""Batched (vmap) training reproduces the plain torch.optim loop, model for model; the recipe record."""

import dataclasses

import pytest
import torch
from dattri.benchmark.models.mlp import MLPMnist

from dahp.config import InvalidParameterError, TrainingRecipe, field_help
from dahp.settings import get_setting
from dahp.training import accuracy_many, stack_states, train_full, train_many, train_one
from helpers import TinyBatchNormNet, quick


def subsets(n_models: int, size: int = 1000, n: int = 4000) -> torch.Tensor:
    return torch.stack(
        [torch.randperm(n, generator=torch.Generator().manual_seed(100 + k))[:size] for k in range(n_models)]
    )


def without_dropout(setting, dtype=torch.float32):
    return dataclasses.replace(setting, make_model=lambda: MLPMnist(dropout_rate=0.0).to(dtype))


def train_both(setting, x, y, index_sets, seeds):
    sequential = stack_states([train_one(setting, x, y, ix, s) for ix, s in zip(index_sets, seeds)])
    batched = train_many(setting, x, y, index_sets, seeds)
    return sequential, batched


@pytest.mark.parametrize(
    "recipe",
    [
        {"momentum": 0.9},
        {"momentum": 0.0, "weight_decay": 1e-3},
        {"momentum": 0.5, "weight_decay": 1e-2, "batch_size": 48},  # 1000 % 48 != 0: ragged last batch
    ],
)
def test_batched_equals_sequential_float64(recipe):
    setting = without_dropout(quick("mnist_mlp", **recipe), torch.float64)
    data = setting.data()
    x = data.x_train.double()
    sequential, batched = train_both(setting, x, data.y_train, subsets(3), [7, 8, 9])
    for name in sequential:
        torch.testing.assert_close(batched[name], sequential[name], rtol=0, atol=1e-12)


def test_batched_equals_sequential_float32_logistic_regression():
    setting = quick("mnist_lr", epochs=3)
    data = setting.data()
    sequential, batched = train_both(setting, data.x_train, data.y_train, subsets(4), [1, 2, 3, 4])
    for name in sequential:
        torch.testing.assert_close(batched[name], sequential[name], rtol=1e-4, atol=1e-6)


def test_batched_training_is_deterministic_and_seed_dependent():
    setting = quick("mnist_mlp")  # with dropout
    data = setting.data()
    index_sets = subsets(2)
    first = train_many(setting, data.x_train, data.y_train, index_sets, [5, 6], dropout_seed=3)
    again = train_many(setting, data.x_train, data.y_train, index_sets, [5, 6], dropout_seed=3)
    other = train_many(setting, data.x_train, data.y_train, index_sets, [5, 6], dropout_seed=4)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["fc1.weight"], other["fc1.weight"])  # dropout masks are drawn


def test_with_dropout_batched_and_sequential_models_are_equally_accurate():
    setting = quick("mnist_mlp", epochs=3, lr=0.01, momentum=0.9)
    data = setting.data()
    seeds = list(range(6))
    sequential, batched = train_both(setting, data.x_train, data.y_train, subsets(6, size=2000), seeds)
    acc_seq = accuracy_many(setting, sequential, data.x_test, data.y_test)
    acc_bat = accuracy_many(setting, batched, data.x_test, data.y_test)
    assert acc_seq.mean() > 0.8
    assert abs(acc_seq.mean() - acc_bat.mean()) < 0.015


def test_models_with_buffers_fall_back_to_the_sequential_loop():
    setting = dataclasses.replace(quick("mnist_lr", epochs=1), make_model=TinyBatchNormNet)
    data = setting.data()
    index_sets = subsets(2, size=300)
    stacked = train_many(setting, data.x_train, data.y_train, index_sets, [1, 2])
    reference = train_one(setting, data.x_train, data.y_train, index_sets[1], 2).state_dict()
    assert "norm.running_mean" in stacked
    for name, value in reference.items():
        assert torch.equal(stacked[name][1], value)


def test_full_data_checkpoints_one_per_epoch_and_cached(monkeypatch):
    setting = quick("mnist_lr", epochs=3)
    checkpoints = train_full(setting, progress=False)
    assert checkpoints.epochs == 3
    data = setting.data()
    final = train_one(setting, data.x_train, data.y_train, torch.arange(data.n_train), 0)
    for name, value in final.state_dict().items():
        torch.testing.assert_close(checkpoints.state()[name], value, rtol=1e-4, atol=1e-6)
    assert not torch.equal(checkpoints.state(1)["linear.weight"], checkpoints.state(3)["linear.weight"])
    monkeypatch.setattr("dahp.training.train_many", lambda *a, **k: pytest.fail("retrained despite cache"))
    again = train_full(setting, progress=False)
    assert torch.equal(again.state(2)["linear.weight"], checkpoints.state(2)["linear.weight"])


# --------------------------------------------------------------------------------------------
# The recipe record: new fields, their checks, and cache keys that do not move


def test_as_dict_of_the_sgd_recipes_is_the_old_five_key_dict():
    old = {
        "mnist_lr": {"epochs": 20, "batch_size": 32, "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0},
        "mnist_mlp": {"epochs": 50, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
        "cifar2_resnet9": {"epochs": 10, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
    }
    for name, record in old.items():
        assert get_setting(name).recipe.as_dict() == record


def test_as_dict_keeps_new_fields_that_differ_from_their_defaults():
    recipe = TrainingRecipe(epochs=1, batch_size=8, lr=1e-3, optimizer="adamw", schedule="linear", warmup_steps=5)
    record = recipe.as_dict()
    assert record["optimizer"] == "adamw" and record["schedule"] == "linear" and record["warmup_steps"] == 5
    assert "betas" not in record and "eps" not in record
    assert TrainingRecipe(**record) == recipe
    assert TrainingRecipe(**{**record, "betas": [0.9, 0.98]}).betas == (0.9, 0.98)  # as read back from JSON


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"optimizer": "adam", "betas": (0.9, 1.0)}, "betas"),
        ({"optimizer": "adam", "betas": (0.9,)}, "betas"),
        ({"optimizer": "adam", "eps": 0.0}, "eps"),
        ({"schedule": "cosine"}, "schedule"),
        ({"schedule": "linear", "warmup_steps": -1}, "warmup_steps"),
        ({"schedule": "linear", "warmup_steps": 2.5}, "warmup_steps"),
        ({"schedule": "noam", "warmup_steps": 0}, "warmup_steps"),
        ({"warmup_steps": 10}, "warmup_steps"),  # the constant schedule has no warm-up
        ({"optimizer": "adam", "momentum": 0.9}, "momentum"),  # Adam's momentum is betas
        ({"betas": (0.8, 0.9)}, "betas"),  # SGD would ignore it
        ({"eps": 1e-6}, "eps"),
    ],
)
def test_recipe_refuses_bad_or_ignored_values(fields, parameter):
    with pytest.raises(InvalidParameterError) as error:
        TrainingRecipe(epochs=1, batch_size=8, lr=0.1, **fields)
    assert error.value.parameter == parameter


def test_every_recipe_field_has_a_help_text():
    assert all(field_help(TrainingRecipe).values())
