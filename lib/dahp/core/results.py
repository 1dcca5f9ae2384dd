"""Where results live and how they are written: ``data/results/<profile>/``, tidy tables and JSON.

Every experiment's record writes through here: tidy long tables (never JSON inside a cell) and a
JSON file beside them with the configuration, the profile and the headline numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dahp.core.config import InvalidParameterError
from dahp.core.paths import data_dir
from dahp.core.statistics import Estimate

#: Folders under ``data/results/``: one per run profile, and one for command-line runs.
RESULT_FOLDERS = ("quick", "default", "paper", "cli")


#: Sub-folder of a profile's folder holding the runs made with non-default parameters.
RUNS = "runs"


def run_name(parameters: Mapping[str, Any]) -> str:
    """A short, stable name for a set of parameters: the first 12 hex digits of its canonical JSON's SHA-256."""
    text = json.dumps(_plain(dict(parameters)), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def results_dir(profile: str, parameters: Mapping[str, Any] | None = None) -> Path:
    """``data/results/<profile>/`` (under ``$DAHP_DATA_DIR`` if set), created if absent.

    Every profile writes to its own folder, and the command line to ``cli/``, so a rerun at other
    sizes never overwrites the tables another profile's pages are judged from. ``parameters``: the
    non-default parameters of a run (empty or None for the book's own run); a run with any gets
    ``<profile>/runs/<run_name(parameters)>/`` with ``parameters.json`` beside its results, so it never
    overwrites the files the book reads (``dahp.book.runs`` decides what is non-default).
    """
    if profile not in RESULT_FOLDERS:
        raise InvalidParameterError("profile", profile, RESULT_FOLDERS)
    folder = data_dir() / "results" / profile
    if parameters:
        folder = folder / RUNS / run_name(parameters)
    folder.mkdir(parents=True, exist_ok=True)
    if parameters:
        write_json(folder / "parameters.json", dict(parameters))
    return folder


def _plain(value: Any) -> Any:
    """JSON-able form of numbers, estimates, arrays and containers."""
    if isinstance(value, Estimate):
        return value.as_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON (NaN as null)."""
    path.write_text(json.dumps(_plain(dict(payload)), indent=2, default=str) + "\n")


def read_json(path: Path) -> dict:
    """The JSON beside a record."""
    return json.loads(path.read_text())


def matches(frame: pd.DataFrame, combination: Mapping[str, Any]) -> pd.Series:
    """Rows of ``frame`` whose columns equal ``combination`` (None matches a missing value)."""
    mask = pd.Series(True, index=frame.index)
    for name, value in combination.items():
        column = frame[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            mask &= column.isna()
        elif column.dtype.kind == "f" and isinstance(value, (int, float)) and not isinstance(value, bool):
            mask &= np.isclose(column.to_numpy(dtype=float), float(value), rtol=1e-9, atol=0.0)
        else:
            mask &= column.astype(str) == str(value)
    return mask


def _value(value: Any) -> Any:
    """A table cell as a plain Python value (NaN -> None, whole floats of integer axes stay floats)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _int_or_none(value: Any) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


def stems(records: Iterable[Any]) -> list[str]:
    """File stems of records (for messages)."""
    return [getattr(r, "stem", getattr(r, "name", "?")) for r in records]
