"""The conftest fixture gives every test the global state the session started with.

The two cases below check the state they start from, then change all of it: whichever runs second
(in any order, pytest-randomly's included) fails if a change made by the first one carried over.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import _AT_START, GlobalState


def same_state(a: GlobalState, b: GlobalState) -> bool:
    """``a == b``, comparing the generator states by value."""
    return (
        (a.num_threads, a.default_dtype, a.default_device, a.deterministic, a.deterministic_warn_only)
        == (b.num_threads, b.default_dtype, b.default_device, b.deterministic, b.deterministic_warn_only)
        and a.grad_enabled == b.grad_enabled
        and torch.equal(a.torch_rng, b.torch_rng)
        and a.numpy_rng[0] == b.numpy_rng[0]
        and np.array_equal(a.numpy_rng[1], b.numpy_rng[1])
        and a.numpy_rng[2:] == b.numpy_rng[2:]
        and a.python_rng == b.python_rng
    )


def change_everything() -> None:
    torch.set_num_threads(1 if torch.get_num_threads() > 1 else 2)
    torch.set_default_dtype(torch.float64)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_grad_enabled(False)
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002 (the legacy global generator is the state under test)
    random.seed(123)


@pytest.mark.parametrize("case", ["first", "second"])
def test_a_test_starts_from_the_session_state_whatever_ran_before(case, request):
    start = GlobalState.capture()
    if request.config.pluginmanager.has_plugin("randomly"):
        # pytest-randomly reseeds numpy and random just before the call: their state is its own
        start = GlobalState(**{**vars(start), "numpy_rng": _AT_START.numpy_rng, "python_rng": _AT_START.python_rng})
    assert same_state(start, _AT_START)
    change_everything()
    assert not same_state(GlobalState.capture(), _AT_START)


def test_same_state_tells_a_changed_state_from_the_start():
    assert same_state(GlobalState.capture(), GlobalState.capture())
    for field, value in [
        ("num_threads", _AT_START.num_threads + 1),
        ("default_dtype", torch.float16),
        ("grad_enabled", not _AT_START.grad_enabled),
        ("torch_rng", torch.manual_seed(7).get_state()),
    ]:
        assert not same_state(GlobalState(**{**vars(_AT_START), field: value}), _AT_START), field
