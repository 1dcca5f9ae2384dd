"""Results keyed by what made them: the book's folder for the plan's runs, a folder of its own for any other.

A notebook of the book writes its results with one call::

    folder = results_folder("fig1a_cg_regularization.md", globals())

which reads the notebook's parameters cell (names and defaults), takes the values those names hold in
the notebook's namespace, and compares them with the parameters the plan (``notebooks/plan.yml``)
runs that notebook with (the cell's defaults updated with the plan entry's). When they equal one of
the plan's entries the folder is the book's, ``data/results/<profile>/``; otherwise it is
``data/results/<profile>/runs/<hash>/`` (:func:`dahp.core.results.results_dir` with the differing
parameters), with ``parameters.json`` beside the results. So ``papermill ... -p seed 1`` or the
walkthrough's ``-p n_train 64`` never touches the files the book's pages read.

Parameters that say where a computation runs rather than what it computes (:data:`WHERE`) and the
profile (already the folder's name) are not compared.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dahp.book.plan import NOTEBOOKS, load_plan
from dahp.core.results import results_dir

#: Parameters that choose where a run computes, not what: a rerun on a GPU still makes the book's results.
WHERE = ("profile", "device")


def declared_parameters(notebook: str) -> list[Any]:
    """The parameters (papermill's ``Parameter``: name, type, default text, help) of the notebook's
    ``parameters`` cell, in order; empty when it has none."""
    import jupytext
    from papermill.translators import papermill_translators

    translator = papermill_translators.find_translator("python3", "python")
    for cell in jupytext.read(NOTEBOOKS / notebook).cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return translator.inspect(cell)
    return []


def notebook_defaults(notebook: str) -> dict[str, Any]:
    """The default value of every parameter of the notebook (its cell's literals)."""
    return {p.name: ast.literal_eval(p.default) for p in declared_parameters(notebook)}


def plan_parameters(notebook: str) -> list[dict[str, Any]]:
    """The full parameter sets the plan runs ``notebook`` with (its defaults, updated with each entry's);
    the defaults alone when the plan does not run it."""
    defaults = notebook_defaults(notebook)
    sets = [{**defaults, **entry.parameters} for entry in load_plan() if entry.notebook == notebook]
    return sets or [defaults]


def _same(a: Any, b: Any) -> bool:
    """Equal as the notebook would use them (tuples and lists alike, 1 and 1.0 alike)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str) or a == b


def non_default(notebook: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of ``values`` (the notebook's namespace) that differ from the closest of the plan's
    parameter sets for the notebook, :data:`WHERE` left out; empty for a run the plan makes."""
    best: dict[str, Any] | None = None
    for reference in plan_parameters(notebook):
        differing = {
            name: values[name]
            for name in reference
            if name not in WHERE and name in values and not _same(values[name], reference[name])
        }
        if best is None or len(differing) < len(best):
            best = differing
    return best or {}


def results_folder(notebook: str, values: Mapping[str, Any]) -> Path:
    """Where the notebook ``notebook`` (file under notebooks/) writes its results, given its namespace
    ``values`` (``globals()`` in the notebook, which must define ``profile``): the book's folder for the
    plan's parameters, else a folder of the run's own with its ``parameters.json`` (module docstring)."""
    differing = non_default(notebook, values)
    if not differing:
        return results_dir(values["profile"])
    folder = results_dir(values["profile"], parameters={"notebook": Path(notebook).stem, **differing})
    shown = ", ".join(f"{name}={value!r}" for name, value in differing.items())
    print(f"Parameters differ from the book's ({shown}): results go to {folder.relative_to(folder.parents[2])}/")
    return folder
