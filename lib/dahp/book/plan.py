"""The book's plan: which notebook runs with which parameters, executed by papermill.

``notebooks/plan.yml`` lists entries (notebook, page name, parameters, optional title, optional
``reads``). :func:`run_plan` converts each MyST-markdown notebook to ``.ipynb`` with jupytext,
executes it with papermill under a profile, and writes it to ``book/executed/<page>.ipynb`` for
Jupyter Book to render.

Reader view. The notebooks stay clean; the runner shapes the executed page: every code cell without
a ``remove-*`` or ``hide-*`` tag is tagged ``hide-input`` at conversion (figures and tables first,
code folded), the first figure caption of a page named after a paper figure starts with that
figure's name (the book numbers no figures itself), and after execution the notebook's ``parameters`` cell and papermill's
``injected-parameters`` cell are tagged ``remove-cell`` and a small table of the page's effective
parameters (value injected, else the default; meaning = the inline comment in the parameters cell)
is inserted after the first heading.

Up to date. A page is not re-executed when nothing it depends on changed. Its key hashes the
notebook text, parameters (with the profile), title, the source of ``dahp`` (every ``.py`` under
``lib/dahp``, recursively), the state of the data every registered setting needs (each required
file: exists, size, mtime), and for each page named in its ``reads:`` the content of the result
files that page wrote. The stamp ``book/executed/.<page>.stamp`` is JSON::

    {"key": "<sha256>", "profile": "default", "wrote": ["selection_iffim.csv", ...]}

where ``wrote`` lists the files under ``results_dir(profile)`` the page created or modified when it
ran (compared by size and mtime before and after; files recorded by earlier runs are kept while
they exist, so a result reused from a cache still counts).

Two at a time. With ``jobs`` > 1 (``run-plan``'s default on a CPU machine with two cores or more)
:func:`run_plan` runs that many pages at once, each in a process of its own whose kernel gets an
equal share of the cores; a page waits for the pages it ``reads``, the cache computes a shared
artifact once (a lock per key), and a page's ``wrote`` keeps only the files its own kernel wrote
(:func:`dahp.book.records.track_writes`), since a concurrent page may change the folder meanwhile.

Progress. :func:`run_plan` prints each page as it starts and its wall time when it ends, shows
papermill's per-cell bar, and launches every kernel with ``DAHP_PROGRESS=terminal`` so bars made
with :class:`dahp.core.progress.tqdm` reach the terminal and never the page (``off`` with
``progress=False``). A failing cell stops the run with the notebook and the cell named. At the end it
prints the number of pages executed and the build's total time.

Warnings. The runner puts :data:`dahp.book.notes.ROUTE` first in every page: known warnings become
a note in the page's prose (no machine paths); any other warning stays in the page's stderr, is
named on the terminal and fails the book's browser check.

Run records. Every executed page ends with one line saying what its run cost (profile, device, wall
time, peak memory, cache hits and misses, dahp and torch versions), also saved as
``book/executed/.<page>.run.json``; after every run of the plan ``book/executed/build_report.md``
tabulates the records of all the plan's pages (:mod:`dahp.book.records`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dahp.book.notes import ROUTE, ROUTE_TAG, stray_warnings
from dahp.book.records import (
    PROBE,
    PROBE_TAG,
    RECORD_TAG,
    TRACK,
    duration,
    record_line,
    record_path,
    take_probe,
    write_build_report,
)
from dahp.core.config import InvalidParameterError
from dahp.core.device import resolve_device
from dahp.core.paths import REPO_ROOT
from dahp.core.progress import ENV, OFF, TERMINAL
from dahp.core.results import RUNS, results_dir
from dahp.data.settings import available_settings, data_dir, get_setting
from dahp.experiments.profiles import get_profile

ROOT = REPO_ROOT
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "book" / "executed"

#: Tag of the markdown cell the runner inserts with the page's parameters.
PARAMETER_TABLE_TAG = "dahp-parameter-table"
_HEADING = re.compile(r"^#{1,6}\s")


class NotebookFailed(RuntimeError):
    """A notebook of the plan raised; the message names the notebook and the cell."""


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    """One executed page of the book."""

    notebook: str  #: file under notebooks/
    page: str  #: name of the executed notebook (and of the page) under book/executed/
    parameters: dict[str, Any]  #: papermill parameters (the profile is added by the runner)
    title: str | None = None  #: page title, replacing the notebook's first heading (one notebook, several pages)
    reads: tuple[str, ...] = ()  #: pages whose result files this page reads (re-run when those change)


#: A figure's label at the start of a notebook or page name: ``fig1c``, ``fig2``.
_FIGURE_LABEL = re.compile(r"^fig\d+[a-z]?$")


def figure_labels(name: str) -> list[str]:
    """The figure labels a name starts with: ``fig2_fig3_lambda_selection`` -> ``["fig2", "fig3"]``."""
    labels = []
    for part in name.split("_"):
        if not _FIGURE_LABEL.match(part):
            break
        labels.append(part)
    return labels


def page_named_by_notebook(notebook: str, page: str) -> bool:
    """Whether a reader can find ``page``'s notebook by the page's name: the page's name starts with the
    notebook's stem, or the page's figure label is one of those the notebook's name lists (the notebook
    ``fig2_fig3_lambda_selection.md`` makes the pages ``fig2_...`` and ``fig3_...``)."""
    stem = Path(notebook).stem
    if page.startswith(stem):
        return True
    label = figure_labels(page)[:1]
    return bool(label) and label[0] in figure_labels(stem)


def load_plan(path: Path | None = None) -> list[PlanEntry]:
    """The entries of the plan file; every page is named after its notebook (:func:`page_named_by_notebook`),
    and ``reads`` must name pages that come earlier in the plan."""
    import yaml

    path = NOTEBOOKS / "plan.yml" if path is None else path
    raw = yaml.safe_load(path.read_text()) or []
    entries: list[PlanEntry] = []
    for e in raw:
        reads = e.get("reads") or []
        if isinstance(reads, str):
            reads = [reads]
        if not page_named_by_notebook(e["notebook"], e["page"]):
            raise InvalidParameterError(
                f"page (of notebook {e['notebook']!r})",
                e["page"],
                f"a name starting with {Path(e['notebook']).stem!r} or with a figure label of the notebook's name",
            )
        earlier = [entry.page for entry in entries]
        for name in reads:
            if name not in earlier:
                raise InvalidParameterError(f"reads (of page {e['page']!r}; a page earlier in the plan)", name, earlier)
        entries.append(
            PlanEntry(e["notebook"], e["page"], dict(e.get("parameters") or {}), e.get("title"), tuple(reads))
        )
    return entries


# ---------------------------------------------------------------------------------------------------
# what a page depends on


def _source_digest() -> str:
    digest = hashlib.sha256()
    package = ROOT / "lib" / "dahp"
    for file in sorted(package.rglob("*.py")):
        digest.update(file.relative_to(package).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def data_state() -> dict[str, dict[str, list[int] | None]]:
    """For every registered setting, each required file (relative to the data directory): ``[size,
    mtime_ns]``, or None when it is missing. Supplying a data set later changes it."""

    root = data_dir()
    state: dict[str, dict[str, list[int] | None]] = {}
    for name in available_settings():
        files: dict[str, list[int] | None] = {}
        for relative in get_setting(name).required_files:
            try:
                stat = (root / relative).stat()
            except OSError:
                files[relative] = None
            else:
                files[relative] = [stat.st_size, stat.st_mtime_ns]
        state[name] = files
    return state


def _file_hash(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The stamp of a page (``{"key", "profile", "wrote"}``), or None when absent or unreadable.
    A stamp of the older plain-text form reads as its key with no files."""
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        stamp = json.loads(text)
    except json.JSONDecodeError:
        return {"key": text.strip(), "profile": None, "wrote": []}
    if not isinstance(stamp, dict):
        return None
    stamp.setdefault("wrote", [])
    return stamp


