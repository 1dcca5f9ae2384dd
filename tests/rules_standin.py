"""Stand-in rules with :mod:`dahp.selection.rules`'s interface, simple enough that the study's table can be
recomputed by hand (the study's tests judge the study, not the real rules)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from dahp.selection.rules import RuleInput, RulePick


def fourth_point(inp: RuleInput) -> RulePick:
    """The fourth candidate of the grid, whatever the problem."""
    return RulePick("fourth_point", inp.grid[3], "a fixed grid position", 0, 0.0)


def val_best_2(inp: RuleInput) -> RulePick:
    """The candidate with the best validation-query LDS of the first two retrained models."""
    started = time.perf_counter()
    scores = inp.validation_lds(2, inp.grid)
    return RulePick("val_best_2", inp.grid[int(np.nanargmax(scores))], "", 2, time.perf_counter() - started)


def shifted(inp: RuleInput) -> RulePick:
    """A fitted rule: the grid point ``offset`` (fitted) positions above the fifth from the top."""
    offset = inp.fitted.get("shifted", {}).get("offset", 0.0)
    index = int(np.clip(len(inp.grid) - 5 + offset, 0, len(inp.grid) - 1))
    return RulePick("shifted", inp.grid[index], "", 0, 0.0)


RULES = {"fourth_point": fourth_point, "val_best_2": val_best_2, "shifted": shifted}
FITTED = {"shifted"}
#: Every call of fit_rule: (rule, families of the rows it was given, the rows).
FIT_CALLS: list[tuple[str, set[str], list[Mapping]]] = []


def fit_rule(name: str, problems_rows: list[Mapping]) -> dict[str, float]:
    """Records what it was fitted on; the fitted offset is the number of rows mod 3."""
    rows = list(problems_rows)
    FIT_CALLS.append((name, {row["family"] for row in rows}, rows))
    return {"offset": float(len(rows) % 3)}
