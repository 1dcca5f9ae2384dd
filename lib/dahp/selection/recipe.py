"""What a training did, as the recipe rule needs it: :class:`RecipeFacts`, by keyword, per optimizer
(:meth:`RecipeFacts.sgd`, :meth:`RecipeFacts.adam`), read from a ``torch.optim`` optimizer
(:meth:`RecipeFacts.from_optimizer`) or from a setting's :class:`~dahp.core.config.TrainingRecipe`.

Every field is checked against one table (:data:`RECIPE_FIELDS`), which the selector also uses for its
``lr`` / ``steps`` / ``momentum`` arguments before it computes anything. The recipe rule itself is in
:mod:`dahp.selection.rules`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from dahp.core.config import OPTIMIZERS, SCHEDULES, InvalidParameterError, TrainingRecipe


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_count(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


#: Each recipe field's test and the range it must lie in (one table: :class:`RecipeFacts` and the
#: selector's ``lr`` / ``steps`` / ``momentum`` are checked against it).
RECIPE_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "lr": (lambda v: _is_number(v) and math.isfinite(v) and v > 0, "a finite number > 0"),
    "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "betas": (
        lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
        "two numbers in [0, 1)",
    ),
    "eps": (lambda v: _is_number(v) and math.isfinite(v) and v > 0, "a finite number > 0"),
    "weight_decay": (lambda v: _is_number(v) and math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "warmup_steps": (lambda v: _is_count(v) and v >= 0, "an integer >= 0"),
    "steps": (lambda v: _is_count(v) and v >= 1, "an integer >= 1 (optimizer steps)"),
    "batch_size": (lambda v: _is_count(v) and v >= 1, "an integer >= 1 (examples per step; required for Adam, AdamW)"),
    "n_train": (lambda v: _is_count(v) and v >= 1, "an integer >= 1"),
    "n_params": (lambda v: _is_count(v) and v >= 1, "an integer >= 1"),
}


def check_recipe_field(name: str, value: object) -> None:
    """Refuse ``value`` for the recipe field ``name`` outside its range (:data:`RECIPE_FIELDS`)."""
    test, valid = RECIPE_FIELDS[name]
    if not test(value):
        raise InvalidParameterError(name, value, valid)


#: ``torch.optim`` classes :meth:`RecipeFacts.from_optimizer` reads, by the name the recipe rule knows.
TORCH_OPTIMIZERS = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw"}


@dataclasses.dataclass(frozen=True)
class RecipeFacts:
    """What the full-data training did, as far as the recipe rule needs it.

    Build it by keyword (``RecipeFacts(optimizer="adam", lr=1e-3, steps=..., batch_size=..., n_train=...,
    n_params=...)``; the rest default to ``torch.optim``'s defaults, a constant rate and no warm-up),
    with :meth:`sgd` or :meth:`adam`, from a ``torch.optim`` optimizer (:meth:`from_optimizer`) or from a
    setting's :class:`~dahp.core.config.TrainingRecipe` (:meth:`from_recipe`). The twelve fields also
    still go positionally in the order below. ``lr``, ``steps``, ``n_train`` and ``n_params`` have no
    default (None is refused); ``batch_size`` is required for Adam and AdamW, whose step depends on it
    (:func:`adam_second_moment`), and unused for SGD.
    """

    optimizer: str = "sgd"  #: ``"sgd"``, ``"adam"`` or ``"adamw"``
    lr: float | None = None  #: base learning rate η (required; None is refused)
    momentum: float = 0.0  #: heavy-ball momentum (SGD; 0 for Adam)
    betas: tuple[float, float] = (0.9, 0.999)  #: Adam's (β₁, β₂)
    eps: float = 1e-8  #: Adam's ε
    weight_decay: float = 0.0  #: L2 (SGD, Adam) or decoupled (AdamW) weight decay, as in ``torch.optim``
    schedule: str = "constant"  #: one of :data:`dahp.core.config.SCHEDULES`
    warmup_steps: int = 0  #: warm-up length in optimizer steps
    steps: int | None = None  #: optimizer steps of the full-data training (required)
    batch_size: int | None = None  #: examples per step (required for Adam / AdamW)
    n_train: int | None = None  #: training points n (required)
    n_params: int | None = None  #: trainable parameters of the model (required)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InvalidParameterError("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise InvalidParameterError("schedule", self.schedule, SCHEDULES)
        for name in RECIPE_FIELDS:
            if name == "batch_size" and self.batch_size is None and self.optimizer == "sgd":
                continue  # SGD's recipe rule does not depend on it
            check_recipe_field(name, getattr(self, name))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @classmethod
    def from_recipe(cls, recipe: TrainingRecipe, n_train: int, n_params: int) -> RecipeFacts:
        """The facts of a :class:`~dahp.core.config.TrainingRecipe` run on ``n_train`` points."""
        return cls(
            recipe.optimizer,
            recipe.lr,
            recipe.momentum,
            tuple(recipe.betas),
            recipe.eps,
            recipe.weight_decay,
            recipe.schedule,
            recipe.warmup_steps,
            recipe.epochs * recipe.steps_per_epoch(n_train),
            recipe.batch_size,
            n_train,
            n_params,
        )

    @classmethod
    def sgd(
        cls,
        lr: float,
        steps: int,
        n_train: int,
        n_params: int,
        momentum: float = 0.0,
        *,
        weight_decay: float = 0.0,
        schedule: str = "constant",
        warmup_steps: int = 0,
        batch_size: int | None = None,
    ) -> RecipeFacts:
        """SGD (heavy-ball with ``momentum``), by default at a constant rate without weight decay."""
        return cls(
            "sgd", lr, momentum, (0.9, 0.999), 1e-8, weight_decay, schedule, warmup_steps, steps, batch_size,
            n_train, n_params,
        )  # fmt: skip

    @classmethod
    def adam(
        cls,
        lr: float,
        steps: int,
        batch_size: int,
        n_train: int,
        n_params: int,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        schedule: str = "constant",
        warmup_steps: int = 0,
    ) -> RecipeFacts:
        """Adam (``torch.optim.Adam``: L2 weight decay), or AdamW with ``decoupled=True``."""
        if not isinstance(decoupled, bool):
            raise InvalidParameterError("decoupled", decoupled, "True (AdamW) or False (Adam)")
        return cls(
            "adamw" if decoupled else "adam", lr, 0.0, betas, eps, weight_decay, schedule, warmup_steps, steps,
            batch_size, n_train, n_params,
        )  # fmt: skip

    @classmethod
    def from_optimizer(
        cls,
        optimizer,
        steps: int,
        batch_size: int,
        n_train: int,
        n_params: int | None = None,
        *,
        schedule: str = "constant",
        warmup_steps: int = 0,
    ) -> RecipeFacts:
        """The facts of a ``torch.optim`` SGD, Adam or AdamW optimizer that ran ``steps`` steps.

        Reads ``lr``, ``momentum``, ``betas``, ``eps`` and ``weight_decay`` from its (single)
        parameter group; ``n_params`` defaults to the trainable parameters it updates. A learning-rate
        scheduler is not visible on the optimizer: state its shape with ``schedule`` (the rate in the
        group is taken as the base rate, so read it before the scheduler changed it, or pass the
        schedule's base rate through :meth:`sgd` / :meth:`adam`).
        """
        kind = TORCH_OPTIMIZERS.get(type(optimizer).__name__)
        groups = getattr(optimizer, "param_groups", None)
        if kind is None or not groups:
            raise InvalidParameterError(
                "optimizer", type(optimizer).__name__, "a torch.optim." + ", torch.optim.".join(TORCH_OPTIMIZERS)
            )
        keys = ("lr", "momentum", "betas", "eps", "weight_decay", "nesterov", "dampening")
        settings = [{k: group.get(k) for k in keys} for group in groups]
        if any(s != settings[0] for s in settings[1:]):
            raise InvalidParameterError(
                "optimizer.param_groups",
                len(groups),
                "parameter groups that share lr, momentum, betas, eps and weight decay",
            )
        group = groups[0]
        if kind == "sgd" and (group.get("nesterov") or group.get("dampening")):
            raise InvalidParameterError(
                "optimizer", "SGD with nesterov or dampening", "torch.optim.SGD with heavy-ball momentum"
            )
        if kind != "sgd" and group.get("amsgrad"):
            raise InvalidParameterError("optimizer", f"{type(optimizer).__name__}(amsgrad=True)", "amsgrad=False")
        if n_params is None:
            n_params = sum(p.numel() for g in groups for p in g["params"] if p.requires_grad)
        lr = group["lr"]
        lr = float(lr) if hasattr(lr, "item") else lr  # a tensor learning rate
        return cls(
            kind,
            lr,
            group.get("momentum", 0.0) if kind == "sgd" else 0.0,
            tuple(group.get("betas", (0.9, 0.999))),
            group.get("eps", 1e-8),
            group.get("weight_decay", 0.0),
            schedule,
            warmup_steps,
            steps,
            batch_size,
            n_train,
            n_params,
        )
