"""The retraining ground truth of the LDS (Definition 2.1 of the paper; spec: "LDS").

``M`` random subsets of ``round(α n)`` training points; one model retrained on each with the
setting's recipe; the target (correct-class margin) of every validation and test query recorded
for every model. Models are trained ``models_per_chunk`` at a time with :func:`dahp.training.train.train_many`
and each chunk is one cache entry, so an interrupted run resumes from the chunks it finished.

Subset ``j`` and the seed of model ``j`` depend only on ``(seed, j)``; a chunk's dropout stream only
on ``(seed, first model, last model)``. A chunk's entry is therefore keyed by the setting (with
its data fingerprint and recipe), α, the seed and its model range, and asking for more models
later reuses every chunk already trained. The chunks are independent tasks: :func:`train_chunks`
runs the missing ones on an ``executor`` (in this process by default; a Dask cluster or submitit
job array, see :mod:`dahp.training.executors`), each writing its own entry, or only one slice of them
(``chunks="3/8"``, :class:`ChunkSlice`: one task of a plain Slurm array); :func:`ground_truth`
then gathers them from the cache. Models are trained and evaluated on ``device``
(:func:`dahp.core.device.resolve_device`); the device is not part of any key (the cached margins come
back to the CPU and do not depend on it beyond rounding).

With ``GroundTruthConfig(source="dattri")`` nothing is retrained: the ground truth is dattri's
published benchmark, read from ``$DAHP_DATTRI_DIR`` (default ``data/dattri``, see
:mod:`dahp.data.benchmark_folder`). Scores judged by it must come from dattri's full-data model on
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

from dahp.core.cache import Cache, default_cache
from dahp.core.config import GroundTruthConfig, InvalidParameterError
from dahp.core.device import resolve_device
from dahp.data.benchmark_folder import (
    BenchmarkGroundTruth,
    benchmark_ground_truth,
    benchmark_models,
    benchmark_setting,
    read_benchmark,
)
from dahp.data.settings import Setting, data_dir, get_setting
from dahp.training.executors import Executor, Task, resolve_executor, run_tasks
from dahp.training.train import accuracy_many, dropout_stream, evaluate_many, train_many

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
    before any compute; :class:`dahp.data.settings.MissingDataError` names what is missing)."""
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


@dataclasses.dataclass(frozen=True)
class ChunkSlice:
    """Slice ``index`` of ``count`` (1-based) of a ground truth's chunks: chunk ``k`` (0-based, in
    model order) belongs to slice ``k % count + 1``, so the slices partition the chunks and a
    Slurm array ``--array=1-N`` with ``--chunks $SLURM_ARRAY_TASK_ID/N`` trains every chunk once."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and isinstance(self.index, int) and 1 <= self.index <= self.count):
            raise InvalidParameterError("chunks", f"{self.index}/{self.count}", "I/N with integers 1 <= I <= N")

    @classmethod
    def parse(cls, text: str) -> ChunkSlice:
        """``"3/8"`` -> slice 3 of 8 (refused, before any compute, unless ``1 <= I <= N``)."""
        parts = str(text).strip().split("/")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise InvalidParameterError("chunks", text, "I/N with integers 1 <= I <= N, e.g. 3/8")
        return cls(int(parts[0]), int(parts[1]))

    def select(self, chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The chunks of this slice."""
        return [chunk for k, chunk in enumerate(chunks) if k % self.count == self.index - 1]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def chunk_ranges(config: GroundTruthConfig) -> list[tuple[int, int]]:
    """The ``(first model, stop)`` range of every chunk, ``models_per_chunk`` models each (the last may be shorter)."""
    size = config.models_per_chunk
    return [(start, min(start + size, config.n_models)) for start in range(0, config.n_models, size)]


@dataclasses.dataclass(frozen=True)
class ChunkReport:
    """What :func:`train_chunks` did: the chunks it trained, those already cached, and where."""

    trained: list[tuple[int, int]]
    cached: list[tuple[int, int]]
    executor: str
    seconds: float