def _stamp_path(out_dir: Path, page: str) -> Path:
    return out_dir / f".{page}.stamp"


def read_state(entry: PlanEntry, profile: str, out_dir: Path) -> dict[str, Any]:
    """For each page ``entry`` reads: the profile it last ran under and the content hash of every
    result file it wrote (None for a file since removed), or None when that page has not run."""
    if not entry.reads:
        return {}

    results = results_dir(profile)
    state: dict[str, Any] = {}
    for page in entry.reads:
        stamp = read_stamp(_stamp_path(out_dir, page))
        state[page] = (
            None
            if stamp is None
            else {
                "profile": stamp.get("profile"),
                "files": {f: _file_hash(results / f) for f in sorted(stamp["wrote"])},
            }
        )
    return state


def entry_key(entry: PlanEntry, parameters: dict[str, Any], out_dir: Path = EXECUTED) -> str:
    """Hash of everything an executed page depends on (``parameters`` include the profile)."""
    text = (NOTEBOOKS / entry.notebook).read_text()
    profile = parameters.get("profile", "default")
    payload = json.dumps(
        {
            "text": text,
            "parameters": parameters,
            "title": entry.title,
            "source": _source_digest(),
            "data": data_state(),
            "reads": read_state(entry, profile, out_dir),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file of a profile's folder the book reads (reruns under ``runs/`` left out)."""
    files = {}
    for path in folder.rglob("*"):
        try:
            if path.is_file() and path.relative_to(folder).parts[0] != RUNS:
                stat = path.stat()
                files[path.relative_to(folder).as_posix()] = (stat.st_size, stat.st_mtime_ns)
        except OSError:  # removed while we looked
            continue
    return files


# ---------------------------------------------------------------------------------------------------
# conversion and the reader view


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _add_tag(cell, tag: str) -> None:
    tags = _tags(cell)
    if tag not in tags:
        cell.setdefault("metadata", {})["tags"] = [*tags, tag]


def hide_inputs(notebook) -> None:
    """Tag ``hide-input`` every code cell that carries no ``remove-*`` or ``hide-*`` tag."""
    for cell in notebook.cells:
        if cell.cell_type == "code" and not any(t.startswith(("remove-", "hide-")) for t in _tags(cell)):
            _add_tag(cell, "hide-input")


def convert(entry: PlanEntry):
    """The notebook of ``entry`` as an nbformat notebook, ready for papermill: kernel set, retitled,
    code inputs folded."""
    import jupytext

    notebook = jupytext.read(NOTEBOOKS / entry.notebook)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if entry.title:
        retitle(notebook, entry.title)
    name_figures(notebook, entry.page)
    hide_inputs(notebook)
    return notebook


def paper_figure(page: str) -> str | None:
    """The paper's name of the figure a page reproduces (``fig2_iffim_selection`` -> ``Fig 2``), or None."""
    labels = figure_labels(page)
    return f"Fig {labels[0][3:]}" if labels else None


def name_figures(notebook, page: str) -> None:
    """Start the caption of the first captioned figure of a figure page with the paper's name for it: the
    book numbers no figures itself (``numfig`` off), so the only figure names a reader sees are the paper's."""
    name = paper_figure(page)
    if name is None:
        return
    for cell in notebook.cells:
        figure = cell.get("metadata", {}).get("mystnb", {}).get("figure", {})
        if cell.cell_type == "code" and figure.get("caption"):
            figure["caption"] = f"The paper's {name}, reproduced. {figure['caption']}"
            return


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


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("\n", " ").replace("|", "\\|").strip()


def _code(text: str) -> str:
    text = _cell(text)
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def parameter_rows(notebook, injected: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(parameter, value, meaning)`` for the notebook's parameters (its own cell's order, then any
    injected name it does not declare): the injected value if injected, else the default."""
    from papermill.translators import papermill_translators

    translator = papermill_translators.find_translator("python3", "python")
    declared = []
    for cell in notebook.cells:
        if cell.cell_type == "code" and "parameters" in _tags(cell):
            declared = translator.inspect(cell)
            break
    rows = []
    for parameter in declared:
        value = translator.translate(injected[parameter.name]) if parameter.name in injected else parameter.default
        rows.append((parameter.name, value, parameter.help or ""))
    names = {p.name for p in declared}
    rows += [(name, translator.translate(value), "") for name, value in injected.items() if name not in names]
    return rows


def parameter_table(rows: list[tuple[str, str, str]]) -> str:
    """The markdown of the parameter table."""
    lines = ["Parameters of this page:", "", "| parameter | value | meaning |", "| --- | --- | --- |"]
    lines += [f"| {_code(name)} | {_code(str(value))} | {_cell(meaning)} |" for name, value, meaning in rows]
    return "\n".join(lines)


def reader_view(notebook, injected: dict[str, Any]) -> None:
    """Remove the parameters cells of an executed notebook and insert the parameter table after the
    first heading (at the top when there is none)."""
    import nbformat

    rows = parameter_rows(notebook, injected)
    notebook.cells = [c for c in notebook.cells if PARAMETER_TABLE_TAG not in _tags(c)]
    for cell in notebook.cells:
        if cell.cell_type == "code" and {"parameters", "injected-parameters"} & set(_tags(cell)):
            _add_tag(cell, "remove-cell")
    if not rows:
        return
    table = nbformat.v4.new_markdown_cell(parameter_table(rows), metadata={"tags": [PARAMETER_TABLE_TAG]})
    if (notebook.get("nbformat"), notebook.get("nbformat_minor", 0)) < (4, 5):
        table.pop("id", None)
    at = next(
        (
            i + 1
            for i, c in enumerate(notebook.cells)
            if c.cell_type == "markdown" and any(_HEADING.match(line) for line in c.source.split("\n"))
        ),
        0,
    )
    notebook.cells.insert(at, table)


# ---------------------------------------------------------------------------------------------------
# running


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables (inherited by the kernel papermill launches), then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _freshness(
    entry: PlanEntry, profile: str, out_dir: Path, key: str | None = None
) -> tuple[str, dict[str, Any] | None, bool]:
    """The page's current key (``key`` when given), its stamp (None when absent) and whether the page
    is up to date: its executed notebook exists and its stamp has that key."""
    key = key or entry_key(entry, {**entry.parameters, "profile": profile}, out_dir)
    stamp = read_stamp(_stamp_path(out_dir, entry.page))
    fresh = (out_dir / f"{entry.page}.ipynb").exists() and stamp is not None and stamp.get("key") == key
    return key, stamp, fresh


#: Environment variables that set the thread pools of torch (OpenMP, MKL) and of SciPy's BLAS.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: The kernel's own log (ipykernel's application logger) is kept off the terminal: at every start it warns
#: that its local TCP sockets are unencrypted, and at every shutdown jupyter_client interrupts it, which it
#: may log as an error. Neither concerns the page; a failing cell still fails the page with its traceback
#: (it travels on the iopub channel, not this log) and a kernel that dies still raises DeadKernelError.
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=CRITICAL",)


def run_entry(
    entry: PlanEntry,
    profile: str,
    out_dir: Path = EXECUTED,
    force: bool = False,
    *,
    progress: bool = True,
    on_start: Callable[[], None] | None = None,
    threads: int | None = None,
    jobs: int = 1,
    key: str | None = None,
) -> bool:
    """Execute one page; returns False when it was up to date and skipped.

    ``progress``: papermill's per-cell bar on this process's stderr, and ``DAHP_PROGRESS=terminal``
    for the kernel (``off`` otherwise). ``on_start`` is called just before the page executes.
    ``threads``: the kernel's number of CPU threads (None: the libraries' own default, one per core);
    ``jobs``: how many pages the plan runs at once (recorded for the build report). ``key``: the
    page's key as the plan's process computed it (None: computed here), so that a page executed in a
    worker process is stamped with the key the plan will check it against.
    """
    import jupytext
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    parameters = {**entry.parameters, "profile": profile}
    key, previous, fresh = _freshness(entry, profile, out_dir, key)
    if fresh and not force:
        return False
    output = out_dir / f"{entry.page}.ipynb"
    stamp = _stamp_path(out_dir, entry.page)
    if on_start is not None:
        on_start()
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook = convert(entry)
    first = f"{ROUTE}\n{TRACK}"
    notebook.cells.insert(0, nbformat.v4.new_code_cell(first, metadata={"tags": ["remove-cell", ROUTE_TAG]}))
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE, metadata={"tags": ["remove-cell", PROBE_TAG]}))
    source = out_dir / f".{entry.page}.source.ipynb"
    jupytext.write(notebook, source)
    stamp.unlink(missing_ok=True)
    results = results_dir(profile)
    before = _snapshot(results)
    started, started_unix = time.perf_counter(), time.time()
    environment = {ENV: TERMINAL if progress else OFF}
    if threads is not None:
        environment |= {name: str(threads) for name in THREAD_VARIABLES}
    try:
        with _environment(**environment):
            papermill.execute_notebook(
                str(source),
                str(output),
                parameters=parameters,
                kernel_name="python3",
                cwd=str(ROOT),
                progress_bar=progress,
                extra_arguments=list(KERNEL_ARGUMENTS),
            )
    except PapermillExecutionError as error:
        raise NotebookFailed(
            f"notebook {entry.notebook} (page {entry.page}) failed in cell {error.exec_count}: "
            f"{error.ename}: {error.evalue}"
        ) from None
    finally:
        source.unlink(missing_ok=True)
    wall = time.perf_counter() - started
    executed = nbformat.read(output, as_version=4)
    facts = take_probe(executed)
    after = _snapshot(results)
    wrote = {name for name, seen in after.items() if before.get(name) != seen}
    if "wrote" in facts:
        # of the files that changed meanwhile, those this page's kernel wrote (not a concurrent page's)
        wrote &= _relative_to(results, facts.pop("wrote"))
    if previous is not None and previous.get("profile") == profile:
        wrote |= {name for name in previous["wrote"] if name in after}
    for line in stray_warnings(executed):  # the browser check of the book fails on these: say where
        print(f"{entry.page}: warning text in the page's output: {line}", flush=True)
    reader_view(executed, parameters)
    record = {
        "page": entry.page,
        "notebook": entry.notebook,
        "profile": profile,
        "wall_s": round(wall, 2),
        "started_unix": round(started_unix, 1),
        "jobs": jobs,
        **facts,
        "finished": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    end = nbformat.v4.new_markdown_cell(record_line(record), metadata={"tags": [RECORD_TAG]})
    if (executed.get("nbformat"), executed.get("nbformat_minor", 0)) < (4, 5):
        end.pop("id", None)
    executed.cells.append(end)
    nbformat.write(executed, output)
    record_path(out_dir, entry.page).write_text(json.dumps(record, indent=1) + "\n")
    stamp.write_text(json.dumps({"key": key, "profile": profile, "wrote": sorted(wrote)}, indent=1) + "\n")
    return True


def _relative_to(folder: Path, paths: list[str]) -> set[str]:
    """The ``paths`` (absolute) that lie inside ``folder``, relative to it."""
    inside = set()
    for path in paths:
        try:
            inside.add(Path(path).resolve().relative_to(folder.resolve()).as_posix())
        except ValueError:
            continue
    return inside


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_jobs(device: str | None = None) -> int:
    """How many pages :func:`run_plan` runs at once by default: two on a CPU machine with two cores or
    more, one on a GPU (its pages share one device) or a single core.

    Why two: most of the book's work is small models whose every operation is shorter than the time
    it takes to wake a second thread, so a page on two threads runs hardly faster than on one; two
    pages on one thread each keep both cores busy (Fig 1a: 90 s alone on two threads, 82 s on one
    beside Fig 4).
    """
    return 1 if resolve_device(device).type != "cpu" or available_cores() < 2 else 2


def run_plan(
    profile: str,
    out_dir: Path = EXECUTED,
    only: list[str] | None = None,
    force: bool = False,
    progress: bool = True,
    jobs: int = 1,
) -> list[str]:
    """Execute every page of the plan (or those named in ``only``); returns the pages executed.

    Prints each page as it starts and its wall time when it ends (``progress``: with papermill's
    per-cell bar and the notebooks' own bars on the terminal). ``jobs`` > 1 runs that many pages at
    once, each in its own process with an equal share of the cores (:func:`_run_parallel`).
    """
    get_profile(profile)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise InvalidParameterError("jobs", jobs, "a whole number of pages run at once, 1 or more")
    entries = load_plan()
    pages = [e.page for e in entries]
    for name in only or []:
        if name not in pages:
            raise InvalidParameterError("page", name, pages)
    chosen = [e for e in entries if not only or e.page in only]
    build_started = time.perf_counter()
    if jobs > 1:
        executed = _run_parallel(chosen, profile, out_dir, force, jobs)
        _report_build(profile, out_dir, pages, len(chosen), executed, build_started)
        return executed
    executed = []
    for number, entry in enumerate(chosen, 1):
        label = f"[{profile} {number}/{len(chosen)}] {entry.page}"
        started = time.perf_counter()
        ran = run_entry(
            entry,
            profile,
            out_dir,
            force,
            progress=progress,
            on_start=functools.partial(print, f"{label}: started", flush=True),
        )
        print(
            f"{label}: executed in {duration(time.perf_counter() - started)}" if ran else f"{label}: up to date",
            flush=True,
        )
        if ran:
            executed.append(entry.page)
    _report_build(profile, out_dir, pages, len(chosen), executed, build_started)
    return executed


def _report_build(
    profile: str, out_dir: Path, pages: list[str], chosen: int, executed: list[str], started: float
) -> None:
    """Write the build report and print the run's one-line summary."""
    report = write_build_report(out_dir, pages)
    print(
        f"[{profile}] {len(executed)} of {chosen} pages executed, {chosen - len(executed)} up to date, "
        f"in {duration(time.perf_counter() - started)}; build report: {report}",
        flush=True,
    )


def _read_notebooks_from(folder: Path) -> None:
    """In a worker process of :func:`_run_parallel`: read the notebooks from the folder the parent reads."""
    global NOTEBOOKS
    NOTEBOOKS = folder


def _run_parallel(chosen: list[PlanEntry], profile: str, out_dir: Path, force: bool, jobs: int) -> list[str]:
    """Run the pages ``jobs`` at a time, each in a process of its own whose kernel gets an equal share of
    the cores; returns the pages executed, in the order they finished.

    A page starts once every page of this run that it ``reads`` has finished (its key depends on their
    results); otherwise in the plan's order. Pages that need the same cached artifact do not compute it
    twice: the cache locks a key while one process computes it (:meth:`dahp.core.cache.Cache.get_or_compute`).
    Bars are off (two pages would draw over each other); each page prints one line when it starts and
    one when it ends. When a page fails, the pages running finish, no other starts, and the error is raised.
    """
    threads = max(1, available_cores() // jobs)
    names = {entry.page for entry in chosen}
    pending, running, finished, executed = list(chosen), {}, set(), []
    failure: BaseException | None = None
    total = len(chosen)
    print(f"[{profile}] {total} pages, {jobs} at a time, {threads} CPU thread{'s' * (threads != 1)} each", flush=True)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no state of this one is shared
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_read_notebooks_from, initargs=(NOTEBOOKS,)
    ) as pool:
        while running or (pending and failure is None):
            for entry in list(pending):
                if len(running) >= jobs or failure is not None:
                    break
                if any(name in names and name not in finished for name in entry.reads):
                    continue
                pending.remove(entry)
                label = f"[{profile} {total - len(pending)}/{total}] {entry.page}"
                # the key is computed here, not in the worker: a spawned interpreter knows only the
                # settings registered on import, this one also those its caller registered, and the
                # key covers every registered setting's data
                key, _, fresh = _freshness(entry, profile, out_dir)
                if fresh and not force:
                    print(f"{label}: up to date", flush=True)
                    finished.add(entry.page)
                    continue
                print(f"{label}: started", flush=True)
                future = pool.submit(
                    run_entry, entry, profile, out_dir, True, progress=False, threads=threads, jobs=jobs, key=key
                )
                running[future] = (label, entry.page, time.perf_counter())
            if not running:
                continue
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                label, page, started = running.pop(future)
                try:
                    future.result()
                except BaseException as error:  # re-raised once the running pages end
                    print(f"{label}: failed", flush=True)
                    failure = failure or error
                    continue
                finished.add(page)
                executed.append(page)
                print(f"{label}: executed in {duration(time.perf_counter() - started)}", flush=True)
    if failure is not None:
        raise failure
    return executed
