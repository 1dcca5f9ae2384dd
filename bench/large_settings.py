"""Wall time and peak memory of the paper's large settings, measured where they are meant to run (a GPU).

Four parts (``--part``), each printing ``RESULT`` lines:

1. ``resnet9_training`` -- one full-data CIFAR-2 ResNet-9 training (:func:`dahp.training.train.train_full`,
   the setting's recipe: SGD, batch 64, 10 epochs). ``--epochs E`` measures E epochs and projects
   the recipe's epochs linearly (every epoch takes the same steps); both numbers are printed.
2. ``resnet9_ground_truth`` -- ``--gt-models k`` models of the 50-model LDS ground truth (α = 0.5,
   the calls of :mod:`dahp.training.ground_truth`: ``train_many`` ``--models-per-chunk`` models at a time,
   then ``evaluate_many`` on the val/test queries), projected to 50 models by the rule
   ``T50 = (50 / k) * (T_train * epochs_recipe / E + T_eval)`` (linear in models and, for the
   training, in epochs; exact when k and 50 are multiples of the chunk). Peak memory is one chunk's
   (finished chunks go to the CPU), so it does not grow with k; it is also measured for each
   ``--chunk-scan`` value of ``models_per_chunk`` (one epoch on a subset of two batches: the
   per-step memory is the same as in the full run).
3. ``fig1c_grid`` -- the Fig 1c page (TRAK, projection dimension × λ) at the ``paper`` profile's
   sizes (dims 256..8192, 33 λ, ensemble 10, 50 models, all 500 test queries), by stage:
   per-example gradients of one chunk, the projection of one chunk to each dimension, the
   library's nested feature stage (gradients + one projection at the largest dimension, cached)
   on ``--feature-chunks`` chunks of training rows, the float64 factorization per dimension, TRAK's
   ``1 - p`` weights, and the 33-λ sweep with the LDS per dimension. The whole page is projected
   from these (it would take far too long to run here): features scale with the number of
   gradient chunks (each chunk redraws the projection matrix), factorizations with the ensemble.
   Models are freshly initialised (the cost of gradients does not depend on the weights) and the
   features fed to the factorization are Gaussian of the real shapes.
4. ``mnist_mlp_grid_ratio`` -- the same small TRAK grid on ``mnist_mlp`` (embedded data; the
   ``quick`` profile's sizes) run by :func:`dahp.experiments.grid.run_grid` on the CPU and on CUDA
   side by side, each from an empty cache; without a CUDA device the ratio is reported as skipped.

Data: "fixture-shaped" synthetic CIFAR-2 (5,000 / 500 / 500 images 3×32×32 in [-1, 1], labels
0/1), built in memory as a copy of the ``cifar2_resnet9`` setting -- never real data, never a
download. Everything is cached in a temporary folder, so nothing is reused between runs.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors
only; the CUDA context and the caching allocator's slack come on top); on every device also the
host's peak resident set size of this process (``getrusage`` ``ru_maxrss``, its high-water mark
reset before each measurement through ``/proc/self/clear_refs``; where that is not allowed the
number is the process's peak so far, and the script says so). An RSS peak includes what the
process already holds when the block starts (imports, data, memory the allocator kept from
earlier parts); that starting size is printed on a ``#`` line beside it.

Sizes: the paper's (above) on CUDA; ``--small`` (the default on a CPU device) is a smoke run at
reduced, printed sizes whose ``RESULT`` names start with ``small_`` -- those numbers measure
nothing about the paper. ``--paper-sizes`` forces the paper's sizes on a CPU. At the paper's sizes
the projection of one chunk to each dimension (part 3) draws ~160 blocks of the projection matrix
on the CPU and takes minutes; where a command is time-limited, run the parts one at a time.

    python bench/large_settings.py [--part all|resnet9_training|resnet9_ground_truth|fig1c_grid|
                                    mnist_mlp_grid_ratio] [--device cuda] [--small|--paper-sizes]
                                   [--epochs E] [--gt-models k] [--models-per-chunk c]
                                   [--chunk-scan 1,5,10,25] [--feature-chunks 1] [--proj-dims ...]
                                   [--gradient-chunk-bytes B] [--vmap-chunk-bytes B]
                                   [--projector dattri|device]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import os
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from dahp.attribution import features
from dahp.attribution.attributors import SpectralScorer
from dahp.attribution.lds import lds
from dahp.attribution.spectral import eigendecompose, factors
from dahp.core.cache import Cache
from dahp.core.config import GroundTruthConfig
from dahp.core.device import describe, resolve_device
from dahp.data.settings import Setting, SplitData, get_setting, register
from dahp.experiments.profiles import get_profile
from dahp.training.ground_truth import model_seed, subset_indices
from dahp.training.train import accuracy_many, evaluate_many, train_full, train_many

PARTS = ("resnet9_training", "resnet9_ground_truth", "fig1c_grid", "mnist_mlp_grid_ratio")
GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures; ``paper`` and ``small`` below, some fields overridden from the command line."""

    name: str
    n_train: int  #: fixture-shaped CIFAR-2 training images
    n_val: int
    n_test: int
    epochs: int  #: epochs actually trained in parts 1 and 2 (the recipe's 10 are projected)
    gt_models: int  #: ground-truth models actually trained (projected to n_models)
    models_per_chunk: int
    chunk_scan: tuple[int, ...]  #: models_per_chunk values whose peak memory is measured
    n_models: int  #: the ground truth's M
    proj_dims: tuple[int, ...]
    n_lambdas: int
    ensemble: int
    feature_chunks: int  #: gradient chunks of training rows run through the nested feature stage
    gradient_chunk_bytes: int
    vmap_chunk_bytes: int
    mnist_epochs: int | None  #: epochs of the mnist_mlp recipe in part 4 (None: the recipe's 50)


