"""dattri's published benchmark, read from a local folder (never from the network).

``dattri.benchmark.load.load_benchmark(model, dataset, "lds", download_path=DIR)`` downloads, on a
machine with network, dattri's checkpoints and LDS ground truth and keeps them under ``DIR`` in
this layout (``ID`` is dattri's ``f"{dataset}_{model}"``, e.g. ``mnist_lr``)::

    DIR/benchmark/ID/models_full/0/model_weights_0.pt   # models trained on all n training points,
    DIR/benchmark/ID/models_full/1/model_weights_0.pt   #   one per initialisation seed
    ...
    DIR/benchmark/ID/models_half/0/model_weights_0.pt   # models retrained on half subsets
    ...                                                 #   (dattri's retrain_lds also writes indices.txt here)
    DIR/benchmark/ID/lds/indices_lds.pt                 # int tensor  (M, k): training indices of each subset
    DIR/benchmark/ID/lds/target_values_lds.pt           # float tensor (M, n_test): target under each subset model
    DIR/dataset/...                                     # the raw data torchvision/dattri put there

Every checkpoint is ``torch.save(model.state_dict(), path)``; ``load_benchmark`` counts the numbered
sub-folders and reads ``0 .. count-1``. Training points are dattri's ``train_sampler``
(``range(n_train)``) and queries its ``test_sampler`` (``range(n_test)``), in the order of its
train/test datasets. :func:`read_benchmark` reads this folder, checks it before any compute and
says what is wrong with which file; :func:`benchmark_ground_truth` turns it into the
``(targets, subsets)`` pair that :func:`dahp.attribution.lds.lds` takes. Scores judged by it must be computed
on dattri's points, which for MNIST are not our embedded digits (dattri takes the first 5,000 of
torchvision's MNIST training set): :func:`benchmark_split` reads them from ``DIR/dataset`` and
:func:`benchmark_setting` is our setting on them, whose attributed full-data models are dattri's
(:func:`benchmark_models`; its cache spec carries the folder's content digest).
:func:`dahp.training.ground_truth.attributed_setting` builds it for ``GroundTruthConfig(source="dattri")``.
:func:`write_fixture` writes a tiny folder in exactly this layout.

Not verifiable offline, and therefore checked only where the folder itself says so: that
``models_half/i`` is the model of row ``i`` of ``indices_lds.pt`` (checked when ``indices.txt``
lies beside it, as ``retrain_lds`` leaves it), and that dattri's GPT-2 checkpoints are state-dict
files at all (its GPT-2 experiment keeps Hugging Face folders; ``load_benchmark`` expects
``model_weights_0.pt`` for every benchmark, and so does this reader).

Sign convention. dattri's ``calculate_lds_ground_truth`` stores the *negated* per-example loss
(averaged over the runs of a subset), "flipped to be consistent with the score calculated by the
attributors": a larger value is a better outcome for the query. Our margin has the same
orientation, and our attributions are positive when including a training point raises the margin
(and so lowers the loss). dattri's stored values therefore enter :func:`dahp.attribution.lds.lds` unchanged and
a good attributor scores a positive LDS. For the settings whose target is a loss, a file holding
the loss itself (every value >= 0, some > 0) is recognised and negated, and a file with both signs
is rejected; see :attr:`BenchmarkFolder.targets_negated`.

Book: "Data attribution and the LDS" (the protocol difference, :func:`protocol_difference`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dahp.core.cache import file_sha256
from dahp.core.config import InvalidParameterError
from dahp.data.settings import MissingDataError, Setting, SplitData, get_setting, load_cifar2

CHECKPOINT_KINDS = ("full", "half")
CHECKPOINT_NAME = "model_weights_0.pt"  # run 0 of each folder: the only one load_benchmark reads
INDICES_FILE = "lds/indices_lds.pt"
TARGETS_FILE = "lds/target_values_lds.pt"
SUBSET_INDICES_TXT = "indices.txt"  # written by dattri's retrain_lds next to each half-data model


@dataclasses.dataclass(frozen=True)
class DattriBenchmark:
    """One of dattri's published benchmarks and the setting of ours it corresponds to."""

    setting: str  #: our setting key
    dataset: str  #: dattri's ``dataset`` argument of ``load_benchmark``
    model: str  #: dattri's ``model`` argument of ``load_benchmark``
    n_train: int  #: dattri's train sampler: training points ``0 .. n_train-1``
    n_test: int  #: dattri's test sampler: queries ``0 .. n_test-1``
    target: str  #: what dattri's target values are, in words
    loss_target: bool  #: True when the stored values are a (negated) loss, so their sign is known

    @property
    def identifier(self) -> str:
        """dattri's folder name ``f"{dataset}_{model}"``."""
        return f"{self.dataset}_{self.model}"


