"""Issue 21's measurement: every rule of the registry on the robustness suite of a profile, development
and sealed families apart (worst / 10th percentile / median / count >= 0.95 / count >= 0.95 or within 2
paired SE, mean and most retrainings, mean seconds), and how the retraining-free "don't know" flag covers
the default's failures.

Usage: PYTHONPATH=lib python bench/selector_robustness.py [profile] [rule ...]
"""

from __future__ import annotations

import sys
import time

import pandas as pd

from dahp.core.results import results_dir
from dahp.experiments.robustness import GROUPS, robustness_study
from dahp.selection import rules

SHOWN = [
    "budget_smooth_8",
    "budget_val_lds_5",
    "budget_val_lds_10",
    "budget_span_5",
    "budget_bracket_5",
    rules.DEFAULT_NO_RETRAINING,
    rules.PAPER_RULE,
    "xi_continuous",
    "recipe",
    "published_default",
]


def main() -> None:
    profile = sys.argv[1] if len(sys.argv) > 1 else "default"
    shown = sys.argv[2:] or SHOWN
    started = time.perf_counter()
    record = robustness_study(profile, progress=False)
    print(f"profile {profile}: {record.table.problem.nunique()} problems, {time.perf_counter() - started:.0f} s")
    record.save(results_dir(profile))
    columns = [
        "worst",
        "p10",
        "median",
        "count_ge_095",
        "count_ok_or_2se",
        "n",
        "trainings_mean",
        "trainings_max",
        "seconds_mean",
    ]
    pd.set_option("display.width", 200)
    for group in GROUPS:
        table = record.summary_table(group=group)
        table = table.loc[[r for r in shown if r in table.index], columns]
        problems = sorted(record.rows_of(group).problem.unique())
        print(f"\n== {group} families ({len(problems)} problems: {', '.join(problems)})")
        print(table.round(3).to_string())
        print("don't-know flag on", rules.DEFAULT_NO_RETRAINING, record.flag_check(group=group))


if __name__ == "__main__":
    main()
