"""The cache: keyed, atomic, and a damaged entry is detected and rebuilt."""

import pytest
import torch

from dahp.cache import Cache


def test_roundtrip_and_key_depends_on_every_field(cache: Cache):
    spec = {"setting": "mnist_lr", "alpha": 0.5, "seed": 0}
    cache.save("demo", spec, {"x": torch.arange(5)})
    assert torch.equal(cache.load("demo", spec)["x"], torch.arange(5))
    for changed in ({**spec, "alpha": 0.25}, {**spec, "seed": 1}, {**spec, "setting": "mnist_mlp"}):
        assert cache.key("demo", changed) != cache.key("demo", spec)
        assert cache.load("demo", changed) is None
    assert cache.key("other", spec) != cache.key("demo", spec)


def test_key_ignores_dict_order(cache: Cache):
    assert cache.key("k", {"a": 1, "b": 2}) == cache.key("k", {"b": 2, "a": 1})


def test_write_leaves_no_temporary_files(cache: Cache):
    path = cache.save("demo", {"a": 1}, torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_entry_is_recomputed(cache: Cache, damage):
    spec = {"a": 1}
    path = cache.save("demo", spec, torch.arange(1000.0))
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        path.write_bytes(blob[:-10] + bytes(b ^ 0xFF for b in blob[-10:]))
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01 not a cache entry")
    else:
        path.write_bytes(b"")
    calls = []
    with pytest.warns(UserWarning, match="damaged cache entry"):
        value = cache.get_or_compute("demo", spec, lambda: calls.append(1) or torch.zeros(2))
    assert calls == [1] and torch.equal(value, torch.zeros(2))
    assert torch.equal(cache.load("demo", spec), torch.zeros(2))


def test_get_or_compute_computes_once(cache: Cache):
    calls = []
    for _ in range(3):
        cache.get_or_compute("demo", {"a": 2}, lambda: calls.append(1) or torch.ones(1))
    assert calls == [1]