_LOSS = "the per-example cross-entropy loss, negated and averaged over the runs of each subset,"
#: Our setting key -> dattri's benchmark (sizes from dattri 0.3.0's ``SAMPLERSIZE_MAP``).
DATTRI_BENCHMARKS: dict[str, DattriBenchmark] = {
    b.setting: b
    for b in (
        DattriBenchmark("mnist_lr", "mnist", "lr", 5000, 500, _LOSS, True),
        DattriBenchmark("mnist_mlp", "mnist", "mlp", 5000, 500, _LOSS, True),
        DattriBenchmark("cifar2_resnet9", "cifar2", "resnet9", 5000, 500, _LOSS, True),
        DattriBenchmark("maestro_mt", "maestro", "musictransformer", 5000, 178, _LOSS, True),
        DattriBenchmark("wikitext2_gpt2", "wikitext2", "gpt2", 4656, 481, _LOSS, True),
    )
}


def dattri_benchmark(setting: str) -> DattriBenchmark:
    """dattri's benchmark for our setting key (raises :class:`InvalidParameterError` if none)."""
    if setting not in DATTRI_BENCHMARKS:
        raise InvalidParameterError("setting", setting, list(DATTRI_BENCHMARKS))
    return DATTRI_BENCHMARKS[setting]


def provenance(setting: str) -> str:
    """Where the folder comes from: the one call that makes it, and where to put it."""
    b = dattri_benchmark(setting)
    return (
        f"The folder comes from dattri's published benchmark: on a machine with network, run\n"
        f'  python -c "from dattri.benchmark.load import load_benchmark; '
        f"load_benchmark(model='{b.model}', dataset='{b.dataset}', metric='lds', download_path='DIR')\"\n"
        f"then copy DIR here (DIR/benchmark/{b.identifier}/ holds the checkpoints and ground truth, DIR/dataset/ "
        f"the data points) and pass DIR as the root. "
        f"Nothing is downloaded by this package."
    )


def protocol_difference(setting: str) -> str:
    """One paragraph, for pages, on how dattri's published ground truth differs from ours."""
    b = dattri_benchmark(setting)
    orientation = (
        "dattri stores its target function's values negated; the reader turns them, by their sign, into "
        "values where larger is a better outcome (the orientation of our margin)"
    )
    return (
        f"This LDS uses dattri's published benchmark {b.identifier!r} in place of our retraining, so "
        f"its protocol is dattri's, not ours: the target is {b.target} where our ground truth records the "
        f"correct-class margin; the training points are the first {b.n_train:,} and the queries the "
        f"first {b.n_test:,} of dattri's own train and test datasets, with no separate validation "
        f"queries; the half-data subsets, their seeds and the models (full-data and subset models "
        f"alike) are dattri's, trained by dattri's scripts with dattri's recipes. {orientation}: an "
        f"attributor in our sign convention scores a positive LDS."
    )


