"""Bad input: one clear error naming the parameter, the value and the valid choices, before compute."""

import pytest

from dahp.cli import main
from dahp.core.config import GroundTruthConfig, InvalidParameterError, TrainingRecipe
from dahp.data.settings import get_setting
from dahp.training import train as training
from helpers import quick


@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.2])
def test_alpha_outside_open_unit_interval(alpha):
    with pytest.raises(InvalidParameterError, match=rf"alpha={alpha!r}.*\(0, 1\)"):
        GroundTruthConfig(alpha=alpha)


@pytest.mark.parametrize("n_models", [1, 0, -3])
def test_too_few_models(n_models):
    with pytest.raises(InvalidParameterError, match=rf"n_models={n_models}.*>= 2"):
        GroundTruthConfig(n_models=n_models)


def test_bad_recipe_values():
    with pytest.raises(InvalidParameterError, match="epochs=0"):
        TrainingRecipe(epochs=0, batch_size=8, lr=0.1)
    with pytest.raises(InvalidParameterError, match=r"momentum=1\.0"):
        TrainingRecipe(epochs=1, batch_size=8, lr=0.1, momentum=1.0)


@pytest.mark.parametrize("epoch", [0, 21, 2.5])
def test_epoch_beyond_the_trained_ones(epoch):
    with pytest.raises(InvalidParameterError, match=rf"epoch={epoch!r}.*1\.\.20"):
        training.check_epoch(get_setting("mnist_lr"), epoch)


def test_checkpoint_epoch_is_checked_before_loading():
    setting = quick("mnist_lr", epochs=1)
    checkpoints = training.train_full(setting, progress=False)
    with pytest.raises(InvalidParameterError, match="epoch=2"):
        checkpoints.model(2)


def test_ground_truth_validates_before_training(monkeypatch):
    from dahp.training.ground_truth import ground_truth

    def must_not_train(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr("dahp.training.ground_truth.train_many", must_not_train)
    with pytest.raises(InvalidParameterError, match="setting"):
        ground_truth("cifar10")


def test_cli_reports_bad_input_in_one_line(capsys):
    assert main(["ground-truth", "--setting", "mnist_lr", "--alpha", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "alpha=1.5" in err
    assert main(["ground-truth", "--setting", "nope"]) == 2
    assert "mnist_mlp" in capsys.readouterr().err
