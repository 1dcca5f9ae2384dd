"""Shared fixtures: every test gets a private cache directory, runs on the CPU and starts from the
same global torch / NumPy / ``random`` state, whatever ran before it.

``DAHP_TEST_DEVICE=cuda`` runs every computation whose device the test leaves unnamed on CUDA
instead: a way to exercise the CUDA path with the whole suite on a GPU machine. Tests that pin
exact CPU numbers, or compare with a CPU-only reference in a device they leave unnamed, then fail
by design (rounding, or tensors on two devices); ``test_cuda.py`` holds the CUDA checks that must
pass.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any

import numpy as np
import pytest
import torch

from dahp.core.cache import Cache


@dataclasses.dataclass(frozen=True)
class GlobalState:
    """The process-wide settings a test (or the code it runs) can change and a later test would inherit.

    The interop thread count is left out: torch refuses to set it once parallel work has started.
    """

    num_threads: int
    default_dtype: torch.dtype
    default_device: torch.device
    deterministic: bool
    deterministic_warn_only: bool
    grad_enabled: bool
    torch_rng: torch.Tensor
    numpy_rng: Any
    python_rng: Any

    @classmethod
    def capture(cls) -> GlobalState:
        return cls(
            num_threads=torch.get_num_threads(),
            default_dtype=torch.get_default_dtype(),
            default_device=torch.get_default_device(),
            deterministic=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            grad_enabled=torch.is_grad_enabled(),
            torch_rng=torch.get_rng_state(),
            numpy_rng=np.random.get_state(),  # noqa: NPY002 (the legacy global generator is what leaks)
            python_rng=random.getstate(),
        )

    def restore(self) -> None:
        if torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)
        torch.set_default_dtype(self.default_dtype)
        if torch.get_default_device() != self.default_device:
            # None, not "cpu": naming the CPU installs a device mode that every tensor factory goes through
            torch.set_default_device(None if self.default_device.type == "cpu" else self.default_device)
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        torch.set_grad_enabled(self.grad_enabled)
        torch.set_rng_state(self.torch_rng)
        np.random.set_state(self.numpy_rng)  # noqa: NPY002
        random.setstate(self.python_rng)


#: Taken when pytest loads this file, before any test module is imported.
_AT_START = GlobalState.capture()


@pytest.fixture(autouse=True)
def _same_global_state_for_every_test():
    """Each test starts from the state the session started with, and leaves it so.

    Without this, one test's ``torch.set_num_threads(1)`` or ``torch.manual_seed`` carried over to
    every test after it, so a result could depend on the order the tests ran in. Restoring before the
    test (not only after) also undoes what a module-scoped fixture changed while it was built, since
    pytest builds those before this function-scoped fixture. The CUDA generators, when CUDA is in use,
    are put back as they were before the test (they do not exist yet when the session starts).
    """
    _AT_START.restore()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    yield
    _AT_START.restore()
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test writes to its own cache directory, never to data/cache."""
    monkeypatch.setenv("DAHP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _cpu_by_default(monkeypatch):
    """Tests pin CPU numbers: on a CUDA machine a device left unnamed must still mean the CPU
    (the tests of the device choice itself clear this variable)."""
    monkeypatch.setenv("DAHP_DEVICE", os.environ.get("DAHP_TEST_DEVICE", "cpu"))


@pytest.fixture()
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache")
