"""The device choice: argument, then $DAHP_DEVICE, then CUDA when present; bad names fail early."""

import pytest
import torch

from dahp.core.config import InvalidParameterError
from dahp.core.device import DEVICE_ENV, resolve_device


def test_argument_wins_over_environment(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_environment_is_used_when_no_argument(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device(None) == torch.device("cpu")


def test_default_is_cuda_when_present(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda:x"])
def test_bad_names_name_the_parameter(bad):
    with pytest.raises(InvalidParameterError, match="device"):
        resolve_device(bad)


def test_bad_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(InvalidParameterError, match=DEVICE_ENV):
        resolve_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_fails_before_compute():
    with pytest.raises(InvalidParameterError, match="no CUDA device"):
        resolve_device("cuda")