@dataclasses.dataclass(frozen=True)
class BenchmarkFolder:
    """dattri's benchmark for one setting, read and checked (see the module docstring)."""

    setting: str  #: our setting key
    benchmark: DattriBenchmark  #: dattri's names and sizes for it
    source: Path  #: the folder ``DIR/benchmark/ID`` it was read from
    full_paths: tuple[Path, ...]  #: ``models_full/i/model_weights_0.pt``, i = 0, 1, …
    half_paths: tuple[Path, ...]  #: ``models_half/i/model_weights_0.pt``, i = 0, 1, …
    models_full: tuple[dict[str, torch.Tensor], ...]  #: state dicts of the full-data models (CPU, memory-mapped)
    models_half: tuple[dict[str, torch.Tensor], ...]  #: state dicts of the half-data models (CPU, memory-mapped)
    subset_indices: torch.Tensor  #: ``(M, k)`` int64 training indices of each subset, as stored
    target_values: torch.Tensor  #: ``(M, n_test)`` float target values, as stored
    targets_negated: bool  #: True when the stored values are already the negated loss (dattri's form)

    @property
    def train_range(self) -> range:
        """The training points dattri attributes to (its ``train_sampler``)."""
        return range(self.benchmark.n_train)

    @property
    def test_range(self) -> range:
        """The queries of the ground truth (its ``test_sampler``), in the column order of the targets."""
        return range(self.benchmark.n_test)

    @property
    def dataset_dir(self) -> Path:
        """``DIR/dataset``, where ``load_benchmark`` keeps the raw data."""
        return self.source.parent.parent / "dataset"

    def state_dict(self, kind: str, i: int) -> dict[str, torch.Tensor]:
        """State dict of checkpoint ``i`` of ``kind`` (``"full"`` or ``"half"``)."""
        if kind not in CHECKPOINT_KINDS:
            raise InvalidParameterError("kind", kind, CHECKPOINT_KINDS)
        states = self.models_full if kind == "full" else self.models_half
        if not (isinstance(i, int) and 0 <= i < len(states)):
            raise InvalidParameterError("i", i, f"an integer in [0, {len(states)})")
        return states[i]

    def model(self, kind: str, i: int) -> nn.Module:
        """Our setting's model with checkpoint ``i`` of ``kind`` loaded strictly, in eval mode."""
        model = get_setting(self.setting).make_model()
        model.load_state_dict(self.state_dict(kind, i), strict=True)
        return model.eval()


