"""Shared fixtures: every test gets a private cache directory and runs on the CPU.

``DAHP_TEST_DEVICE=cuda`` runs every computation whose device the test leaves unnamed on CUDA
instead: a way to exercise the CUDA path with the whole suite on a GPU machine. Tests that pin
exact CPU numbers, or compare with a CPU-only reference in a device they leave unnamed, then fail
by design (rounding, or tensors on two devices); ``test_cuda.py`` holds the CUDA checks that must
pass.
"""

from __future__ import annotations

import os

import pytest

from dahp.core.cache import Cache


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