def paper_sizes() -> Sizes:
    """The ``paper`` profile's Fig 1c sizes on the full fixture-shaped split."""
    paper = get_profile("paper")
    chunk = GroundTruthConfig().models_per_chunk
    return Sizes(
        name="paper",
        n_train=5000,
        n_val=500,
        n_test=500,
        epochs=get_setting("cifar2_resnet9").recipe.epochs,
        gt_models=chunk,
        models_per_chunk=chunk,
        chunk_scan=tuple(sorted({1, 5, 10, chunk})),
        n_models=paper.n_models,
        proj_dims=paper.proj_dims,
        n_lambdas=paper.n_lambdas,
        ensemble=paper.trak_ensemble,
        feature_chunks=1,
        gradient_chunk_bytes=features.GRADIENT_CHUNK_BYTES,
        vmap_chunk_bytes=features.VMAP_CHUNK_BYTES,
        mnist_epochs=None,
    )


def small_sizes() -> Sizes:
    """A CPU smoke run: every code path of every part, in a few minutes on two cores."""
    return Sizes(
        name="small",
        n_train=64,
        n_val=16,
        n_test=16,
        epochs=1,
        gt_models=2,
        models_per_chunk=2,
        chunk_scan=(1, 2),
        n_models=6,
        proj_dims=(100, 200),  # one and two blocks of the projection matrix
        n_lambdas=5,
        ensemble=2,
        feature_chunks=1,
        gradient_chunk_bytes=1 << 26,  # 3 ResNet-9 gradient rows per chunk instead of 55
        vmap_chunk_bytes=1 << 25,  # 1 row per vmap call instead of 6
        mnist_epochs=1,
    )


# --------------------------------------------------------------------------------------------
# Measuring


@dataclasses.dataclass
class Measured:
    """Wall seconds and peak memory of one measured block."""

    seconds: float = float("nan")
    host_peak_gib: float = float("nan")
    host_start_gib: float = float("nan")  #: resident set size when the block began (part of the peak)
    device_peak_gib: float | None = None  #: CUDA only

    @property
    def peak_gib(self) -> float:
        """The peak that bounds the run: device memory on CUDA, host memory on the CPU."""
        return self.device_peak_gib if self.device_peak_gib is not None else self.host_peak_gib


def _reset_host_peak() -> bool:
    """Reset this process's peak-RSS high-water mark (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


HOST_PEAK_RESETS = _reset_host_peak()


def _resident_gib() -> float:
    """This process's resident set size now (``VmRSS``), NaN where ``/proc`` is not there."""
    try:
        with open("/proc/self/status") as handle:
            kib = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return float("nan")
    return kib / 1024**2