@dataclasses.dataclass(frozen=True)
class BenchmarkGroundTruth:
    """dattri's LDS ground truth with the accessors of :class:`dahp.training.ground_truth.GroundTruth`.

    ``targets("test")`` and ``subsets`` go straight into :func:`dahp.attribution.lds.lds`; scores must be
    computed on dattri's training points and queries (:attr:`BenchmarkFolder.train_range`,
    :attr:`BenchmarkFolder.test_range`), not on our split.
    """

    setting: str  #: our setting key
    source: Path  #: the benchmark folder it was read from
    n_train: int  #: number of training points the subsets index into
    subsets: torch.Tensor  #: ``(M, k)`` training indices of each subset, each row sorted
    test_targets: torch.Tensor  #: ``(M, n_test)`` targets, larger = better outcome (our orientation)

    @property
    def n_models(self) -> int:
        """Number of subset models M."""
        return self.subsets.shape[0]

    @property
    def alpha(self) -> float:
        """Subset fraction k / n (dattri's ``subset_ratio``)."""
        return self.subsets.shape[1] / self.n_train

    def targets(self, split: str = "test") -> torch.Tensor:
        """``(M, n_test)`` targets of the queries; dattri's benchmark has only ``"test"`` queries."""
        if split != "test":
            raise InvalidParameterError("split", split, "'test' (dattri's benchmark has no validation queries)")
        return self.test_targets

    def membership(self, n_train: int | None = None) -> torch.Tensor:
        """``(M, n_train)`` 0/1 matrix: row ``j`` marks the points of subset ``j``."""
        mask = torch.zeros(self.n_models, self.n_train if n_train is None else n_train)
        mask.scatter_(1, self.subsets, 1.0)
        return mask

    def for_dattri(self, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(ground_truth_values, subset_indices)`` pair ``dattri.metric.lds`` expects."""
        return self.targets(split), self.subsets


def benchmark_ground_truth(folder: BenchmarkFolder) -> BenchmarkGroundTruth:
    """dattri's targets and subsets, oriented so that ``lds(scores, gt.targets(), gt.subsets)`` is ours."""
    targets = folder.target_values.to(torch.float64)
    return BenchmarkGroundTruth(
        setting=folder.setting,
        source=folder.source,
        n_train=folder.benchmark.n_train,
        subsets=torch.sort(folder.subset_indices, dim=1).values,
        test_targets=targets if folder.targets_negated else -targets,
    )


# --------------------------------------------------------------------------------------------
# Reading and checking


class _Problems:
    """Problems found in the folder: one line each, raised together before any compute."""

    def __init__(self, setting: str, source: Path) -> None:
        self.setting, self.source, self.lines = setting, source, []

    def add(self, path: Path, what: str) -> None:
        self.lines.append(f"  - {path}: {what}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise MissingDataError(
                f"dattri's benchmark folder for setting {self.setting!r} ({self.source}) cannot be used:\n"
                + "\n".join(self.lines)
                + "\n"
                + provenance(self.setting)
            )


def _identifier_folder(root: Path, benchmark: DattriBenchmark) -> Path:
    """``root/benchmark/ID`` (root is load_benchmark's download_path), or ``root`` if it is that folder."""
    if root.name == benchmark.identifier and (root / "lds").is_dir():
        return root
    return root / "benchmark" / benchmark.identifier


def _torch_load(path: Path) -> object:
    """``torch.load`` with ``weights_only`` (plain tensors and dicts); memory-mapped where the format allows."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # mmap needs the zip format torch.save has written since 1.6: older files (or none) load whole
        return torch.load(path, map_location="cpu", weights_only=True)


def _read(path: Path, problems: _Problems, expected: str) -> object | None:
    """The object in ``path``, or None after recording why it cannot be read."""
    if not path.is_file():
        problems.add(path, f"missing (expected {expected})")
        return None
    try:
        return _torch_load(path)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        problems.add(path, f"not readable by torch.load(weights_only=True) (expected {expected}): {first}")
        return None


def _checkpoint_paths(source: Path, kind: str, problems: _Problems) -> tuple[Path, ...]:
    """``models_<kind>/i/model_weights_0.pt`` for i = 0 .. count-1, as load_benchmark lists them."""
    directory = source / f"models_{kind}"
    if not directory.is_dir():
        problems.add(directory, f"missing (expected one numbered folder per {kind}-data model)")
        return ()
    count = sum(1 for item in directory.iterdir() if item.is_dir())
    if count == 0:
        problems.add(directory, f"holds no model folders (expected 0/{CHECKPOINT_NAME}, 1/{CHECKPOINT_NAME}, …)")
    # load_benchmark names the checkpoints by counting folders, not by listing them
    return tuple(directory / str(i) / CHECKPOINT_NAME for i in range(count))


def _check_state(path: Path, state: object, reference: dict[str, torch.Tensor], problems: _Problems) -> bool:
    """Whether ``state`` loads strictly into our setting's model (keys and shapes); records why not."""
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        problems.add(path, f"not a state dict (expected torch.save(model.state_dict()), got {type(state).__name__})")
        return False
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} (ours {tuple(reference[k].shape)})"
        for k in reference
        if k in state and state[k].shape != reference[k].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)):
            if keys:
                parts.append(f"{label} {', '.join(keys[:4])}{', …' if len(keys) > 4 else ''}")
        problems.add(path, "does not match the model of our setting (" + "; ".join(parts) + ")")
        return False
    return True


def _check_indices(path: Path, indices: object, benchmark: DattriBenchmark, problems: _Problems) -> bool:
    n = benchmark.n_train
    if not isinstance(indices, torch.Tensor) or indices.ndim != 2 or indices.dtype.is_floating_point:
        shape = tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__
        problems.add(path, f"expected an integer tensor of shape (n_subsets, subset_size), got {shape}")
        return False
    if indices.numel() == 0 or indices.min() < 0 or indices.max() >= n:
        problems.add(path, f"indices outside dattri's training range 0..{n - 1} (min/max {_min_max(indices)})")
        return False
    if indices.shape[1] >= n:
        problems.add(path, f"subsets of {indices.shape[1]} points are not proper subsets of the {n} training points")
        return False
    sorted_rows = torch.sort(indices, dim=1).values
    repeated = torch.nonzero((sorted_rows[:, 1:] == sorted_rows[:, :-1]).any(dim=1)).flatten()
    if len(repeated):
        problems.add(path, f"subset {int(repeated[0])} repeats a training index ({len(repeated)} such rows)")
        return False
    return True


