"""The book's pages one at a time against two at a time, side by side in one run.

Runs the plan of ``--profile`` twice, each time from nothing: an empty data directory (no cache,
no results; ``$DAHP_DATA_DIR``) and an empty folder for the executed pages, so every model, ground
truth and factorization is computed again. First with ``--jobs`` 1, then with ``--jobs`` N (the
order does not favour the second: nothing is shared between the two). Prints both wall times, their
ratio (``RESULT`` lines), and the largest peak memory of one page in each. The install and the HTML
build are not included; `/usr/bin/time -v make book` measures those (the goal of 780 s for the pages
leaves about two minutes of a 15-minute build to them).

    python bench/book_jobs.py [--profile default] [--jobs 2] [--only PAGE ...]

The default profile takes about 20 minutes on two cores (both runs together: 648 s and 450 s measured).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from dahp.book.plan import load_plan, run_plan
from dahp.book.records import memory, read_record


def run_from_nothing(profile: str, jobs: int, only: list[str] | None) -> tuple[float, int]:
    """Wall seconds of one plan run with ``jobs`` pages at once, in fresh folders, and the largest
    peak memory of one page (bytes)."""
    with tempfile.TemporaryDirectory(prefix=f"book-jobs{jobs}-") as scratch:
        data, out = Path(scratch) / "data", Path(scratch) / "executed"
        previous = os.environ.get("DAHP_DATA_DIR")
        os.environ["DAHP_DATA_DIR"] = str(data)
        try:
            started = time.perf_counter()
            executed = run_plan(profile, out, only=only, force=True, progress=False, jobs=jobs)
            wall = time.perf_counter() - started
        finally:
            if previous is None:
                os.environ.pop("DAHP_DATA_DIR", None)
            else:
                os.environ["DAHP_DATA_DIR"] = previous
        peaks = [(read_record(out, page) or {}).get("peak_rss_bytes") or 0 for page in executed]
        return wall, max(peaks, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--jobs", type=int, default=2, help="pages at once in the second run")
    parser.add_argument("--only", action="append", help="only this page (repeatable)")
    args = parser.parse_args()
    pages = args.only or [e.page for e in load_plan()]
    print(f"profile {args.profile}, {len(pages)} pages, {os.cpu_count()} cores")
    one_wall, one_peak = run_from_nothing(args.profile, 1, args.only)
    many_wall, many_peak = run_from_nothing(args.profile, args.jobs, args.only)
    print(f"{'jobs':>5} {'wall s':>8} {'largest page peak':>18}")
    print(f"{1:>5} {one_wall:>8.1f} {memory(one_peak):>18}")
    print(f"{args.jobs:>5} {many_wall:>8.1f} {memory(many_peak):>18}")
    print(f"RESULT book_pages_one_at_a_time_over_{args.jobs}_at_a_time {one_wall / many_wall:.2f} goal >1")
    print(f"RESULT book_pages_{args.jobs}_at_a_time_seconds {many_wall:.0f} goal <780")


if __name__ == "__main__":
    main()
