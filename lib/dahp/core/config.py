"""Configuration records shared by the whole package, and the error raised for bad input.

Every default lives in exactly one place: the field defaults of these frozen dataclasses
(and, for per-setting training recipes, the registry in :mod:`dahp.data.settings`); every field carries
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


#: Optimizers a :class:`TrainingRecipe` may name (torch.optim.SGD / Adam / AdamW semantics).
OPTIMIZERS = ("sgd", "adam", "adamw")
#: Learning-rate schedules a :class:`TrainingRecipe` may name (see :func:`dahp.training.train.schedule_factor`).
SCHEDULES = ("constant", "linear", "noam", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """How a model is trained: mini-batch SGD (optionally with heavy-ball momentum), Adam or AdamW,
    under a constant, linear warm-up/decay, Noam or cosine learning-rate schedule.

    The batch order of every epoch is a fresh permutation drawn from a generator seeded by
    the model's seed, so a model is determined by (recipe, training indices, seed).

    A field that the chosen optimizer or schedule would ignore must stay at its default (momentum
    with Adam, betas/eps with SGD, warm-up with the constant schedule), so two recipes that train
    alike never differ in their cache keys.
    """

    epochs: int = option(help="passes over the training set; one checkpoint is kept per epoch")
    batch_size: int = option(help="examples per optimizer step (the last batch of an epoch may be smaller)")
    lr: float = option(help="learning rate η, multiplied by the schedule's factor at every step")
    momentum: float = option(0.0, "heavy-ball momentum, as in ``torch.optim.SGD`` (SGD only)")
    weight_decay: float = option(
        0.0, "L2 penalty added to the gradient (SGD, Adam) or decoupled weight decay (AdamW), as in ``torch.optim``"
    )
    optimizer: str = option("sgd", "``sgd``, ``adam`` or ``adamw`` (``torch.optim.SGD`` / ``Adam`` / ``AdamW``)")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam's decay rates (β₁, β₂) of the moment estimates")
    eps: float = option(1e-8, "Adam's ε added to the root of the second moment")
    schedule: str = option(
        "constant",
        "``constant``; ``linear`` (warm-up from 0 to η over ``warmup_steps`` steps, then linear decay to 0); "
        "``noam`` (η·min(s^-1/2, s·w^-3/2), step s counted from 1); ``cosine`` (linear warm-up over "
        "``warmup_steps`` steps, then half a cosine from η to 0)",
    )
    warmup_steps: int = option(0, "warm-up length w in optimizer steps (``linear``, ``cosine``: >= 0, ``noam``: >= 1)")

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
        if self.optimizer not in OPTIMIZERS:
            raise InvalidParameterError("optimizer", self.optimizer, OPTIMIZERS)
        if isinstance(self.betas, list):  # a recipe read back from JSON
            object.__setattr__(self, "betas", tuple(self.betas))
        if not (
            isinstance(self.betas, tuple)
            and len(self.betas) == 2
            and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)
        ):
            raise InvalidParameterError("betas", self.betas, "a tuple of two numbers in [0, 1)")
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise InvalidParameterError("eps", self.eps, "a number > 0")
        if self.schedule not in SCHEDULES:
            raise InvalidParameterError("schedule", self.schedule, SCHEDULES)
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise InvalidParameterError("warmup_steps", self.warmup_steps, "an integer >= 0")
        self._check_combination()

    def _check_combination(self) -> None:
        """Refuse fields the chosen optimizer or schedule would silently ignore."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        if self.optimizer != "sgd" and self.momentum != 0:
            raise InvalidParameterError(
                "momentum", self.momentum, f"0 with optimizer={self.optimizer!r} (use betas for Adam's momentum)"
            )
        if self.optimizer == "sgd":
            for name in ("betas", "eps"):
                if getattr(self, name) != defaults[name]:
                    raise InvalidParameterError(
                        name, getattr(self, name), f"the default {defaults[name]!r} with optimizer='sgd' (Adam only)"
                    )
        if self.schedule == "constant" and self.warmup_steps != 0:
            raise InvalidParameterError(
                "warmup_steps",
                self.warmup_steps,
                "0 with schedule='constant' (warm-up needs 'linear', 'noam' or 'cosine')",
            )
        if self.schedule == "noam" and self.warmup_steps < 1:
            raise InvalidParameterError("warmup_steps", self.warmup_steps, "an integer >= 1 with schedule='noam'")

    def steps_per_epoch(self, n_examples: int) -> int:
        """Number of optimizer steps one epoch over ``n_examples`` takes."""
        return -(-n_examples // self.batch_size)

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form, used in cache keys and beside results.

        The fields added after the first cached models (optimizer, betas, eps, schedule,
        warmup_steps) are left out while at their defaults, so the keys of plain SGD recipes, and
        with them the models already cached, stay what they were.
        """
        record = _as_dict(self)
        for name in _LATER_FIELDS:
            if record[name] == _DEFAULTS[name]:
                del record[name]
        return record


@dataclasses.dataclass(frozen=True)
class GroundTruthConfig:
    """The retraining experiment behind the LDS (Definition 2.1 of the paper).

    ``n_models`` random subsets, each of ``round(alpha * n_train)`` training points drawn without
    replacement, one model retrained on each. Subset ``j`` and its model's seed depend only on
    ``(seed, j)``, so raising ``n_models`` reuses every model already trained.

    With ``source="dattri"`` nothing is retrained: dattri's published benchmark (its subsets,
    subset-model targets and full-data models, see :mod:`dahp.data.benchmark_folder`) is the ground
    truth, so α, M and the seed are the folder's and must stay at their defaults here.
    """

    alpha: float = option(0.5, "subset fraction α")
    n_models: int = option(50, "number of retrained subset models M")
    seed: int = option(0, "seed of the subsets, the model initialisations and the batch orders")
    models_per_chunk: int = option(25, "models trained together in one vectorised batch and cached as one entry")
    source: str = option(
        "retrain",
        "``retrain`` (our subset models, retrained here) or ``dattri`` (dattri's published benchmark under "
        "``$DAHP_DATTRI_DIR``, default ``data/dattri``: its subsets, targets and full-data models)",
    )

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
        if self.source not in GROUND_TRUTH_SOURCES:
            raise InvalidParameterError("source", self.source, GROUND_TRUTH_SOURCES)
        if self.source == "dattri":
            # dattri's folder fixes these; a value given here would be silently ignored
            for name in _FOLDER_FIELDS:
                default = _GROUND_TRUTH_DEFAULTS[name]
                if getattr(self, name) != default:
                    raise InvalidParameterError(
                        name,
                        getattr(self, name),
                        f"the default {default!r} with source='dattri' (dattri's benchmark folder fixes α, M "
                        "and the subsets)",
                    )

    def subset_size(self, n_train: int) -> int:
        """Size m = round(α n) of every subset (at least 1 and at most n - 1)."""
        return min(max(1, round(self.alpha * n_train)), n_train - 1)

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form, used in cache keys and beside results.

        ``source`` is left out at its default (``retrain``), so the keys of today's ground truths stay
        what they were.
        """
        record = _as_dict(self)
        if record["source"] == "retrain":
            del record["source"]
        return record


#: Where a :class:`GroundTruthConfig` takes its ground truth from.
GROUND_TRUTH_SOURCES = ("retrain", "dattri")
_FOLDER_FIELDS = ("alpha", "n_models", "seed")
_GROUND_TRUTH_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GroundTruthConfig)}
_LATER_FIELDS = ("optimizer", "betas", "eps", "schedule", "warmup_steps")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainingRecipe)}