def train_chunks(
    setting: str | Setting,
    config: GroundTruthConfig | None = None,
    cache: Cache | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    executor: str | Executor | None = None,
    chunks: str | ChunkSlice | None = None,
) -> ChunkReport:
    """Make sure every chunk (or slice ``chunks``, e.g. ``"3/8"``) of the ground truth is cached.

    The chunks not cached (or damaged: detected by the cache's checksum and recomputed) run as
    independent tasks on ``executor`` (:func:`dahp.training.executors.resolve_executor`); each trains its
    models and writes its own entry atomically, so a killed worker loses only its own chunk and a
    rerun trains only what is missing. Every input is checked before any task starts.
    """
    setting = get_setting(setting) if isinstance(setting, str) else setting
    config = config or GroundTruthConfig()
    if config.source != "retrain":
        raise InvalidParameterError("source", config.source, "'retrain' (dattri's ground truth is read, not trained)")
    device = resolve_device(device)
    chosen = resolve_executor(executor)
    chunk_slice = ChunkSlice.parse(chunks) if isinstance(chunks, str) else chunks
    cache = default_cache() if cache is None else cache
    started = time.perf_counter()
    base_spec = _base_spec(setting, config, device)
    wanted = chunk_ranges(config) if chunk_slice is None else chunk_slice.select(chunk_ranges(config))
    missing = [(a, b) for a, b in wanted if cache.load("ground_truth", {**base_spec, "models": [a, b]}) is None]
    inline = chosen.kind == "inline"
    tasks = [
        Task(
            f"models {a}..{b - 1}",
            _chunk_task,
            (setting, config, a, b, {**base_spec, "models": [a, b]}, cache.root, device, progress and inline),
        )
        for a, b in missing
    ]
    computed = run_tasks(
        tasks,
        chosen,
        desc=f"ground truth {setting.name} (M={config.n_models}, α={config.alpha})",
        log_dir=cache.root / "submitit",
        progress=progress,
    )
    # a chunk another worker finished first was loaded, not trained: report only what this run trained
    trained = [chunk for chunk, fresh in zip(missing, computed) if fresh]
    return ChunkReport(
        trained=trained,
        cached=[chunk for chunk in wanted if chunk not in trained],
        executor=str(chosen),
        seconds=time.perf_counter() - started,
    )


def ground_truth(
    setting: str | Setting,
    config: GroundTruthConfig | None = None,
    cache: Cache | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    executor: str | Executor | None = None,
) -> GroundTruth | BenchmarkGroundTruth:
    """Retrain ``config.n_models`` models on random subsets and record every query's margin.

    Cached chunk by chunk (see the module docstring); all inputs are validated before training,
    which runs on ``device``; the chunks not cached are trained on ``executor`` (in this process by
    default, see :mod:`dahp.training.executors`) by :func:`train_chunks`, then gathered from the cache. With
    ``config.source == "dattri"`` dattri's published ground truth is returned instead (no training,
    no cache); ``setting`` must then be :func:`attributed_setting`'s, whose folder it is read from.
    """
    setting = get_setting(setting) if isinstance(setting, str) else setting
    config = config or GroundTruthConfig()
    executor = resolve_executor(executor)
    if config.source == "dattri":
        models = benchmark_models(setting)
        if models is None:
            raise InvalidParameterError(
                "setting",
                setting.name,
                "the setting on dattri's benchmark points when source='dattri' "
                "(dahp.training.ground_truth.attributed_setting(setting, config)): dattri's ground truth judges "
                "scores of dattri's full-data model on dattri's points, not of ours on our split",
            )
        return benchmark_ground_truth(read_benchmark(models.source, setting.name))
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    data = setting.data()
    started = time.perf_counter()
    train_chunks(setting, config, cache, progress, device, executor)
    base_spec = _base_spec(setting, config, device)
    chunks = []
    for start, stop in chunk_ranges(config):
        payload = cache.load("ground_truth", {**base_spec, "models": [start, stop]})
        if payload is None:
            raise RuntimeError(
                f"ground-truth chunk of models {start}..{stop - 1} is missing from {cache.root} after it was "
                "trained: do all workers write to the same DAHP_CACHE_DIR?"
            )
        chunks.append(payload)
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


def _base_spec(setting: Setting, config: GroundTruthConfig, device: torch.device) -> dict:
    """The cache spec shared by a ground truth's chunks (each adds its ``models`` range)."""
    return {**setting.spec(), "alpha": config.alpha, "seed": config.seed, **dropout_stream(setting, device)}


def _chunk_task(
    setting: Setting,
    config: GroundTruthConfig,
    start: int,
    stop: int,
    spec: dict,
    cache_root: Path,
    device: torch.device,
    progress: bool,
) -> bool:
    """One chunk as an independent task (run in this process or on a worker): train it and write its
    entry unless a valid one is there already. Returns whether it trained."""
    trained = []

    def train() -> dict:
        trained.append(True)
        return _train_chunk(setting, config, start, stop, progress, device)

    # under the cache's lock on the key: a process training the same chunk (another page of the
    # book) is waited for, and its entry loaded
    Cache(cache_root).get_or_compute("ground_truth", spec, train)
    return bool(trained)


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
