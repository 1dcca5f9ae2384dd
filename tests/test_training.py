"""Batched (vmap) training reproduces the plain torch.optim loop, model for model; the recipe record."""

import dataclasses

import pytest
import torch
from dattri.benchmark.models.mlp import MLPMnist
from dattri.benchmark.models.resnet9.resnet9 import ResNet9

from dahp.core.config import InvalidParameterError, TrainingRecipe, field_help
from dahp.data.settings import get_setting
from dahp.training.train import (
    accuracy_many,
    evaluate_many,
    schedule_factor,
    stack_states,
    train_full,
    train_many,
    train_one,
)
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


@pytest.mark.parametrize(
    "recipe",
    [
        {"optimizer": "adam", "lr": 1e-3, "batch_size": 48},  # 1000 % 48 != 0: ragged last batch
        {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6},
        {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1, "batch_size": 48},
        {"optimizer": "sgd", "momentum": 0.9, "schedule": "linear", "warmup_steps": 10, "batch_size": 48},
        {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-2, "schedule": "linear"},
        {"optimizer": "adam", "lr": 0.05, "schedule": "noam", "warmup_steps": 8, "batch_size": 48},
        {"optimizer": "sgd", "momentum": 0.9, "schedule": "cosine", "warmup_steps": 5, "batch_size": 48},
    ],
)
def test_batched_adam_and_schedules_equal_torch_optim_float64(recipe):
    setting = without_dropout(quick("mnist_mlp", epochs=1, **recipe), torch.float64)
    data = setting.data()
    x = data.x_train.double()
    sequential, batched = train_both(setting, x, data.y_train, subsets(2), [7, 8])
    for name in sequential:
        torch.testing.assert_close(batched[name], sequential[name], rtol=0, atol=1e-10)
    constant = train_many(
        setting, x, data.y_train, subsets(2), [7, 8], recipe=dataclasses.replace(setting.recipe, **PLAIN)
    )
    assert not torch.allclose(constant["fc1.weight"], batched["fc1.weight"])  # the fields do change training


#: The new recipe fields at their defaults: plain SGD at a constant rate.
PLAIN = {"optimizer": "sgd", "betas": (0.9, 0.999), "eps": 1e-8, "schedule": "constant", "warmup_steps": 0}