def _min_max(t: torch.Tensor) -> str:
    return f"{t.min().item()}/{t.max().item()}" if t.numel() else "empty"


def _check_targets(path: Path, targets: object, benchmark: DattriBenchmark, problems: _Problems) -> bool:
    if not isinstance(targets, torch.Tensor) or targets.ndim != 2 or not targets.dtype.is_floating_point:
        shape = (
            f"{tuple(targets.shape)} {targets.dtype}" if isinstance(targets, torch.Tensor) else type(targets).__name__
        )
        problems.add(path, f"expected a float tensor of shape (n_subsets, {benchmark.n_test}), got {shape}")
        return False
    if targets.shape[1] != benchmark.n_test:
        problems.add(
            path,
            f"{targets.shape[1]} columns, but dattri's {benchmark.identifier} has {benchmark.n_test} test queries "
            f"(shape {tuple(targets.shape)}, expected (n_subsets, {benchmark.n_test}))",
        )
        return False
    if not torch.isfinite(targets).all():
        problems.add(path, f"{int((~torch.isfinite(targets)).sum())} values are not finite")
        return False
    return True


def _orientation(path: Path, targets: torch.Tensor, benchmark: DattriBenchmark, problems: _Problems) -> bool:
    """True when ``targets`` are dattri's negated loss (≤ 0), False when they are the loss itself (≥ 0)."""
    if not benchmark.loss_target or (targets <= 0).all():
        return True
    if (targets >= 0).all():
        return False
    problems.add(
        path,
        f"values of both signs ({_min_max(targets)}): neither a loss (>= 0) nor dattri's negated loss (<= 0)",
    )
    return True


def _check_subset_files(half_paths: tuple[Path, ...], indices: torch.Tensor, problems: _Problems) -> None:
    """Where retrain_lds left ``indices.txt`` beside a half-data model, it must be that subset's row."""
    for path in half_paths:
        listing = path.parent / SUBSET_INDICES_TXT
        row = int(path.parent.name)
        if not listing.is_file() or row >= indices.shape[0]:
            continue
        try:
            stored = np.loadtxt(listing, dtype=np.int64, ndmin=1)
        except ValueError as error:
            problems.add(listing, f"not one integer per line: {error}")
            continue
        if not np.array_equal(np.sort(stored), np.sort(indices[row].numpy())):
            problems.add(listing, f"lists a different subset than row {row} of {INDICES_FILE}")


def read_benchmark(root: Path | str, setting: str) -> BenchmarkFolder:
    """Read and check dattri's benchmark for ``setting`` from ``root`` (never downloads).

    Args:
        root: the ``download_path`` given to dattri's ``load_benchmark`` (the folder holding
            ``benchmark/ID``), or the folder ``benchmark/ID`` itself.
        setting: our setting key (one of :data:`DATTRI_BENCHMARKS`).

    Raises:
        InvalidParameterError: ``setting`` has no dattri benchmark.
        MissingDataError: the folder, a file, or the agreement between files is wrong; one line
            per problem, naming the file, and where the folder comes from.
        NotImplementedError: our setting's model is not part of this version of dahp, so its
            checkpoints cannot be checked.
    """
    benchmark = dattri_benchmark(setting)
    source = _identifier_folder(Path(root).expanduser(), benchmark)
    problems = _Problems(setting, source)
    if not source.is_dir():
        problems.add(source, "missing (no such folder)")
        problems.raise_if_any()

    indices = _read(source / INDICES_FILE, problems, "an int tensor (n_subsets, subset_size)")
    targets = _read(source / TARGETS_FILE, problems, f"a float tensor (n_subsets, {benchmark.n_test})")
    paths = {kind: _checkpoint_paths(source, kind, problems) for kind in CHECKPOINT_KINDS}

    indices_ok = indices is not None and _check_indices(source / INDICES_FILE, indices, benchmark, problems)
    targets_ok = targets is not None and _check_targets(source / TARGETS_FILE, targets, benchmark, problems)
    negated = True
    if indices_ok and targets_ok:
        if indices.shape[0] != targets.shape[0]:
            problems.add(
                source / TARGETS_FILE,
                f"{targets.shape[0]} rows, but {source / INDICES_FILE} has {indices.shape[0]} subsets",
            )
        elif indices.shape[0] < 2:
            problems.add(source / INDICES_FILE, "fewer than 2 subsets: the LDS needs at least 2")
        negated = _orientation(source / TARGETS_FILE, targets, benchmark, problems)
        _check_subset_files(paths["half"], indices, problems)

    states = {kind: _read_checkpoints(paths[kind], setting, problems) for kind in CHECKPOINT_KINDS}
    problems.raise_if_any()
    return BenchmarkFolder(
        setting=setting,
        benchmark=benchmark,
        source=source,
        full_paths=paths["full"],
        half_paths=paths["half"],
        models_full=states["full"],
        models_half=states["half"],
        subset_indices=indices.to(torch.int64),
        target_values=targets,
        targets_negated=negated,
    )