@contextlib.contextmanager
def measure(device: torch.device) -> Iterator[Measured]:
    """Time the block (synchronised on CUDA) and record its peak device and host memory."""
    found = Measured()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    _reset_host_peak()
    found.host_start_gib = _resident_gib()
    started = time.perf_counter()
    yield found
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        found.device_peak_gib = torch.cuda.max_memory_allocated(device) / GIB
    found.seconds = time.perf_counter() - started
    found.host_peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


class Reporter:
    """Prints ``RESULT`` lines; names carry ``small_`` in a smoke run so they are never taken for the paper's."""

    def __init__(self, sizes: Sizes) -> None:
        self.prefix = "small_" if sizes.name == "small" else ""

    def value(self, name: str, value: float | str, digits: int = 3) -> None:
        shown = value if isinstance(value, str) else f"{value:.{digits}f}"
        print(f"RESULT {self.prefix}{name} {shown}", flush=True)

    def measured(self, name: str, found: Measured, seconds_name: str = "seconds") -> None:
        """``<name>_<seconds_name>``, ``<name>_peak_gpu_gib`` (CUDA) and ``<name>_peak_rss_gib``."""
        print(f"# {name}: resident set size {found.host_start_gib:.3f} GiB at the start (inside the RSS peak)")
        self.value(f"{name}_{seconds_name}", found.seconds, 2)
        if found.device_peak_gib is not None:
            self.value(f"{name}_peak_gpu_gib", found.device_peak_gib)
        self.value(f"{name}_peak_rss_gib", found.host_peak_gib)


def _warm_up(device: torch.device) -> None:
    """Create the CUDA context before anything is timed (its memory is not in ``max_memory_allocated``)."""
    if device.type == "cuda":
        torch.zeros(1, device=device)
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# Fixture-shaped CIFAR-2


def _fixture_split(n_train: int, n_val: int, n_test: int, root: Path) -> SplitData:
    """Seeded uniform pixels in [-1, 1] (the real data's range after dattri's transform), labels 0/1."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        tensors[f"x_{split}"] = torch.rand(count, 3, 32, 32, generator=generator) * 2 - 1
        tensors[f"y_{split}"] = torch.randint(0, 2, (count,), generator=generator)
    return SplitData(**tensors)


@functools.cache
def _fixture_loader(n_train: int, n_val: int, n_test: int) -> Callable[[Path], SplitData]:
    """One loader per size, so settings of the same size share one split in :mod:`dahp.data.settings`' load cache."""
    return functools.partial(_fixture_split, n_train, n_val, n_test)


def fixture_setting(n_train: int, n_val: int, n_test: int, epochs: int | None = None) -> Setting:
    """``cifar2_resnet9`` (model, recipe, target) on in-memory synthetic data of the given sizes."""
    base = get_setting("cifar2_resnet9")
    recipe = base.recipe if epochs is None else dataclasses.replace(base.recipe, epochs=epochs)
    return dataclasses.replace(
        base,
        description=f"fixture-shaped CIFAR-2 ({n_train}/{n_val}/{n_test} synthetic images), ResNet-9",
        load=_fixture_loader(n_train, n_val, n_test),
        recipe=recipe,
        required_files=(),
    )


# --------------------------------------------------------------------------------------------
# Part 1: one full-data ResNet-9 training


def resnet9_training(sizes: Sizes, device: torch.device, out: Reporter, found: dict) -> None:
    """Time and peak memory of ``train_full`` on the fixture-shaped split, projected to the recipe's epochs."""
    full_epochs = get_setting("cifar2_resnet9").recipe.epochs
    setting = fixture_setting(sizes.n_train, sizes.n_val, sizes.n_test, epochs=sizes.epochs)
    setting.spec()  # the synthetic split and its cache fingerprint, outside the timing
    print(
        f"\n== resnet9_training: train_full, {sizes.n_train} images, batch {setting.recipe.batch_size}, "
        f"{sizes.epochs} of the recipe's {full_epochs} epochs measured",
        flush=True,
    )
    _warm_up(device)
    with tempfile.TemporaryDirectory(prefix="dahp-bench-") as folder, measure(device) as run:
        train_full(setting, 0, Cache(folder), progress=False, device=device)
    projected = run.seconds * full_epochs / sizes.epochs
    print(
        f"measured {run.seconds:.2f} s for {sizes.epochs} epoch(s); projected {projected:.2f} s for {full_epochs} "
        f"(linear in epochs; the peak does not grow with epochs except the kept CPU checkpoints, "
        f"{full_epochs} x {setting.n_params() * 4 / GIB:.3f} GiB)",
        flush=True,
    )
    out.measured("resnet9_training", run, f"seconds_measured_{sizes.epochs}_epochs")
    out.value(f"resnet9_training_seconds_projected_{full_epochs}_epochs", projected, 2)
    found["training_seconds"] = projected
    found["training_peak_gib"] = run.peak_gib


