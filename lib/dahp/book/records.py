"""What each executed page cost: its run record, and the build report that tabulates them.

The plan runner (:mod:`dahp.book.plan`) appends :data:`PROBE` as the notebook's last cell before
execution; in the kernel it prints :func:`kernel_facts` (device, peak memory, cache look-ups,
versions) as one JSON line. After execution the runner takes that line out of the page
(:func:`take_probe`), adds the wall time it measured, saves the record as
``book/executed/.<page>.run.json`` and ends the page with one line (:func:`record_line`).
:func:`write_build_report` turns the records of the plan's pages into ``book/executed/build_report.md``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dahp import __version__
from dahp.core import cache
from dahp.core.device import describe, resolve_device

#: Tag of the probe cell (removed from the page after execution) and of the record line that replaces it.
PROBE_TAG = "dahp-run-probe"
RECORD_TAG = "dahp-run-record"
#: Prefix of the probe's output line.
MARK = "dahp-run-record:"
#: The probe cell's source: the notebook's own ``device`` parameter, when it has one, names the device.
PROBE = "from dahp.book.records import kernel_facts as _dahp_kernel_facts\n_dahp_kernel_facts(globals().get('device'))"
#: Source of the line the runner adds to the page's first (hidden) cell: start noting the files the kernel writes.
TRACK = "from dahp.book.records import track_writes as _dahp_track_writes\n_dahp_track_writes()"
#: Absolute paths of the files this process opened for writing or renamed into place since :func:`track_writes`.
WRITTEN: set[str] = set()
#: ``os.open`` flags that mean writing.
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
#: Name of the build report page under book/executed/.
REPORT = "build_report"


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process and of its finished child processes (the larger; Linux counts KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int(max(own, children) * scale)


def _note_write(event: str, args: tuple) -> None:
    """Audit hook: add to :data:`WRITTEN` the target of an ``open`` for writing or of a rename."""
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
    elif event == "os.rename":  # os.rename and os.replace: an atomic write's final step
        path, writing = args[1], True
    else:
        return
    if writing and isinstance(path, (str, os.PathLike)):
        WRITTEN.add(os.path.abspath(os.fspath(path)))


def track_writes() -> None:
    """In a page's kernel: note every file it writes (:data:`WRITTEN`, reported by :func:`kernel_facts`).

    The plan runs pages two at a time, so a page's results are the files its own kernel wrote, not
    whatever changed in the results folder while it ran. Python's audit hooks see every ``open`` of
    pandas, matplotlib and :func:`dahp.core.results.write_json`; one hook per process, added once.
    """
    if not getattr(track_writes, "installed", False):
        sys.addaudithook(_note_write)
        track_writes.installed = True


def kernel_facts(device: str | None = None) -> dict[str, Any]:
    """Prints and returns what the kernel knows of its run: device, peak memory, cache look-ups, versions."""
    import torch

    resolved = resolve_device(device)
    facts: dict[str, Any] = {
        "device": describe(resolved),
        "peak_rss_bytes": _peak_rss_bytes(),
        "cache_hits": cache.COUNTS["hits"],
        "cache_misses": cache.COUNTS["misses"],
        "dahp": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "wrote": sorted(WRITTEN),
    }
    if resolved.type == "cuda":
        facts["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(resolved))
    print(MARK + json.dumps(facts))
    return facts


def take_probe(notebook) -> dict[str, Any]:
    """Remove the probe cell from an executed notebook; the facts it printed (empty when it printed none)."""
    facts: dict[str, Any] = {}
    kept = []
    for cell in notebook.cells:
        if PROBE_TAG not in cell.get("metadata", {}).get("tags", []):
            kept.append(cell)
            continue
        for output in cell.get("outputs", []):
            for line in str(output.get("text", "")).splitlines():
                if line.startswith(MARK):
                    facts = json.loads(line[len(MARK) :])
    notebook.cells = kept
    return facts


def duration(seconds: float) -> str:
    """``12.3 s`` or ``7 min 49 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s"


def memory(size: float | None) -> str:
    """``612 MB`` or ``7.04 GB``; ``?`` when unknown."""
    if size is None:
        return "?"
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def record_line(record: Mapping[str, Any]) -> str:
    """The one line that ends an executed page."""
    parts = [
        f"profile `{record['profile']}`",
        f"device {record.get('device', '?')}",
        f"wall time {duration(record['wall_s'])}",
        f"peak memory {memory(record.get('peak_rss_bytes'))}",
    ]
    if "peak_gpu_bytes" in record:
        parts.append(f"peak GPU memory {memory(record['peak_gpu_bytes'])}")
    if "cache_hits" in record:
        parts.append(f"cache {record['cache_hits']} hits, {record['cache_misses']} misses")
    parts.append(f"dahp {record.get('dahp', '?')}, torch {record.get('torch', '?')}")
    return "**Run record.** " + " · ".join(parts) + f" (finished {record['finished']})."


