"""Shared fixtures: every test gets a private cache directory."""

from __future__ import annotations

import pytest

from dahp.cache import Cache


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test writes to its own cache directory, never to data/cache."""
    monkeypatch.setenv("DAHP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture()
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache")
