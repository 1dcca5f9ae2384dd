"""What one robustness-suite problem costs from an empty cache, stage by stage, before and after a change.

For each problem named, in a fresh process with a fresh, empty cache and ``--threads`` torch threads:
the data, the full-data models (seeds 0..E-1 of the TRAK ensemble; seed 0 is also IFFIM's), the
ground truth of M retrained models, then :func:`dahp.experiments.suite.problem_curves` for every attributor
configuration (gradients, projections, eigendecompositions, the LDS over the dense grid), each timed.

With ``--compare REF`` the same problems also run against the ``lib/`` of git revision ``REF``
(exported to a temporary folder), side by side in one run, so both sets of numbers come from the same
machine under the same load. Load from other processes changes every number; compare columns of
one run only.

    python bench/suite_cost.py [--problems NAME ...] [--compare REF] [--threads 1] [--models 40] [--ensemble 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PROBLEMS = ("suite_mnist_subset_n2000_lr_sgd", "suite_digits_deep_sgd", "suite_teacher_mlp_momentum")
REPO = Path(__file__).resolve().parents[1]


def _stages(problem_name: str, models: int, ensemble: int) -> dict[str, float]:
    """Seconds per stage of one problem from the (empty) cache under ``$DAHP_CACHE_DIR``."""
    from dahp.attribution import attributors as attr
    from dahp.core.cache import default_cache
    from dahp.experiments import suite
    from dahp.training.ground_truth import ground_truth

    problem = suite.get_problem(problem_name)
    config = suite.CurveConfig(n_models=models, trak_ensemble=ensemble)
    cache = default_cache()
    times: dict[str, float] = {}

    def timed(label: str, compute) -> None:
        started = time.perf_counter()
        compute()
        times[label] = time.perf_counter() - started

    timed("data", lambda: problem.setting.data())
    timed("full-data models", lambda: attr.trak_members(problem.setting, ensemble, cache, False, "cpu"))
    timed("ground truth", lambda: ground_truth(problem.setting, config.ground_truth(), cache, False, device="cpu"))
    for attributor, proj_dim in suite.attributor_configs(problem):
        label = f"{attributor}" + (f" p={proj_dim}" if proj_dim else " full")
        timed(label, lambda: suite.problem_curves(problem, attributor, proj_dim, config, cache, False, "cpu"))
    times["total"] = sum(times.values())
    return times


def _run_one(lib: Path, problem: str, threads: int, models: int, ensemble: int) -> dict[str, float]:
    """:func:`_stages` in a fresh process against ``lib``, with a fresh empty cache."""
    with tempfile.TemporaryDirectory(prefix="suite_cost_cache") as cache:
        env = {**os.environ, "PYTHONPATH": str(lib), "DAHP_CACHE_DIR": cache}
        code = (
            "import json, sys, torch; torch.set_num_threads(int(sys.argv[1])); "
            "sys.path.insert(0, sys.argv[5]); from suite_cost import _stages; "
            "print(json.dumps(_stages(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))"
        )
        args = [str(threads), problem, str(models), str(ensemble), str(Path(__file__).parent)]
        out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def _export_lib(ref: str, into: Path) -> Path:
    """``lib/`` of git revision ``ref`` under ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "lib"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "lib"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=list(DEFAULT_PROBLEMS))
    parser.add_argument("--compare", default=None, help="git revision whose lib/ runs beside the working tree's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", type=int, default=40)
    parser.add_argument("--ensemble", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="suite_cost_lib") as folder:
        libs = {"now": REPO / "lib"}
        if args.compare:
            libs = {args.compare: _export_lib(args.compare, Path(folder)), **libs}
        for problem in args.problems:
            rows = {
                label: _run_one(lib, problem, args.threads, args.models, args.ensemble) for label, lib in libs.items()
            }
            print(f"\n{problem} (seconds, {args.threads} torch thread(s), M = {args.models}, ensemble {args.ensemble})")
            print(f"{'stage':<22}" + "".join(f"{label:>12}" for label in rows))
            for stage in next(iter(rows.values())):
                print(f"{stage:<22}" + "".join(f"{row.get(stage, float('nan')):>12.2f}" for row in rows.values()))


if __name__ == "__main__":
    main()