def test_schedule_factors_are_the_documented_formulas():
    linear = TrainingRecipe(epochs=1, batch_size=1, lr=1.0, schedule="linear", warmup_steps=2)
    assert [schedule_factor(linear, s, 6) for s in range(6)] == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]
    no_warmup = dataclasses.replace(linear, warmup_steps=0)
    assert [schedule_factor(no_warmup, s, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    noam = TrainingRecipe(epochs=1, batch_size=1, lr=1.0, schedule="noam", warmup_steps=4)
    assert [schedule_factor(noam, s, 100) for s in (0, 1, 3, 15)] == [0.125, 0.25, 0.5, 0.25]
    assert schedule_factor(TrainingRecipe(epochs=1, batch_size=1, lr=1.0), 7, 10) == 1.0
    cosine = TrainingRecipe(epochs=1, batch_size=1, lr=1.0, schedule="cosine", warmup_steps=2)
    # warm-up 0, 1/2; then (1 + cos(π k / 4)) / 2 for k = 0..4 over the remaining 4 steps
    expected = [0.0, 0.5, 1.0, (1 + 2**-0.5) / 2, 0.5, (1 - 2**-0.5) / 2, 0.0]
    assert [schedule_factor(cosine, s, 6) for s in range(7)] == pytest.approx(expected, abs=1e-15)


def _bn_setting(make_model, **recipe):
    base = get_setting("cifar2_resnet9")
    fields = {"epochs": 1, "batch_size": 4, "lr": 0.01, "momentum": 0.9, **recipe}
    return dataclasses.replace(base, make_model=make_model, recipe=TrainingRecipe(**fields))


def test_batch_norm_trains_batched_and_equals_sequential_float64():
    setting = dataclasses.replace(
        quick("mnist_lr", epochs=2, batch_size=48), make_model=lambda: TinyBatchNormNet().double()
    )
    data = setting.data()
    x = data.x_train.double()
    sequential, batched = train_both(setting, x, data.y_train, subsets(3, size=300), [1, 2, 3])
    assert "norm.running_mean" in batched and "norm.running_var" in batched
    for name in sequential:
        torch.testing.assert_close(batched[name], sequential[name], rtol=0, atol=1e-10)
    assert not torch.equal(batched["norm.running_var"], torch.ones_like(batched["norm.running_var"]))


def test_resnet9_trains_batched_and_equals_sequential_float64():
    torch.set_num_threads(1)
    setting = _bn_setting(lambda: ResNet9(num_classes=2, dropout_rate=0.0).double())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, 32, 32, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 2, (12,), generator=generator)
    index_sets = torch.stack([torch.arange(0, 10), torch.arange(2, 12)])  # batches 4, 4, 2: ragged
    sequential, batched = train_both(setting, x, y, index_sets, [0, 1])
    assert batched["layer3.0.shortcut.1.running_mean"].shape == (2, 512)
    for name in sequential:
        torch.testing.assert_close(batched[name], sequential[name], rtol=0, atol=1e-10)


def test_full_data_checkpoints_one_per_epoch_and_cached(monkeypatch):
    setting = quick("mnist_lr", epochs=3)
    checkpoints = train_full(setting, progress=False)
    assert checkpoints.epochs == 3
    data = setting.data()
    final = train_one(setting, data.x_train, data.y_train, torch.arange(data.n_train), 0)
    for name, value in final.state_dict().items():
        torch.testing.assert_close(checkpoints.state()[name], value, rtol=1e-4, atol=1e-6)
    assert not torch.equal(checkpoints.state(1)["linear.weight"], checkpoints.state(3)["linear.weight"])
    monkeypatch.setattr("dahp.training.train.train_many", lambda *a, **k: pytest.fail("retrained despite cache"))
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
        ({"schedule": "exponential"}, "schedule"),
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


def test_a_bad_device_is_refused_before_any_training():
    setting = dataclasses.replace(quick("mnist_lr", epochs=1), make_model=lambda: pytest.fail("built a model"))
    data = setting.data()
    x, y, sets = data.x_train, data.y_train, subsets(2, size=64)
    calls = [
        lambda: train_one(setting, x, y, sets[0], 0, device="tpu"),
        lambda: train_many(setting, x, y, sets, [0, 1], device="tpu"),
        lambda: train_full(setting, progress=False, device="tpu"),
        lambda: evaluate_many(setting, {}, x, y, device="tpu"),
        lambda: accuracy_many(setting, {}, x, y, device="tpu"),
    ]
    for call in calls:
        with pytest.raises(InvalidParameterError, match="tpu"):
            call()


def _train_many_as_before(setting, x, y, index_sets, seeds, dropout_seed):
    """The batched SGD loop as it was before optimizers, schedules and buffers joined (commit 09a7728),
    kept verbatim in its arithmetic: the pin that the MNIST recipes still train bit for bit."""
    from torch.func import functional_call, grad, vmap

    from dahp.training.train import epoch_orders, order_generator

    recipe = setting.recipe
    models = [setting.init_model(seed) for seed in seeds]
    base = models[0].train()
    params = {name: p.detach().clone() for name, p in stack_states(models).items()}
    momentum: dict = {}
    batched_grad = vmap(
        grad(lambda p, xb, yb: setting.loss(functional_call(base, p, (xb,)), yb)), randomness="different"
    )
    generators = [order_generator(seed) for seed in seeds]
    torch.manual_seed(dropout_seed)
    for _ in range(recipe.epochs):
        orders = torch.stack([epoch_orders(ix, g) for ix, g in zip(index_sets, generators)])
        for start in range(0, orders.shape[1], recipe.batch_size):
            batch = orders[:, start : start + recipe.batch_size]
            grads = batched_grad(params, x[batch], y[batch])
            names = list(params)
            p_list, g_list = [params[n] for n in names], [grads[n] for n in names]
            if recipe.weight_decay:
                g_list = torch._foreach_add(g_list, p_list, alpha=recipe.weight_decay)
            if recipe.momentum:
                if momentum:
                    b_list = [momentum[n] for n in names]
                    torch._foreach_mul_(b_list, recipe.momentum)
                    torch._foreach_add_(b_list, g_list)
                else:
                    b_list = [g.clone() for g in g_list]
                    momentum.update(zip(names, b_list))
                g_list = b_list
            torch._foreach_add_(p_list, g_list, alpha=-recipe.lr)
    return params


@pytest.mark.parametrize("name", ["mnist_lr", "mnist_mlp"])
def test_mnist_recipes_train_bit_for_bit_as_before(name):
    base = get_setting(name)
    setting = dataclasses.replace(base, recipe=dataclasses.replace(base.recipe, epochs=1, weight_decay=1e-4))
    data = setting.data()
    index_sets = subsets(2)
    before = _train_many_as_before(setting, data.x_train, data.y_train, index_sets, [7, 8], dropout_seed=3)
    now = train_many(setting, data.x_train, data.y_train, index_sets, [7, 8], dropout_seed=3)
    assert list(now) == list(before)
    assert all(torch.equal(now[k], before[k]) for k in before)  # identical tensors, dropout masks included


def test_dropout_masks_key_the_device_they_are_drawn_on():
    from dahp.data.settings import get_setting
    from dahp.training.train import dropout_stream

    cuda = torch.device("cuda")  # only named, never used: the key alone is checked
    assert dropout_stream(get_setting("mnist_mlp"), torch.device("cpu")) == {}  # CPU keys never change
    assert dropout_stream(get_setting("mnist_mlp"), cuda) == {"dropout_stream": "cuda"}  # MLP has dropout
    assert dropout_stream(get_setting("mnist_lr"), cuda) == {}  # no dropout: same model on every device


def test_evaluation_does_not_depend_on_its_chunk():
    from dahp.data.settings import get_setting
    from dahp.training.train import evaluate_many

    setting = get_setting("mnist_mlp")
    data = setting.data()
    state = stack_states([setting.init_model(0).eval(), setting.init_model(1).eval()])
    whole = evaluate_many(setting, state, data.x_test[:50], data.y_test[:50])
    pieces = evaluate_many(setting, state, data.x_test[:50], data.y_test[:50], chunk=7)
    assert whole.shape == (2, 50)
    torch.testing.assert_close(whole, pieces, rtol=0, atol=1e-6)
