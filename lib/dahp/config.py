"""Configuration records shared by the whole package, and the error raised for bad input.

Every default lives in exactly one place: the field defaults of these frozen dataclasses
(and, for per-setting training recipes, the registry in :mod:`dahp.settings`); every field carries
a help text (:func:`option`), which the book's tables show beside it. Each record
checks itself on construction, so a bad value fails before any computation starts, and
serialises to a plain dict (:meth:`as_dict`) that keys the cache and is written beside results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any


class InvalidParameterError(ValueError):
    """A parameter was given a value outside its valid range or set of choices.

    The message always names the parameter, the value given and what would be valid.
    """

    def __init__(self, parameter: str, value: Any, valid: str | Iterable[Any]) -> None:
        if not isinstance(valid, str):
            valid = "one of " + ", ".join(repr(v) for v in valid)
        self.parameter = parameter
        self.value = value
        self.valid = valid
        super().__init__(f"invalid {parameter}={value!r}; valid: {valid}")


def _as_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def option(default: Any = dataclasses.MISSING, help: str = "") -> Any:
    """A dataclass field with a help text (a required field when no default is given).

    The help text is what the book's tables and the command line show next to the field.
    """
    return dataclasses.field(default=default, metadata={"help": help})


def field_help(record: Any) -> dict[str, str]:
    """Field name -> help text of a configuration record (class or instance)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(record)}


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """How a model is trained: plain mini-batch SGD with optional heavy-ball momentum.

    The batch order of every epoch is a fresh permutation drawn from a generator seeded by
    the model's seed, so a model is determined by (recipe, training indices, seed).
    """

    epochs: int = option(help="passes over the training set; one checkpoint is kept per epoch")
    batch_size: int = option(help="examples per SGD step (the last batch of an epoch may be smaller)")
    lr: float = option(help="learning rate η")
    momentum: float = option(0.0, "heavy-ball momentum, as in ``torch.optim.SGD``")
    weight_decay: float = option(0.0, "L2 penalty added to the gradient, as in ``torch.optim.SGD``")

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise InvalidParameterError("epochs", self.epochs, "an integer >= 1")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise InvalidParameterError("batch_size", self.batch_size, "an integer >= 1")
        if not self.lr > 0:
            raise InvalidParameterError("lr", self.lr, "a number > 0")
        if not 0 <= self.momentum < 1:
            raise InvalidParameterError("momentum", self.momentum, "a number in [0, 1)")
        if not self.weight_decay >= 0:
            raise InvalidParameterError("weight_decay", self.weight_decay, "a number >= 0")

    def steps_per_epoch(self, n_examples: int) -> int:
        """Number of SGD steps one epoch over ``n_examples`` takes."""
        return -(-n_examples // self.batch_size)

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form, used in cache keys and beside results."""
        return _as_dict(self)


@dataclasses.dataclass(frozen=True)
class GroundTruthConfig:
    """The retraining experiment behind the LDS (Definition 2.1 of the paper).

    ``n_models`` random subsets, each of ``round(alpha * n_train)`` training points drawn without
    replacement, one model retrained on each. Subset ``j`` and its model's seed depend only on
    ``(seed, j)``, so raising ``n_models`` reuses every model already trained.
    """

    alpha: float = option(0.5, "subset fraction α")
    n_models: int = option(50, "number of retrained subset models M")
    seed: int = option(0, "seed of the subsets, the model initialisations and the batch orders")
    models_per_chunk: int = option(25, "models trained together in one vectorised batch and cached as one entry")

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 1):
            raise InvalidParameterError("alpha", self.alpha, "a number in the open interval (0, 1)")
        if not (isinstance(self.n_models, int) and self.n_models >= 2):
            raise InvalidParameterError(
                "n_models", self.n_models, "an integer >= 2 (M, the number of retrained models)"
            )
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise InvalidParameterError("seed", self.seed, "an integer >= 0")
        if not (isinstance(self.models_per_chunk, int) and self.models_per_chunk >= 1):
            raise InvalidParameterError("models_per_chunk", self.models_per_chunk, "an integer >= 1")

    def subset_size(self, n_train: int) -> int:
        """Size m = round(α n) of every subset (at least 1 and at most n - 1)."""
        return min(max(1, round(self.alpha * n_train)), n_train - 1)

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form, used in cache keys and beside results."""
        return _as_dict(self)