def _read_checkpoints(paths: tuple[Path, ...], setting: str, problems: _Problems) -> tuple[dict, ...]:
    """Each checkpoint, checked against our setting's model (its keys and shapes, then a strict load)."""
    if not paths:
        return ()
    with torch.random.fork_rng(devices=[]):  # building the reference model leaves the caller's RNG alone
        model = get_setting(setting).make_model()
    reference = model.state_dict()
    states = []
    for path in paths:
        state = _read(path, problems, "a state dict of the setting's model")
        if state is not None and _check_state(path, state, reference, problems):
            states.append((path, state))
    if states:
        # keys and shapes agree, so this can only fail on what load_state_dict checks beyond them
        try:
            model.load_state_dict(states[0][1], strict=True)
        except RuntimeError as error:
            problems.add(states[0][0], f"does not load into the model of our setting: {str(error).splitlines()[0]}")
    return tuple(state for _, state in states)


# --------------------------------------------------------------------------------------------
# dattri's data points: scores must be computed on them to be judged by dattri's ground truth

#: torchvision's MNIST files under ``DIR/dataset`` (create_mnist_dataset's root), uncompressed as
#: torchvision leaves them: (images, labels) of the training and the test set.
MNIST_RAW = "MNIST/raw"
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_NORMALIZE = (0.1307, 0.3081)  # dattri's transforms.Normalize for MNIST
IDX_MAGIC = {1: 0x0801, 3: 0x0803}  # unsigned-byte IDX files with 1 (labels) or 3 (images) dimensions


