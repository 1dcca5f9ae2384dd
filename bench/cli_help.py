"""How long ``dahp --help`` takes, against a bare ``python -c pass`` (the interpreter's own start).

Each command runs ``--runs`` times in a fresh process; the medians and their ratio are printed.
The console script installed beside this interpreter is timed when it exists (it is what a user
types), else ``python -m dahp``. The goal is well under one second on this machine.

    python bench/cli_help.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL_SECONDS = 1.0


def wall_seconds(command: list[str], runs: int) -> list[float]:
    """Wall-clock seconds of ``runs`` fresh runs of ``command`` (its output discarded; it must succeed)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="fresh processes per command")
    args = parser.parse_args()
    script = Path(sys.executable).with_name("dahp")
    dahp = [str(script)] if script.exists() else [sys.executable, "-m", "dahp"]
    wall_seconds([*dahp, "--help"], 2)  # warm the file system cache: the first start reads every file from disk
    bare = statistics.median(wall_seconds([sys.executable, "-c", "pass"], args.runs))
    help_ = statistics.median(wall_seconds([*dahp, "--help"], args.runs))
    print(f"python -c pass          median {bare:.3f} s over {args.runs} runs")
    print(f"{' '.join(dahp)} --help  median {help_:.3f} s over {args.runs} runs")
    print(f"ratio {help_ / bare:.2f}")
    print(f"RESULT cli_help_seconds {help_:.3f} goal <{GOAL_SECONDS}")
    print(f"RESULT cli_help_over_bare_python {help_ / bare:.2f}")


if __name__ == "__main__":
    main()
