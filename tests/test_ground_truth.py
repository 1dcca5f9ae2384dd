"""The subset-retraining ground truth: correct models, cached per chunk, resumable."""

import numpy as np
import pytest
import torch

from dahp.core.cache import Cache
from dahp.core.config import GroundTruthConfig
from dahp.training import ground_truth as gt_module
from dahp.training.ground_truth import ground_truth, model_seed, subset_indices
from dahp.training.train import evaluate_many, stack_states, train_one
from helpers import quick

SETTING = quick("mnist_lr", epochs=1)
CONFIG = GroundTruthConfig(alpha=0.25, n_models=5, seed=3, models_per_chunk=2)


class CountingTrainer:
    """Wraps train_many, counting calls and optionally failing on one (an interruption)."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.fail_on_call = 0, fail_on_call

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        return gt_module.__dict__["_real_train_many"](*args, **kwargs)


@pytest.fixture()
def counting(monkeypatch):
    monkeypatch.setitem(gt_module.__dict__, "_real_train_many", gt_module.train_many)

    def install(**kwargs) -> CountingTrainer:
        trainer = CountingTrainer(**kwargs)
        monkeypatch.setattr(gt_module, "train_many", trainer)
        return trainer

    return install


def test_shapes_and_subsets(cache: Cache):
    truth = ground_truth(SETTING, CONFIG, cache, progress=False)
    assert truth.subsets.shape == (5, 1000)
    assert truth.targets("val").shape == (5, 500) and truth.targets("test").shape == (5, 500)
    for row in truth.subsets:
        assert len(torch.unique(row)) == 1000 and torch.all(row[1:] > row[:-1])
    assert truth.membership(4000).sum(1).tolist() == [1000.0] * 5
    assert not torch.equal(truth.subsets[0], truth.subsets[1])


def test_each_model_is_the_model_trained_alone_on_its_subset(cache: Cache):
    truth = ground_truth(SETTING, CONFIG, cache, progress=False)
    data = SETTING.data()
    j = 3
    alone = train_one(
        SETTING, data.x_train, data.y_train, torch.from_numpy(subset_indices(4000, CONFIG, j)), model_seed(CONFIG, j)
    )
    margins = evaluate_many(SETTING, stack_states([alone]), data.x_test, data.y_test)[0]
    torch.testing.assert_close(truth.targets("test")[j], margins, rtol=1e-4, atol=1e-4)


def test_same_config_same_numbers_in_a_fresh_cache(tmp_path):
    first = ground_truth(SETTING, CONFIG, Cache(tmp_path / "a"), progress=False)
    second = ground_truth(SETTING, CONFIG, Cache(tmp_path / "b"), progress=False)
    assert torch.equal(first.targets("test"), second.targets("test"))


def test_interrupted_run_resumes_with_finished_chunks(cache: Cache, counting):
    interrupted = counting(fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        ground_truth(SETTING, CONFIG, cache, progress=False)
    assert interrupted.calls == 2
    resumed = counting()
    truth = ground_truth(SETTING, CONFIG, cache, progress=False)
    assert resumed.calls == 2  # chunks [2, 4) and [4, 5); chunk [0, 2) came from the cache
    reference = ground_truth(SETTING, CONFIG, Cache(cache.root.parent / "fresh"), progress=False)
    assert torch.equal(truth.targets("val"), reference.targets("val"))


def test_more_models_reuse_the_chunks_already_trained(cache: Cache, counting):
    ground_truth(SETTING, GroundTruthConfig(alpha=0.25, n_models=4, seed=3, models_per_chunk=2), cache, progress=False)
    trainer = counting()
    truth = ground_truth(SETTING, CONFIG, cache, progress=False)
    assert trainer.calls == 1 and truth.n_models == 5


def test_corrupt_chunk_is_retrained_alone(cache: Cache, counting):
    ground_truth(SETTING, CONFIG, cache, progress=False)
    entries = sorted((cache.root / "ground_truth").iterdir())
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    trainer = counting()
    with pytest.warns(UserWarning, match="damaged"):
        ground_truth(SETTING, CONFIG, cache, progress=False)
    assert trainer.calls == 1


def test_key_changes_with_alpha_and_seed(cache: Cache, counting):
    ground_truth(SETTING, CONFIG, cache, progress=False)
    trainer = counting()
    ground_truth(SETTING, GroundTruthConfig(alpha=0.5, n_models=5, seed=3, models_per_chunk=2), cache, progress=False)
    ground_truth(SETTING, GroundTruthConfig(alpha=0.25, n_models=5, seed=4, models_per_chunk=2), cache, progress=False)
    assert trainer.calls == 6


def test_subset_draws_depend_only_on_seed_and_index():
    a = subset_indices(100, GroundTruthConfig(alpha=0.3, n_models=2, seed=1), 7)
    b = subset_indices(100, GroundTruthConfig(alpha=0.3, n_models=50, seed=1), 7)
    assert np.array_equal(a, b) and len(a) == 30
