"""CIFAR-2 (cat vs dog from CIFAR-10): loader with format checks, model factory and a tiny fixture.

The data are the CIFAR-10 "python version" batches (``cifar-10-batches-py/data_batch_1..5`` and
``test_batch``): each file a pickled dict (written by Python 2, protocol 2, keys as bytes) with
``b"data"``, a uint8 array of shape ``(N, 3072)`` (per image the 1,024 red, then green, then blue
pixels of a 32x32 image, row-major), ``b"labels"``, ``N`` ints in 0..9, and ``b"batch_label"`` and
``b"filenames"``. The real batches hold 10,000 images each.

Checks before use (:func:`read_batch`): a file that does not unpickle, is not such a dict, has data
of another type or shape or labels of another length or range stops with one
:class:`~dahp.data.settings.MissingDataError` naming the file, what is wrong and where the real data
comes from. Batches of fewer than 10,000 images are accepted (fixtures, subsets); a batch of
exactly 10,000 images claims to be a real one and must match the published MD5 of that file.

Split sizes follow from the data: of the ``A`` cat/dog images of the training batches (in file
order), the first ``n_train = min(5000, A * 5000 // 5500)`` are the training set and the next
``n_val = min(500, A - n_train)`` the validation queries; the test queries are the first
``min(500, T)`` of the ``T`` cat/dog images of the test batch. The real data (``A = 10,000``)
give dattri's 5,000 / 500 / 500; the fixture (:func:`write_fixture`, ``A = 20``, ``T = 4``) gives
18 / 2 / 4.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dahp.data.split import MissingDataError, SplitData

CIFAR_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CIFAR2_CLASSES = (3, 5)  # cat, dog in CIFAR-10's label order
CIFAR2_TRAIN, CIFAR2_VAL, CIFAR2_TEST = 5000, 500, 500  # dattri's benchmark sizes
ROWS_PER_REAL_BATCH = 10_000
PIXELS = 3 * 32 * 32
#: The published MD5 of each real batch file (the CIFAR-10 python archive; torchvision checks the same).
REAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
DATA_INSTRUCTIONS = (
    "Download the CIFAR-10 'python version' archive (cifar-10-python.tar.gz, "
    "https://www.cs.toronto.edu/~kriz/cifar.html) and unpack it into the data directory, so that "
    "data/cifar-10-batches-py/ holds data_batch_1..5 and test_batch."
)
_LABEL_NAMES = (b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck")


def _malformed(path: Path, problem: str, what: str = "is not a usable CIFAR-10 python batch") -> Exception:
    """The one error for unusable user data: the file, what is wrong, where the real data come from."""

    return MissingDataError(f"{path} {what}: {problem}. {DATA_INSTRUCTIONS}")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of one batch file, format checked.

    Raises:
        MissingDataError: naming ``path`` and what is wrong, before any use of its contents.
    """
    if not path.is_file():
        raise _malformed(path, "the file does not exist", what="is missing")
    raw = path.read_bytes()
    try:
        batch: Any = pickle.loads(raw, encoding="bytes")
    except Exception as error:  # a truncated or foreign file can fail in many ways
        raise _malformed(path, f"cannot be unpickled ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict):
        raise _malformed(path, f"holds a {type(batch).__name__}, not a dict")
    missing = [key for key in (b"data", b"labels") if key not in batch]
    if missing:
        raise _malformed(path, f"lacks the key(s) {missing} (keys found: {sorted(map(repr, batch))})")
    data, labels = batch[b"data"], batch[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == PIXELS):
        described = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}".strip()
        raise _malformed(path, f"b'data' must be a uint8 array of shape (N, {PIXELS}), found {described}")
    n_rows = data.shape[0]
    if n_rows == 0:
        raise _malformed(path, "b'data' holds no images")
    label_array = np.asarray(labels)
    if label_array.shape != (n_rows,) or label_array.dtype.kind not in "iu":
        raise _malformed(path, f"b'labels' must be {n_rows} integers (one per image), found {label_array.shape}")
    if label_array.min() < 0 or label_array.max() > 9:
        raise _malformed(path, f"b'labels' must lie in 0..9, found {label_array.min()}..{label_array.max()}")
    if n_rows == ROWS_PER_REAL_BATCH and path.name in REAL_MD5:
        digest = hashlib.md5(raw).hexdigest()
        if digest != REAL_MD5[path.name]:
            raise _malformed(
                path, f"has a real batch's 10,000 images but MD5 {digest}, not the published {REAL_MD5[path.name]}"
            )
    return data.reshape(n_rows, 3, 32, 32), label_array.astype(np.int64)