def _read_idx(path: Path, ndim: int, problems: _Problems) -> np.ndarray | None:
    """An unsigned-byte IDX file (MNIST's format), or None after recording what is wrong."""
    if not path.is_file():
        problems.add(path, f"missing (torchvision's MNIST file, expected under {MNIST_RAW}/)")
        return None
    raw = path.read_bytes()
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != IDX_MAGIC[ndim]:
        problems.add(path, f"not an unsigned-byte IDX file with {ndim} dimension(s)")
        return None
    shape = tuple(int.from_bytes(raw[4 + 4 * d : 8 + 4 * d], "big") for d in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        problems.add(path, f"{len(raw) - header} bytes of data, but its header announces shape {shape}")
        return None
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def benchmark_split(folder: BenchmarkFolder) -> SplitData:
    """dattri's data points of the benchmark, from ``DIR/dataset`` (in the order its indices refer to).

    Train: dattri's ``n_train`` training points; test queries: its ``n_test`` test points, the
    columns of its targets; validation queries (which dattri does not have): the next 500 training
    points, outside dattri's training range, as :func:`dahp.data.settings.load_cifar2` takes them.
    MNIST is scaled as dattri's transform does (``(x / 255 − 0.1307) / 0.3081``) and flattened to
    784 features like our embedded MNIST; CIFAR-2 is read by :func:`dahp.data.settings.load_cifar2`,
    whose split is dattri's. Raises :class:`MissingDataError` naming each missing or malformed file.
    """
    return DattriPoints(folder.setting, folder.dataset_dir)(folder.dataset_dir)


@dataclasses.dataclass(frozen=True)
class DattriPoints:
    """A setting's ``load`` that reads dattri's data points (hashable, so the setting's data cache works)."""

    setting: str  #: our setting key
    dataset_dir: Path  #: ``DIR/dataset``

    def __call__(self, root: Path) -> SplitData:
        """dattri's points (``root``, our data directory, is not used: they live under ``dataset_dir``)."""
        return _read_points(self.setting, self.dataset_dir)


def benchmark_setting(folder: BenchmarkFolder) -> Setting:
    """Our setting with dattri's data points in place of ours (same model, recipe and target), whose
    attributed full-data models are dattri's (:func:`benchmark_models`).

    Its data fingerprint differs from the original's and its cache spec carries the folder's
    identity (:meth:`DattriModels.__call__`), so nothing cached on our split or our models is reused.
    """
    base = get_setting(folder.setting)
    return dataclasses.replace(
        base,
        description=f"{base.description} (dattri's benchmark points)",
        load=DattriPoints(folder.setting, folder.dataset_dir),
        embedded=False,
        required_files=(),
        data_instructions=provenance(folder.setting),
        model_spec=DattriModels(folder.setting, folder.source, folder.full_paths),
    )


@dataclasses.dataclass(frozen=True)
class DattriModels:
    """dattri's full-data models of a benchmark setting: the models attributed on its points.

    As a setting's ``model_spec`` it returns the folder's identity, which so joins every cache key
    built on that setting (features, eigendecompositions). The identity is the SHA-256 of the
    *contents* of the files anything here is computed from -- ``lds/indices_lds.pt``,
    ``lds/target_values_lds.pt`` and every ``models_full/i/model_weights_0.pt`` -- not of their
    sizes or times, so a copied folder keeps its cache and a replaced checkpoint does not. The
    half-data models are not hashed: only their targets are used. Each file is hashed once per
    process while its size and modification time stay the same.
    """

    setting: str  #: our setting key
    source: Path  #: the folder ``DIR/benchmark/ID``
    full_paths: tuple[Path, ...]  #: ``models_full/i/model_weights_0.pt``, i = 0, 1, …

    @property
    def n_full(self) -> int:
        """Number of published full-data models (the largest TRAK ensemble they allow)."""
        return len(self.full_paths)

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """State dict (CPU) of dattri's full-data model ``i`` (its final weights: dattri keeps no other epoch)."""
        if not (isinstance(i, int) and 0 <= i < self.n_full):
            raise InvalidParameterError(
                "full-data model",
                i,
                f"an integer in [0, {self.n_full}) (the models under {self.source / 'models_full'})",
            )
        return _torch_load(self.full_paths[i])

    def identity(self) -> dict[str, str]:
        """``{"ground_truth_source": "dattri", "benchmark": ID, "sha256": …}`` (see the class docstring)."""
        files = (self.source / INDICES_FILE, self.source / TARGETS_FILE, *self.full_paths)
        combined = hashlib.sha256()
        for path in files:
            combined.update(f"{path.relative_to(self.source)}\0{file_sha256(path)}\n".encode())
        return {
            "ground_truth_source": "dattri",
            "benchmark": dattri_benchmark(self.setting).identifier,
            "sha256": combined.hexdigest(),
        }

    def __call__(self, root: Path) -> dict[str, str]:
        """The identity (``root``, our data directory, is not used: the models live under ``source``)."""
        return self.identity()


def benchmark_models(setting: Setting) -> DattriModels | None:
    """dattri's full-data models when ``setting`` is a :func:`benchmark_setting`, else None (ours are trained)."""
    return setting.model_spec if isinstance(setting.model_spec, DattriModels) else None


def _read_points(setting: str, root: Path) -> SplitData:
    b = dattri_benchmark(setting)
    if b.dataset == "cifar2":
        get_setting(setting).check_data(root)
        return load_cifar2(root)
    if b.dataset != "mnist":
        raise NotImplementedError(f"reading dattri's {b.dataset} data is not part of this version of dahp")
    problems = _Problems(setting, root)
    arrays = {
        (split, part): _read_idx(root / MNIST_RAW / name, 3 if part == "x" else 1, problems)
        for split, names in MNIST_FILES.items()
        for part, name in zip(("x", "y"), names, strict=True)
    }
    problems.raise_if_any()
    need = {"train": b.n_train + 500, "test": b.n_test}
    for split, names in MNIST_FILES.items():
        x, y = arrays[(split, "x")], arrays[(split, "y")]
        if x.shape[1:] != (28, 28) or len(y) != len(x) or len(x) < need[split]:
            problems.add(
                root / MNIST_RAW / names[0],
                f"{x.shape} images, {len(y)} labels: expected at least {need[split]} 28x28 images with one label each",
            )
    problems.raise_if_any()
    mean, std = MNIST_NORMALIZE

    def scale(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((x.reshape(len(x), -1) / 255.0 - mean) / std).astype(np.float32))

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.int64))

    x_tr, y_tr = arrays[("train", "x")], arrays[("train", "y")]
    x_te, y_te = arrays[("test", "x")], arrays[("test", "y")]
    n, m = b.n_train, b.n_test
    return SplitData(
        x_train=scale(x_tr[:n]),
        y_train=labels(y_tr[:n]),
        x_val=scale(x_tr[n : n + 500]),
        y_val=labels(y_tr[n : n + 500]),
        x_test=scale(x_te[:m]),
        y_test=labels(y_te[:m]),
    )


