"""A tiny stand-in for ``dahp.rules`` with its fixed interface (robust_common.md), for the study's tests.

The records mirror the real module's; the rules are deliberately simple so the study's table can be
recomputed by hand. :func:`install` puts this module in place of ``dahp.rules`` only when the real
one is absent (the suite branch is written before the rules branch is merged).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class RecipeFacts:
    optimizer: str
    lr: float
    momentum: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    schedule: str
    warmup_steps: int
    steps: int
    batch_size: int
    n_train: int
    n_params: int


@dataclasses.dataclass(frozen=True)
class RuleInput:
    attributor: str
    members: list
    grid: list[float]
    recipe: RecipeFacts | None
    published_default: float | None
    validation_lds: Callable[[int, Sequence[float]], np.ndarray] | None


@dataclasses.dataclass(frozen=True)
class RulePick:
    rule: str
    regularization: float
    diagnosis: str
    trainings: int
    seconds: float


def fourth_point(inp: RuleInput) -> RulePick:
    """The fourth candidate of the grid, whatever the problem."""
    return RulePick("fourth_point", inp.grid[3], "a fixed grid position", 0, 0.0)


def val_best_2(inp: RuleInput) -> RulePick:
    """The candidate with the best validation-query LDS of the first two retrained models."""
    started = time.perf_counter()
    scores = inp.validation_lds(2, inp.grid)
    return RulePick("val_best_2", inp.grid[int(np.nanargmax(scores))], "", 2, time.perf_counter() - started)


def shifted(inp: RuleInput, params: float) -> RulePick:
    """A fitted rule: the grid point ``params`` positions above the top eigenvalue's position."""
    index = int(np.clip(len(inp.grid) - 5 + params, 0, len(inp.grid) - 1))
    return RulePick("shifted", inp.grid[index], "", 0, 0.0)


RULES = {"fourth_point": fourth_point, "val_best_2": val_best_2, "shifted": shifted}
FITTED = {"shifted"}
#: Every call of fit_rule: (rule, families of the rows it was given).
FIT_CALLS: list[tuple[str, set[str]]] = []


def fit_rule(name: str, problems_rows: list[dict]) -> float:
    """Records which families it was fitted on; the fitted constant is the number of rows mod 3."""
    FIT_CALLS.append((name, {row["family"] for row in problems_rows}))
    return float(len(problems_rows) % 3)


def all_picks(inp: RuleInput, rules: Iterable[str] | None = None) -> list[RulePick]:
    return [RULES[name](inp) for name in (rules or [r for r in RULES if r not in FITTED])]


def install() -> None:
    """Make ``import dahp.rules`` find this module when the real one is not there."""
    try:
        import dahp.rules  # noqa: F401
    except ModuleNotFoundError:
        sys.modules["dahp.rules"] = sys.modules[__name__]