# --------------------------------------------------------------------------------------------
# Part 2: the ground truth's models, trained models_per_chunk at a time


def resnet9_ground_truth(sizes: Sizes, device: torch.device, out: Reporter, found: dict) -> None:
    """``gt_models`` subset models (train_many per chunk, then evaluate_many), projected to ``n_models``."""
    full_epochs = get_setting("cifar2_resnet9").recipe.epochs
    setting = fixture_setting(sizes.n_train, sizes.n_val, sizes.n_test, epochs=sizes.epochs)
    data = setting.data()
    config = GroundTruthConfig(n_models=max(2, sizes.gt_models), models_per_chunk=sizes.models_per_chunk)
    subset = config.subset_size(data.n_train)
    print(
        f"\n== resnet9_ground_truth: {sizes.gt_models} of {sizes.n_models} models, {subset} points each "
        f"(α={config.alpha}), {sizes.models_per_chunk} per chunk, {sizes.epochs} of {full_epochs} epochs measured",
        flush=True,
    )
    _warm_up(device)
    train_seconds = eval_seconds = 0.0
    train_peak = eval_peak = 0.0
    for start in range(0, sizes.gt_models, sizes.models_per_chunk):
        models = range(start, min(start + sizes.models_per_chunk, sizes.gt_models))
        index_sets = torch.from_numpy(np.stack([subset_indices(data.n_train, config, j) for j in models]))
        seeds = [model_seed(config, j) for j in models]
        with measure(device) as trained:
            state = train_many(
                setting, data.x_train, data.y_train, index_sets, seeds, dropout_seed=start, device=device
            )
        with measure(device) as evaluated:
            for split in ("val", "test"):
                evaluate_many(setting, state, *data.queries(split), device=device)
            accuracy_many(setting, state, data.x_test, data.y_test, device=device)
        train_seconds += trained.seconds
        eval_seconds += evaluated.seconds
        train_peak = max(train_peak, trained.peak_gib)
        eval_peak = max(eval_peak, evaluated.peak_gib)
    projected = sizes.n_models / sizes.gt_models * (train_seconds * full_epochs / sizes.epochs + eval_seconds)
    print(
        f"measured: training {train_seconds:.2f} s, evaluation {eval_seconds:.2f} s; projected to "
        f"{sizes.n_models} models x {full_epochs} epochs: {projected:.2f} s "
        f"(rule: ({sizes.n_models}/{sizes.gt_models}) x (training x {full_epochs}/{sizes.epochs} + evaluation))",
        flush=True,
    )
    where = "gpu" if device.type == "cuda" else "rss"
    out.value(
        f"resnet9_ground_truth_seconds_measured_{sizes.gt_models}_models_{sizes.epochs}_epochs",
        train_seconds + eval_seconds,
        2,
    )
    out.value(f"resnet9_ground_truth_seconds_projected_{sizes.n_models}_models", projected, 2)
    out.value(f"resnet9_ground_truth_training_peak_{where}_gib_models_per_chunk_{sizes.models_per_chunk}", train_peak)
    out.value(f"resnet9_ground_truth_evaluation_peak_{where}_gib", eval_peak)
    found["ground_truth_seconds"] = projected
    found["ground_truth_peak_gib"] = max(train_peak, eval_peak)

    # peak memory per models_per_chunk: one epoch over two batches per model is enough, the
    # memory of a step does not depend on how many steps follow
    batch = setting.recipe.batch_size
    scan_rows = min(subset, 2 * batch)
    one_epoch = fixture_setting(sizes.n_train, sizes.n_val, sizes.n_test, epochs=1)
    for chunk in sizes.chunk_scan:
        index_sets = torch.from_numpy(
            np.stack([subset_indices(data.n_train, config, j % config.n_models)[:scan_rows] for j in range(chunk)])
        )
        with measure(device) as scanned:
            train_many(one_epoch, data.x_train, data.y_train, index_sets, list(range(chunk)), device=device)
        print(
            f"models_per_chunk {chunk:3d}: peak {scanned.peak_gib:.3f} GiB ({where}), "
            f"{scanned.seconds / math.ceil(scan_rows / batch):.3f} s per step of {chunk} x {batch} images",
            flush=True,
        )
        out.value(f"resnet9_training_peak_{where}_gib_models_per_chunk_{chunk}", scanned.peak_gib)


