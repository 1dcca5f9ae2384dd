"""The book's plan: which notebook runs with which parameters, executed by papermill.

``notebooks/plan.yml`` lists entries (notebook, page name, parameters). :func:`run_plan` converts
each MyST-markdown notebook to ``.ipynb`` with jupytext, executes it with papermill under a
profile, and writes it to ``book/executed/<page>.ipynb`` for Jupyter Book to render. A page is not
re-executed when nothing it depends on changed: the notebook text, its parameters, the profile and
the source of ``dahp`` are hashed into a stamp beside the executed notebook. A failing cell stops
the run with the notebook and the cell named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from dahp.config import InvalidParameterError
from dahp.profiles import get_profile

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "book" / "executed"


class NotebookFailed(RuntimeError):
    """A notebook of the plan raised; the message names the notebook and the cell."""


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    """One executed page of the book."""

    notebook: str  #: file under notebooks/
    page: str  #: name of the executed notebook (and of the page) under book/executed/
    parameters: dict[str, Any]  #: papermill parameters (the profile is added by the runner)
    title: str | None = None  #: page title, replacing the notebook's first heading (one notebook, several pages)


def load_plan(path: Path = NOTEBOOKS / "plan.yml") -> list[PlanEntry]:
    """The entries of the plan file."""
    import yaml

    entries = yaml.safe_load(path.read_text()) or []
    return [PlanEntry(e["notebook"], e["page"], dict(e.get("parameters") or {}), e.get("title")) for e in entries]


def _source_digest() -> str:
    digest = hashlib.sha256()
    for file in sorted((ROOT / "lib" / "dahp").glob("*.py")):
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


def entry_key(entry: PlanEntry, parameters: dict[str, Any]) -> str:
    """Hash of everything an executed page depends on."""
    text = (NOTEBOOKS / entry.notebook).read_text()
    payload = json.dumps({"text": text, "parameters": parameters, "title": entry.title}, sort_keys=True, default=str)
    return hashlib.sha256((payload + _source_digest()).encode()).hexdigest()


def run_entry(entry: PlanEntry, profile: str, out_dir: Path = EXECUTED, force: bool = False) -> bool:
    """Execute one page; returns False when it was up to date and skipped."""
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError

    parameters = {**entry.parameters, "profile": profile}
    key = entry_key(entry, parameters)
    output = out_dir / f"{entry.page}.ipynb"
    stamp = out_dir / f".{entry.page}.stamp"
    if not force and output.exists() and stamp.exists() and stamp.read_text() == key:
        return False
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook = jupytext.read(NOTEBOOKS / entry.notebook)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if entry.title:
        retitle(notebook, entry.title)
    source = out_dir / f".{entry.page}.source.ipynb"
    jupytext.write(notebook, source)
    stamp.unlink(missing_ok=True)
    try:
        papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name="python3",
                                   cwd=str(ROOT), progress_bar=False)
    except PapermillExecutionError as error:
        raise NotebookFailed(
            f"notebook {entry.notebook} (page {entry.page}) failed in cell {error.exec_count}: "
            f"{error.ename}: {error.evalue}"
        ) from None
    finally:
        source.unlink(missing_ok=True)
    stamp.write_text(key)
    return True


def retitle(notebook, title: str) -> None:
    """Replace the first ``# heading`` of the notebook's markdown with ``# title``."""
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.split("\n")
        for i, line in enumerate(lines):
            if line.startswith("# "):
                lines[i] = f"# {title}"
                cell.source = "\n".join(lines)
                return


def run_plan(profile: str, out_dir: Path = EXECUTED, only: list[str] | None = None, force: bool = False) -> list[str]:
    """Execute every page of the plan (or those named in ``only``); returns the pages executed."""
    get_profile(profile)
    entries = load_plan()
    pages = [e.page for e in entries]
    for name in only or []:
        if name not in pages:
            raise InvalidParameterError("page", name, pages)
    executed = []
    for entry in entries:
        if only and entry.page not in only:
            continue
        print(f"[{profile}] {entry.page}: ", end="", flush=True)
        started = time.perf_counter()
        ran = run_entry(entry, profile, out_dir, force)
        print(f"executed in {time.perf_counter() - started:.1f} s" if ran else "up to date", flush=True)
        if ran:
            executed.append(entry.page)
    return executed