def record_path(out_dir: Path, page: str) -> Path:
    """Where the run record of ``page`` is saved."""
    return out_dir / f".{page}.run.json"


def read_record(out_dir: Path, page: str) -> dict[str, Any] | None:
    """The saved run record of ``page``, or None."""
    try:
        return json.loads(record_path(out_dir, page).read_text())
    except (OSError, json.JSONDecodeError):
        return None


#: Runs that overlap by less than this many seconds are taken as one after the other: a record rounds
#: its start to 0.1 s, and the plan starts a page the moment the page before it in that slot ends.
OVERLAP_TOLERANCE_S = 1.0


def largest_simultaneous_peak(runs: Sequence[tuple[float, float, int]]) -> tuple[int, int]:
    """The largest sum of peak memories of runs that overlap in time, and how many runs make it.

    ``runs``: (start, end, peak bytes) of each run. Pages run side by side may peak at different
    moments, so the sum is an upper bound of what they held together, not a measurement. The largest
    overlap of intervals always contains the start of one of them, so it is enough to look at starts.
    """
    best, count = 0, 0
    for i, (start, _, _) in enumerate(runs):
        running = [
            peak
            for j, (begin, end, peak) in enumerate(runs)
            if j == i or (begin <= start and end - start > OVERLAP_TOLERANCE_S)
        ]
        if sum(running) > best:
            best, count = sum(running), len(running)
    return best, count


def build_report(out_dir: Path, pages: Sequence[str]) -> str:
    """The markdown of the build report: one row per page of ``pages`` (in order), the totals, and the
    versions and times the records name."""
    lines = [
        "# Build report",
        "",
        "What each executed page of this build cost, from the run record that ends the page: the profile",
        "it ran under, the device, the wall time of its execution, the peak resident memory of its kernel",
        "(and of the worker processes it started) and the cache look-ups it made. A page that was up to",
        "date keeps the record of the run that made it.",
        "",
        "| page | profile | device | wall time | peak memory | cache hits / misses |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    total = 0.0
    peak = 0
    versions: set[str] = set()
    finished: list[str] = []
    spans: list[tuple[float, float, int]] = []
    jobs: list[int] = []
    for page in pages:
        record = read_record(out_dir, page)
        if record is None:
            lines.append(f"| {page} | not run | | | | |")
            continue
        total += record["wall_s"]
        peak = max(peak, record.get("peak_rss_bytes") or 0)
        versions.add(f"dahp {record.get('dahp', '?')}, torch {record.get('torch', '?')}")
        finished.append(record["finished"])
        if "started_unix" in record:
            start = record["started_unix"]
            spans.append((start, start + record["wall_s"], record.get("peak_rss_bytes") or 0))
            jobs.append(record.get("jobs", 1))
        cached = f"{record['cache_hits']} / {record['cache_misses']}" if "cache_hits" in record else "?"
        lines.append(
            f"| [{page}]({page}) | {record['profile']} | {record.get('device', '?')} | {duration(record['wall_s'])} "
            f"| {memory(record.get('peak_rss_bytes'))} | {cached} |"
        )
    lines += [
        "",
        f"Total wall time of the pages' executions: {duration(total)}; the largest peak memory of one page: "
        f"{memory(peak)}. (The build of the HTML and the install are not included.)",
    ]
    if spans:
        at_once = max(jobs)
        lines += [
            "",
            f"The pages ran {'one at a time' if at_once == 1 else f'up to {at_once} at a time'}: from the first "
            f"start to the last end took {duration(max(b for _, b, _ in spans) - min(a for a, _, _ in spans))}"
            + (
                " (a page's wall time includes waiting for an artifact another page was computing)."
                if at_once > 1
                else "."
            ),
        ]
        together, count = largest_simultaneous_peak(spans)
        if count > 1:
            lines[-1] += (
                f" Pages running at the same time held at most {memory(together)} together (the largest sum of"
                f" the peaks of {count} overlapping pages: a bound, since each peaks at its own moment)."
            )
    if finished:
        lines += [
            "",
            f"Versions: {'; '.join(sorted(versions))}. Pages finished between {min(finished)} and {max(finished)}.",
        ]
    return "\n".join(lines) + "\n"


def write_build_report(out_dir: Path, pages: Sequence[str]) -> Path:
    """Write :func:`build_report` to ``out_dir/build_report.md``; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{REPORT}.md"
    path.write_text(build_report(out_dir, pages))
    return path
