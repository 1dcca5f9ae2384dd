"""Known warnings become a line of the page's prose; a page never shows warning text or machine paths.

The plan runner makes :data:`ROUTE` the first cell of every page it executes (removed from the
page). In the kernel, :func:`route_warnings` replaces :func:`warnings.showwarning`: a warning of a
known category (:data:`KNOWN`: the package's own warnings, which a page is expected to meet, such as
the MAESTRO fixture's sizes) is shown once as a short note, with absolute paths written relative to
the data directory or the repository. A few third-party warnings that say nothing about the
page's results (:data:`SILENCED`, each with why) are dropped. Any other warning is left to Python, reaches the page's stderr
and fails the book's browser check, so that a real problem is seen rather than hidden; the runner
also names it on the terminal (:func:`stray_warnings`).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from tqdm import TqdmWarning

from dahp.core.paths import REPO_ROOT, data_dir
from dahp.data.maestro import FixtureSizesWarning

#: Warning categories a page shows as a note (the package's, each expected on some page).
KNOWN: tuple[type[Warning], ...] = (FixtureSizesWarning,)
#: Warnings that say nothing about a page's results, dropped: (category, start of the message, why).
SILENCED: tuple[tuple[type[Warning], str, str], ...] = (
    (
        TqdmWarning,
        "IProgress not found",
        "tqdm.auto (imported by transformers) asks for notebook widgets; the book's progress bars go to the "
        "terminal (DAHP_PROGRESS), never to the page",
    ),
)
#: The cell the runner puts first in every executed page.
ROUTE = "from dahp.book.notes import route_warnings as _dahp_route_warnings\n_dahp_route_warnings()"
#: Tag of that cell.
ROUTE_TAG = "dahp-route-warnings"
_PATH = re.compile(r"(?<![\w.])/(?:[\w.+@-]+/)*[\w.+@-]+")
#: A warning as Python prints it (``SomeWarning: text``), or a traceback's warning line.
WARNING_TEXT = re.compile(r"\b[A-Z]\w*Warning\b:|\bwarnings\.warn\(")


def plain_paths(text: str) -> str:
    """``text`` with every absolute path written relative to the data directory (``data/...``) or the
    repository, else as its last part: nothing of the machine's layout is left."""
    roots = [(Path(data_dir()).resolve(), "data"), (REPO_ROOT.resolve(), ".")]

    def relative(match: re.Match) -> str:
        path = Path(match.group(0))
        for root, name in roots:
            try:
                return (Path(name) / path.resolve().relative_to(root)).as_posix()
            except ValueError:
                continue
        return path.name

    return _PATH.sub(relative, text)


def note(message: str) -> str:
    """The markdown of the note shown for a known warning."""
    return f"*Note.* {plain_paths(message)}"


def route_warnings() -> None:
    """In a page's kernel: show warnings of :data:`KNOWN` categories as a markdown note (once per text)."""
    from IPython.display import Markdown, display

    for category, message, _why in SILENCED:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    shown: set[str] = set()
    original = warnings.showwarning

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None):
        if not issubclass(category, KNOWN):
            return original(message, category, filename, lineno, file, line)
        text = note(str(message))
        if text not in shown:
            shown.add(text)
            display(Markdown(text))
        return None

    warnings.showwarning = show


def stray_warnings(notebook) -> list[str]:
    """The first line of every warning text left in the outputs of an executed notebook."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            text = str(output.get("text", "")) + "".join(str(v) for v in output.get("data", {}).values())
            for line in text.splitlines():
                if WARNING_TEXT.search(line):
                    found.append(line.strip()[:200])
    return found


def profile_scope(
    settings: list[str], allowed: tuple[str, ...], profile: str, study: str = ""
) -> tuple[list[str], str | None]:
    """The ``settings`` a profile runs a page on (those in ``allowed``, a profile field such as
    ``removal_settings``; in ``settings``' order) and, when some are left to the ``paper`` profile, one
    sentence for the page that says which (``study``: what runs, e.g. ``"the α study"``)."""
    kept = [name for name in settings if name in allowed]
    left_out = list(dict.fromkeys(name for name in settings if name not in allowed))
    if not left_out:
        return kept, None
    listed = ", ".join(f"`{s}`" for s in dict.fromkeys(kept)) or "no setting"
    return kept, (
        f"At the `{profile}` profile this page runs {study + ' on ' if study else ''}{listed} only; "
        f"{', '.join(f'`{s}`' for s in left_out)} run at the `paper` profile (`-p profile paper`)."
    )