def _write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = IDX_MAGIC[array.ndim].to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


# --------------------------------------------------------------------------------------------
# A fixture in dattri's exact layout, for tests and for pages that show the mechanism


def write_fixture(
    root: Path | str,
    setting: str = "mnist_lr",
    n_full: int = 2,
    n_half: int = 6,
    seed: int = 0,
    with_data: bool = False,
) -> np.ndarray:
    """Write a tiny benchmark folder in exactly dattri's layout under ``root`` (the download_path).

    The checkpoints are freshly initialised models of our setting (not trained); subsets are drawn
    the way dattri's ``retrain_lds`` draws them (``default_rng(seed + i).choice(n, n // 2)``, unsorted,
    with an ``indices.txt`` beside each half-data model); the targets follow a known linear datamodel:
    the loss of query q under subset model j is ``b_q − Σ_{i ∈ S_j} θ_{iq}`` (positive), and the file
    holds its negation, as dattri's ``calculate_lds_ground_truth`` stores it. With ``with_data``
    (MNIST settings only), random digits in torchvision's MNIST files go under ``root/dataset``.

    Returns:
        ``θ``, the ``(n_train, n_test)`` datamodel coefficients: in our sign convention the ideal
        attribution, whose LDS against this fixture is exactly 1.
    """
    benchmark = dattri_benchmark(setting)
    source = Path(root) / "benchmark" / benchmark.identifier
    n, k = benchmark.n_train, benchmark.n_train // 2
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n, benchmark.n_test)) / np.sqrt(k)
    subsets = [np.random.default_rng(seed + i).choice(n, k, replace=False) for i in range(n_half)]
    gain = np.stack([theta[s].sum(0) for s in subsets])  # (M, n_test)
    loss = gain.max(0) + 1.0 - gain
    setting_ = get_setting(setting)
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays as it was
        for kind, count in (("full", n_full), ("half", n_half)):
            for i in range(count):
                folder = source / f"models_{kind}" / str(i)
                folder.mkdir(parents=True, exist_ok=True)
                model = setting_.init_model(seed * 1000 + (i if kind == "full" else 500 + i))
                torch.save(model.state_dict(), folder / CHECKPOINT_NAME)
                if kind == "half":
                    (folder / SUBSET_INDICES_TXT).write_text("\n".join(map(str, subsets[i])))
    (source / "lds").mkdir(parents=True, exist_ok=True)
    torch.save(torch.tensor(np.stack(subsets)), source / INDICES_FILE)
    torch.save(torch.from_numpy(-loss).to(torch.float32), source / TARGETS_FILE)
    if with_data:
        if benchmark.dataset != "mnist":
            raise InvalidParameterError("with_data", with_data, "False unless the setting is an MNIST one")
        counts = {"train": n + 500, "test": benchmark.n_test}
        for split, (images, labels) in MNIST_FILES.items():
            raw = Path(root) / "dataset" / MNIST_RAW
            _write_idx(raw / images, rng.integers(0, 256, size=(counts[split], 28, 28)))
            _write_idx(raw / labels, rng.integers(0, 10, size=counts[split]))
    return theta