def _cat_dog(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The cat and dog images of the batches, in file order; cat -> 0, dog -> 1."""
    batches = [read_batch(path) for path in paths]  # every file checked before any is used
    x = np.concatenate([images for images, _ in batches])
    y = np.concatenate([labels for _, labels in batches])
    keep = np.isin(y, CIFAR2_CLASSES)
    return x[keep], (y[keep] == CIFAR2_CLASSES[1]).astype(np.int64)


def split_sizes(n_train_pool: int, n_test_pool: int) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` taken from ``n_train_pool`` training and ``n_test_pool`` test cat/dog
    images: dattri's 5,000 / 500 / 500 when there are enough, else the same 10:1 train/val ratio."""
    n_train = min(CIFAR2_TRAIN, n_train_pool * CIFAR2_TRAIN // (CIFAR2_TRAIN + CIFAR2_VAL))
    return n_train, min(CIFAR2_VAL, n_train_pool - n_train), min(CIFAR2_TEST, n_test_pool)


def _scale(x: np.ndarray) -> torch.Tensor:
    """Pixels to [-1, 1] per channel, as dattri's ``Normalize((0.5,) * 3, (0.5,) * 3)`` does."""
    return torch.from_numpy((x.astype(np.float32) / 255.0 - 0.5) / 0.5)


def load_cifar2(root: Path) -> SplitData:
    """dattri's CIFAR-2 (cat vs dog) from the CIFAR-10 python batches under ``root``.

    Train: the first 5,000 cat/dog images of the training batches (dattri's benchmark); validation
    queries: the next 500; test queries: the first 500 cat/dog images of the test batch (fewer
    when the files hold fewer, see :func:`split_sizes`). Pixels are mapped to [-1, 1] per channel,
    as dattri's transform does; cat is label 0, dog label 1.

    Raises:
        MissingDataError: a batch is malformed, or too few cat/dog images for a split.
    """

    folder = root / CIFAR_DIR
    x_pool, y_pool = _cat_dog([folder / name for name in TRAIN_BATCHES])
    x_te, y_te = _cat_dog([folder / TEST_BATCH])
    n_train, n_val, n_test = split_sizes(len(y_pool), len(y_te))
    if min(n_train, n_val, n_test) < 1:
        raise _malformed(
            folder,
            f"{len(y_pool)} training and {len(y_te)} test images of cats and dogs; at least 2 and 1 are "
            "needed for a train/validation/test split",
            what="holds too few images for CIFAR-2",
        )
    return SplitData(
        x_train=_scale(x_pool[:n_train]),
        y_train=torch.from_numpy(y_pool[:n_train]),
        x_val=_scale(x_pool[n_train : n_train + n_val]),
        y_val=torch.from_numpy(y_pool[n_train : n_train + n_val]),
        x_test=_scale(x_te[:n_test]),
        y_test=torch.from_numpy(y_te[:n_test]),
    )


def make_model() -> nn.Module:
    """dattri's benchmark ResNet-9 with two outputs (cat, dog), freshly initialised."""
    from dattri.benchmark.models.resnet9.resnet9 import ResNet9

    return ResNet9(num_classes=2)


#: Labels of each fixture batch: four cats/dogs and two images of other classes (to be dropped).
FIXTURE_LABELS = (3, 5, 0, 5, 3, 9)


def write_fixture(root: Path) -> None:
    """Write tiny CIFAR-10 python batches under ``root/cifar-10-batches-py/``, in exactly the real format.

    Six images per batch (:data:`FIXTURE_LABELS`: 2 cats, 2 dogs, 2 others), seeded random pixels,
    pickled like the real files: protocol 2, a dict with bytes keys ``b"batch_label"``,
    ``b"labels"`` (Python ints), ``b"data"`` (uint8, ``(6, 3072)``) and ``b"filenames"``; plus
    ``batches.meta``. :func:`load_cifar2` reads it as 18 / 2 / 4 train/val/test images.
    """
    folder = root / CIFAR_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [*TRAIN_BATCHES, TEST_BATCH]
    for number, name in enumerate(names, start=1):
        label = f"training batch {number} of 5" if name != TEST_BATCH else "testing batch 1 of 1"
        labels = [int(v) for v in FIXTURE_LABELS]
        batch = {
            b"batch_label": label.encode(),
            b"labels": labels,
            b"data": rng.integers(0, 256, (len(labels), PIXELS), dtype=np.uint8),
            b"filenames": [
                f"fixture_{_LABEL_NAMES[v].decode()}_{number}_{i}.png".encode() for i, v in enumerate(labels)
            ],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"num_cases_per_batch": len(FIXTURE_LABELS), b"label_names": list(_LABEL_NAMES), b"num_vis": PIXELS}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