# --------------------------------------------------------------------------------------------
# Part 3: the Fig 1c page (TRAK, projection dimension x λ), stage by stage


def _apply_feature_chunks(sizes: Sizes) -> tuple[int, int]:
    """Set the feature module's chunk bounds for this run; return the previous values."""
    previous = features.GRADIENT_CHUNK_BYTES, features.VMAP_CHUNK_BYTES
    features.GRADIENT_CHUNK_BYTES, features.VMAP_CHUNK_BYTES = sizes.gradient_chunk_bytes, sizes.vmap_chunk_bytes
    return previous


def fig1c_grid(sizes: Sizes, device: torch.device, out: Reporter, found: dict) -> None:
    """Each stage of the Fig 1c page measured at its real size (features on a fraction of the rows),
    and the whole page projected from them."""
    previous = _apply_feature_chunks(sizes)
    try:
        _fig1c_grid(sizes, device, out, found)
    finally:
        features.GRADIENT_CHUNK_BYTES, features.VMAP_CHUNK_BYTES = previous


def _fig1c_grid(sizes: Sizes, device: torch.device, out: Reporter, found: dict) -> None:
    setting = fixture_setting(sizes.n_train, sizes.n_val, sizes.n_test)
    data = setting.data()
    d = setting.n_params()
    chunk = max(1, min(sizes.n_train, features.GRADIENT_CHUNK_BYTES // (d * 4)))
    step = max(1, min(chunk, features.VMAP_CHUNK_BYTES // (d * 4)))
    dims = sorted(sizes.proj_dims)
    lambdas = [0.0, *np.logspace(-4, 2, sizes.n_lambdas - 1)]
    state = setting.init_model(0).state_dict()
    scale = 1.0 / math.sqrt(d)
    where = "gpu" if device.type == "cuda" else "rss"
    print(
        f"\n== fig1c_grid: TRAK on fixture-shaped CIFAR-2 ({sizes.n_train} train, {sizes.n_test} test queries), "
        f"{d:,} parameters, dims {dims}, {len(lambdas)} λ, ensemble {sizes.ensemble}, M={sizes.n_models}; "
        f"gradient chunk {chunk} rows (GRADIENT_CHUNK_BYTES={features.GRADIENT_CHUNK_BYTES}), "
        f"{step} rows per vmap call (VMAP_CHUNK_BYTES={features.VMAP_CHUNK_BYTES})",
        flush=True,
    )
    _warm_up(device)
    peaks: dict[str, float] = {}
    width = min(dims[-1], features.PROJECTOR_BLOCK)
    print(
        f"projection matrix: drawn per gradient chunk in blocks of {d:,} x {width} float32 "
        f"({d * width * 4 / GIB:.2f} GiB each, "
        + (
            "on the CPU from dattri's seeds, then moved to the device); "
            if features.projection_generator(device) == "cpu"
            else f"by the {device.type} generator from dattri's seeds, on the device); "
        )
        + f"{math.ceil(dims[-1] / width)} blocks per chunk at {dims[-1]}",
        flush=True,
    )

    # (a) per-example gradients of one chunk, nothing else
    with measure(device) as gradients:
        features.per_example_gradients(
            setting,
            state,
            data.x_train[:chunk],
            data.y_train[:chunk],
            setting.target,
            scale,
            sink=lambda start, rows: None,
            device=device,
        )
    print(f"gradients of one chunk ({chunk} rows): {gradients.seconds:.2f} s, peak {gradients.peak_gib:.3f} GiB")
    out.measured("fig1c_gradients_one_chunk", gradients)
    peaks["gradients"] = gradients.peak_gib

    # (b) the projection of one chunk to each dimension on its own (the page projects once, at the largest)
    rows = torch.randn(chunk, d, device=device)
    for dim in dims:
        with measure(device) as projected:
            features.project(rows, features.Projection(dim, 0, 0, features.projection_generator(device)), device)
        blocks = math.ceil(dim / min(dim, features.PROJECTOR_BLOCK))
        print(
            f"projection of one chunk to {dim:5d} ({blocks} blocks of the matrix drawn): {projected.seconds:.2f} s, "
            f"peak {projected.peak_gib:.3f} GiB"
        )
        out.measured(f"fig1c_projection_one_chunk_dim_{dim}", projected)
        peaks[f"projection {dim}"] = projected.peak_gib
    del rows

    # (c) the library's feature stage (gradients, one nested projection, cache writes) on whole chunks
    measured_rows = min(sizes.n_train, sizes.feature_chunks * chunk)
    fraction = fixture_setting(measured_rows, sizes.n_val, sizes.n_test)
    fraction.spec()  # outside the timing, as above
    with tempfile.TemporaryDirectory(prefix="dahp-bench-") as folder, measure(device) as nested:
        features.gradient_features(
            fraction,
            state,
            {"bench": "fig1c", "member": 0},
            "train",
            "trak",
            dims,
            0,
            0,
            Cache(folder),
            progress=False,
            device=device,
        )
    measured_chunks = math.ceil(measured_rows / chunk)
    per_chunk = nested.seconds / measured_chunks
    page_chunks = math.ceil(sizes.n_train / chunk) + math.ceil(sizes.n_test / chunk)
    features_seconds = sizes.ensemble * page_chunks * per_chunk
    print(
        f"feature stage on {measured_rows} rows ({measured_chunks} chunk(s), all dims from one projection at "
        f"{dims[-1]}): {nested.seconds:.2f} s, peak {nested.peak_gib:.3f} GiB; the page: {sizes.ensemble} members x "
        f"{page_chunks} chunks (train + test) x {per_chunk:.2f} s = {features_seconds:.1f} s (projected)",
        flush=True,
    )
    out.measured(f"fig1c_feature_stage_{measured_rows}_rows", nested)
    out.value("fig1c_feature_stage_seconds_projected_page", features_seconds, 1)
    peaks["feature stage"] = nested.peak_gib

    # (d) TRAK's 1 - p weights (one forward pass over every training image) and the factorizations
    with measure(device) as weighting:
        weights = features.one_minus_correct_probability(setting, state, device)
    out.measured("fig1c_trak_weights", weighting)
    peaks["1 - p weights"] = weighting.peak_gib
    generator = torch.Generator().manual_seed(0)
    factorized, factor_seconds = {}, {}
    for dim in dims:
        train = torch.randn(sizes.n_train, dim, generator=generator)
        queries = torch.randn(sizes.n_test, dim, generator=generator)
        with measure(device) as factorizing:
            factorized[dim] = factors(eigendecompose(train, 1.0, device=device), train, queries, 1.0, device)
        factor_seconds[dim] = factorizing.seconds
        print(
            f"factorization at {dim:5d} ({factorized[dim].form} form, rank {len(factorized[dim].eigenvalues)}): "
            f"{factorizing.seconds:.2f} s, peak {factorizing.peak_gib:.3f} GiB"
        )
        out.measured(f"fig1c_factorization_dim_{dim}", factorizing)
        peaks[f"factorization {dim}"] = factorizing.peak_gib
    factorization_seconds = sizes.ensemble * (sum(factor_seconds.values()) + len(dims) * weighting.seconds)

    # (e) the λ sweep with the LDS, per dimension, over an ensemble of the measured factors
    config = GroundTruthConfig(n_models=sizes.n_models)
    subsets = torch.from_numpy(np.stack([subset_indices(sizes.n_train, config, j) for j in range(sizes.n_models)]))
    targets = torch.randn(sizes.n_models, sizes.n_test, generator=generator)
    sweep_seconds = 0.0
    for dim in dims:
        scorer = SpectralScorer([factorized[dim]] * sizes.ensemble, weights)
        with measure(device) as sweep:
            for lam in lambdas:
                lds(scorer.scores(lam), targets, subsets, device=device)
        sweep_seconds += sweep.seconds
        print(
            f"sweep at {dim:5d}: {len(lambdas)} λ x ({sizes.ensemble} members + LDS): {sweep.seconds:.2f} s, "
            f"peak {sweep.peak_gib:.3f} GiB"
        )
        out.measured(f"fig1c_sweep_dim_{dim}", sweep)
        peaks[f"sweep {dim}"] = sweep.peak_gib
    del factorized

    attribution_seconds = features_seconds + factorization_seconds + sweep_seconds
    print(
        f"the page without training (projected): features {features_seconds:.1f} s + factorizations and weights "
        f"{sizes.ensemble} x {len(dims)} = {factorization_seconds:.1f} s + sweeps {sweep_seconds:.1f} s "
        f"= {attribution_seconds:.1f} s",
        flush=True,
    )
    out.value("fig1c_attribution_seconds_projected_page", attribution_seconds, 1)
    if "training_seconds" in found and "ground_truth_seconds" in found:
        training = sizes.ensemble * found["training_seconds"] + found["ground_truth_seconds"]
        peaks["training"] = max(found["training_peak_gib"], found["ground_truth_peak_gib"])
        print(
            f"with training: {sizes.ensemble} full-data models x {found['training_seconds']:.1f} s + ground truth "
            f"{found['ground_truth_seconds']:.1f} s = {training:.1f} s; the whole page {attribution_seconds + training:.1f} s"
            " (projected)",
            flush=True,
        )
        out.value("fig1c_page_seconds_projected", attribution_seconds + training, 1)
    else:
        print("the page's training (ensemble + ground truth) is not included: run parts 1 and 2 in the same call")
    heaviest = max(peaks, key=peaks.get)
    print(f"peak memory of the page: {peaks[heaviest]:.3f} GiB ({where}), in the stage '{heaviest}'", flush=True)
    out.value(f"fig1c_page_peak_{where}_gib", peaks[heaviest])


# --------------------------------------------------------------------------------------------
# Part 4: the same small mnist_mlp grid on the CPU and on CUDA


def _mnist_setting(sizes: Sizes) -> str:
    """``mnist_mlp``, or (smoke run) a copy registered with the recipe cut to ``mnist_epochs`` epochs."""
    if sizes.mnist_epochs is None:
        return "mnist_mlp"
    name = f"mnist_mlp_{sizes.mnist_epochs}_epochs"
    base = get_setting("mnist_mlp")
    register(
        dataclasses.replace(
            base,
            name=name,
            description=f"{base.description}; recipe cut to {sizes.mnist_epochs} epochs (bench smoke run)",
            recipe=dataclasses.replace(base.recipe, epochs=sizes.mnist_epochs),
        )
    )
    return name


def mnist_mlp_grid_ratio(sizes: Sizes, device: torch.device, out: Reporter, found: dict) -> None:
    """``run_grid`` of one small TRAK grid on the CPU and on the CUDA device, each from an empty cache."""
    from dahp.experiments.grid import make_grid_spec, run_grid

    quick = get_profile("quick")
    name = _mnist_setting(sizes)
    spec = make_grid_spec(
        name,
        "trak",
        vary={"proj_dim": list(quick.proj_dims), "regularization": [0.0, *np.logspace(-4, 2, quick.n_lambdas - 1)]},
        fixed={"ensemble_size": quick.trak_ensemble},
        ground_truth_config=GroundTruthConfig(n_models=quick.n_models),
        n_queries=quick.n_queries,
    )
    print(
        f"\n== mnist_mlp_grid_ratio: run_grid, TRAK on {name}, dims {list(quick.proj_dims)}, {quick.n_lambdas} λ, "
        f"ensemble {quick.trak_ensemble}, M={quick.n_models}, {quick.n_queries} queries (the quick profile), "
        "training included, empty cache on each device",
        flush=True,
    )
    records = {}
    sides = [torch.device("cpu")]
    if device.type == "cuda":
        sides.append(device)
    for side in sides:
        _warm_up(side)
        with tempfile.TemporaryDirectory(prefix="dahp-bench-") as folder, measure(side) as run:
            records[side.type] = run_grid(spec, Cache(folder), progress=False, device=side)
        print(f"{describe(side)}: {run.seconds:.2f} s, peak {run.peak_gib:.3f} GiB", flush=True)
        out.measured(f"mnist_mlp_grid_{side.type}", run)
        found[f"mnist_{side.type}"] = run.seconds
    if "mnist_cuda" not in found:
        reason = "no CUDA device" if not torch.cuda.is_available() else f"--device is {device}"
        print(f"RESULT mnist_mlp_grid_gpu_over_cpu_speedup skipped ({reason})", flush=True)
        return
    gap = np.abs(records["cpu"].table["lds_mean"].to_numpy() - records["cuda"].table["lds_mean"].to_numpy()).max()
    print(f"largest |LDS(cpu) - LDS(cuda)| over the grid: {gap:.2e}", flush=True)
    out.value("mnist_mlp_grid_gpu_over_cpu_speedup", found["mnist_cpu"] / found["mnist_cuda"], 2)


# --------------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", *PARTS], default="all")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: dahp.core.device.resolve_device)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="CPU smoke sizes (default when the device is the CPU)")
    size.add_argument("--paper-sizes", action="store_true", help="the paper's sizes even on a CPU")
    parser.add_argument("--epochs", type=int, help="epochs trained in parts 1-2 (the recipe's are projected)")
    parser.add_argument("--gt-models", type=int, help="ground-truth models trained (projected to M)")
    parser.add_argument("--models-per-chunk", type=int, help="models trained at once (GroundTruthConfig)")
    parser.add_argument("--chunk-scan", type=_ints, help="models_per_chunk values whose peak memory is measured")
    parser.add_argument("--feature-chunks", type=int, help="gradient chunks through the nested feature stage")
    parser.add_argument("--proj-dims", type=_ints, help="projection dimensions of the grid")
    parser.add_argument(
        "--gradient-chunk-bytes", type=int, help="dahp.attribution.features.GRADIENT_CHUNK_BYTES for this run"
    )
    parser.add_argument("--vmap-chunk-bytes", type=int, help="dahp.attribution.features.VMAP_CHUNK_BYTES for this run")
    parser.add_argument(
        "--projector",
        choices=features.PROJECTORS,
        help="how projection matrices are drawn (sets $DAHP_PROJECTOR; default: dattri's CPU matrix)",
    )
    args = parser.parse_args()
    if args.projector is not None:
        os.environ[features.PROJECTOR_ENV] = args.projector

    device = resolve_device(args.device)
    small = args.small or (device.type == "cpu" and not args.paper_sizes)
    sizes = small_sizes() if small else paper_sizes()
    overrides = {
        field: getattr(args, field)
        for field in (
            "epochs",
            "gt_models",
            "models_per_chunk",
            "chunk_scan",
            "feature_chunks",
            "proj_dims",
            "gradient_chunk_bytes",
            "vmap_chunk_bytes",
        )
        if getattr(args, field) is not None
    }
    sizes = dataclasses.replace(sizes, **overrides)
    if not (1 <= sizes.epochs <= get_setting("cifar2_resnet9").recipe.epochs):
        raise SystemExit(f"--epochs must be in 1..{get_setting('cifar2_resnet9').recipe.epochs}")
    if not (1 <= sizes.gt_models <= sizes.n_models) or sizes.models_per_chunk < 1 or sizes.feature_chunks < 1:
        raise SystemExit(f"--gt-models must be in 1..{sizes.n_models}; --models-per-chunk and --feature-chunks >= 1")

    print(
        f"device {describe(device)}; torch {torch.__version__}; sizes: {sizes.name}; "
        f"projection matrices drawn by the {features.projection_generator(device)} generator",
        flush=True,
    )
    if small:
        print(
            "SMOKE RUN at reduced sizes (--small): every part runs, but no number below is a measurement of the "
            "paper's sizes; RESULT names start with small_",
            flush=True,
        )
    print(f"sizes: {dataclasses.asdict(sizes)}", flush=True)
    print(
        "peak memory: "
        + ("torch.cuda.max_memory_allocated per block (GPU) and " if device.type == "cuda" else "")
        + (
            "peak RSS of this process per block (getrusage after resetting the high-water mark)"
            if HOST_PEAK_RESETS
            else "peak RSS of this process SO FAR (the high-water mark could not be reset here)"
        ),
        flush=True,
    )
    out = Reporter(sizes)
    found: dict = {}
    parts = {
        "resnet9_training": resnet9_training,
        "resnet9_ground_truth": resnet9_ground_truth,
        "fig1c_grid": fig1c_grid,
        "mnist_mlp_grid_ratio": mnist_mlp_grid_ratio,
    }
    for name in PARTS if args.part == "all" else (args.part,):
        parts[name](sizes, device, out, found)


if __name__ == "__main__":
    main()
