"""The retraining ground truth of the LDS (Definition 2.1 of the paper; spec: "LDS").

``M`` random subsets of ``round(α n)`` training points; one model retrained on each with the
setting's recipe; the target (correct-class margin) of every validation and test query recorded
for every model. Models are trained ``models_per_chunk`` at a time with :func:`dahp.training.train_many`
and each chunk is one cache entry, so an interrupted run resumes from the chunks it finished.

Subset ``j`` and the seed of model ``j`` depend only on ``(seed, j)``; a chunk's dropout stream only
on ``(seed, first model, last model)``. A chunk's entry is therefore keyed by the setting (with
its data fingerprint and recipe), α, the seed and its model range, and asking for more models
later reuses every chunk already trained. Models are trained and evaluated on ``device``
(:func:`dahp.device.resolve_device`); the device is not part of any key (the cached margins come
back to the CPU and do not depend on it beyond rounding).

With ``GroundTruthConfig(source="dattri")`` nothing is retrained: the ground truth is dattri's
published benchmark, read from ``$DAHP_DATTRI_DIR`` (default ``data/dattri``, see
:mod:`dahp.benchmark_folder`). Scores judged by it must come from dattri's full-data model on
dattri's points: :func:`attributed_setting` is the setting to attribute, and :func:`ground_truth`
refuses any other.

Book: "Data attribution and the LDS".
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from dahp.benchmark_folder import (
    BenchmarkGroundTruth,
    benchmark_ground_truth,
    benchmark_models,
    benchmark_setting,
    read_benchmark,
)
from dahp.cache import Cache, default_cache
from dahp.config import GroundTruthConfig, InvalidParameterError
from dahp.device import resolve_device
from dahp.progress import tqdm
from dahp.settings import Setting, data_dir, get_setting
from dahp.training import accuracy_many, dropout_stream, evaluate_many, train_many

QUERY_SPLITS = ("val", "test")
#: The environment variable naming the folder of dattri's published benchmark (its ``download_path``).
DATTRI_DIR_ENV = "DAHP_DATTRI_DIR"


def dattri_dir() -> Path:
    """dattri's benchmark folder: ``$DAHP_DATTRI_DIR`` if set, else ``dattri/`` in the data directory."""
    env = os.environ.get(DATTRI_DIR_ENV)
    return Path(env).expanduser() if env else data_dir() / "dattri"


def attributed_setting(setting: str | Setting, config: GroundTruthConfig | None = None) -> Setting:
    """The setting whose full-data model is attributed and whose points are scored for ``config``'s
    ground truth: ``setting`` itself when we retrain; with ``source="dattri"``, our setting on
    dattri's points with dattri's full-data models (read and checked from :func:`dattri_dir` now,
    before any compute; :class:`dahp.settings.MissingDataError` names what is missing)."""
    setting = get_setting(setting) if isinstance(setting, str) else setting
    config = config or GroundTruthConfig()
    if config.source == "retrain" or benchmark_models(setting) is not None:
        return setting
    return benchmark_setting(read_benchmark(dattri_dir(), setting.name))


def subset_indices(n_train: int, config: GroundTruthConfig, j: int) -> np.ndarray:
    """Sorted training indices of subset ``j`` (size ``config.subset_size(n_train)``)."""
    rng = np.random.default_rng([config.seed, j])
    return np.sort(rng.choice(n_train, size=config.subset_size(n_train), replace=False))


def model_seed(config: GroundTruthConfig, j: int) -> int:
    """Seed of the initial weights and batch orders of subset model ``j``."""
    return int(np.random.SeedSequence([config.seed, j, 1]).generate_state(1)[0])


def _chunk_dropout_seed(config: GroundTruthConfig, start: int, stop: int) -> int:
    return int(np.random.SeedSequence([config.seed, start, stop, 2]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """Outputs of the subset-retrained models of one setting."""

    setting: str
    config: GroundTruthConfig
    subsets: torch.Tensor  #: ``(M, m)`` training indices of each subset, sorted
    margins: dict[str, torch.Tensor]  #: split -> ``(M, n_queries)`` target of each query under each model
    test_accuracy: torch.Tensor  #: ``(M,)`` accuracy of each subset model on the test queries
    seconds: float  #: wall time of this call (training only what was not cached)
    train_seconds: float  #: wall time the retraining took when it ran (summed over chunks; NaN if unrecorded)

    @property
    def n_models(self) -> int:
        """Number of retrained models M."""
        return self.subsets.shape[0]

    def targets(self, split: str = "test") -> torch.Tensor:
        """``(M, n_queries)`` margins of the ``"val"`` or ``"test"`` queries."""
        if split not in QUERY_SPLITS:
            raise InvalidParameterError("split", split, QUERY_SPLITS)
        return self.margins[split]

    def membership(self, n_train: int) -> torch.Tensor:
        """``(M, n_train)`` 0/1 matrix: row ``j`` marks the points of subset ``j``."""
        mask = torch.zeros(self.n_models, n_train)
        mask.scatter_(1, self.subsets, 1.0)
        return mask

    def for_dattri(self, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(ground_truth_values, subset_indices)`` pair ``dattri.metric.lds`` expects."""
        return self.targets(split), self.subsets


def ground_truth(
    setting: str | Setting,
    config: GroundTruthConfig | None = None,
    cache: Cache | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> GroundTruth | BenchmarkGroundTruth:
    """Retrain ``config.n_models`` models on random subsets and record every query's margin.

    Cached chunk by chunk (see the module docstring); all inputs are validated before training,
    which runs on ``device``. With ``config.source == "dattri"`` dattri's published ground truth
    is returned instead (no training, no cache); ``setting`` must then be
    :func:`attributed_setting`'s, whose folder it is read from.
    """
    setting = get_setting(setting) if isinstance(setting, str) else setting
    config = config or GroundTruthConfig()
    if config.source == "dattri":
        models = benchmark_models(setting)
        if models is None:
            raise InvalidParameterError(
                "setting",
                setting.name,
                "the setting on dattri's benchmark points when source='dattri' "
                "(dahp.ground_truth.attributed_setting(setting, config)): dattri's ground truth judges "
                "scores of dattri's full-data model on dattri's points, not of ours on our split",
            )
        return benchmark_ground_truth(read_benchmark(models.source, setting.name))
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    data = setting.data()
    base_spec = {**setting.spec(), "alpha": config.alpha, "seed": config.seed, **dropout_stream(setting, device)}

    started = time.perf_counter()
    starts = range(0, config.n_models, config.models_per_chunk)
    chunks = []
    bar = tqdm(
        starts,
        desc=f"ground truth {setting.name} (M={config.n_models}, α={config.alpha})",
        unit="chunk",
        disable=not progress,
    )
    for start in bar:
        stop = min(start + config.models_per_chunk, config.n_models)
        spec = {**base_spec, "models": [start, stop]}
        chunks.append(
            cache.get_or_compute(
                "ground_truth",
                spec,
                lambda start=start, stop=stop: _train_chunk(setting, config, start, stop, progress, device),
            )
        )
    subsets = torch.from_numpy(np.stack([subset_indices(data.n_train, config, j) for j in range(config.n_models)]))
    return GroundTruth(
        setting=setting.name,
        config=config,
        subsets=subsets,
        margins={split: torch.cat([c[split] for c in chunks]) for split in QUERY_SPLITS},
        test_accuracy=torch.cat([c["test_accuracy"] for c in chunks]),
        seconds=time.perf_counter() - started,
        train_seconds=float(sum(c.get("train_seconds", float("nan")) for c in chunks)),
    )


def _train_chunk(
    setting: Setting, config: GroundTruthConfig, start: int, stop: int, progress: bool, device: torch.device
) -> dict:
    started = time.perf_counter()
    data = setting.data()
    models = range(start, stop)
    index_sets = torch.from_numpy(np.stack([subset_indices(data.n_train, config, j) for j in models]))
    state = train_many(
        setting,
        data.x_train,
        data.y_train,
        index_sets,
        [model_seed(config, j) for j in models],
        dropout_seed=_chunk_dropout_seed(config, start, stop),
        progress=f"models {start}..{stop - 1}" if progress else False,
        device=device,
    )
    outputs = {split: evaluate_many(setting, state, *data.queries(split), device=device) for split in QUERY_SPLITS}
    outputs["test_accuracy"] = accuracy_many(setting, state, data.x_test, data.y_test, device=device)
    outputs["train_seconds"] = time.perf_counter() - started
    return outputs
