"""Peak memory (and time) of the heaviest computations of the book's ``default`` profile.

Each computation runs in a fresh Python process (as each notebook runs in its own kernel) and its
peak resident set size is read from the kernel's accounting of that process (``os.wait4``). The
full-data models come from the cache (trained there on first use, in a process of its own that is
measured too); the gradient features and factorizations are computed afresh in every measured run,
in a scratch cache that shares only the trained checkpoints.

    python bench/peak_memory.py [--only if_cg_mlp,trak_mlp] [--save DIR] [--lib PATH]

``--save DIR`` writes each computation's scores to ``DIR/<name>.pt`` (to compare two versions of
the code on the same inputs); ``--lib PATH`` imports ``dahp`` from ``PATH`` instead of the
installed package (e.g. another checkout's ``lib``). Output lines::

    RESULT peak_rss_gb_<name> <GB>
    RESULT seconds_<name> <seconds>
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Test queries of the attributors dattri reruns (the default profile's ``rerun_queries``: 20).
RERUN_QUERIES = list(range(0, 500, 25))


def _query_index():
    import torch

    return torch.tensor(RERUN_QUERIES)


def _rerun(cache, setting: str, attributor: str, regularization: float | None = None, **values):
    """Scores of an attributor dattri reruns (CG, LiSSA, LoGra, TracIn) on the 20 rerun queries."""
    import torch

    from dahp.attribution.attributors import make_params, scorer
    from dahp.data.settings import get_setting

    params = make_params(attributor, **({} if regularization is None else {"regularization": regularization}), **values)
    torch.manual_seed(0)  # LiSSA samples its training batches from torch's global generator
    return scorer(
        get_setting(setting), attributor, params, "test", cache, progress=False, query_index=_query_index()
    ).scores(regularization or 0.0)


def _spectral(cache, setting: str, attributor: str, regularization: float, **values):
    """Scores of a closed-form attributor on all 500 validation queries, features computed afresh."""
    from dahp.attribution.attributors import make_params, scorer
    from dahp.data.settings import get_setting

    params = make_params(attributor, **values)
    return scorer(get_setting(setting), attributor, params, "val", cache, progress=False).scores(regularization)


#: name -> (what it is, the computation of the scores from a cache holding the trained models).
COMPUTATIONS = {
    "if_cg_mlp": (
        "IF (CG) on mnist_mlp, λ=1e-2, 10 iterations, 20 queries (Fig 1a)",
        lambda cache: _rerun(cache, "mnist_mlp", "if_cg", 1e-2),
    ),
    "if_lissa_mlp": (
        "IF (LiSSA) on mnist_mlp, depth 100, scaling 5, 20 queries (Fig 1d)",
        lambda cache: _rerun(cache, "mnist_mlp", "if_lissa", 1e-3, recursion_depth=100),
    ),
    "logra_mlp": (
        "LoGra on mnist_mlp, proj_dim 4096, 20 queries",
        lambda cache: _rerun(cache, "mnist_mlp", "logra", 1e-3),
    ),
    "trak_mlp": (
        "TRAK features + factorization on mnist_mlp, proj_dim 2048, one model, 500 val queries (Fig 1b/3)",
        lambda cache: _spectral(cache, "mnist_mlp", "trak", 1e-2, proj_dim=2048, ensemble_size=1),
    ),
    "iffim_mlp": (
        "IFFIM features + factorization on mnist_mlp, proj_dim 2048, 500 val queries (Fig 2)",
        lambda cache: _spectral(cache, "mnist_mlp", "iffim", 1e-3, proj_dim=2048),
    ),
    "tracin_lr": (
        "TracInCP on mnist_lr, full gradients, last 10 checkpoints, 20 queries (Fig 4)",
        lambda cache: _rerun(cache, "mnist_lr", "tracin"),
    ),
    "if_cg_lr": (
        "IF (CG) on mnist_lr, λ=1e-2, 20 iterations, 20 queries (Fig 4)",
        lambda cache: _rerun(cache, "mnist_lr", "if_cg", 1e-2, max_iteration=20),
    ),
}


def _train_models() -> None:
    """Train (or load) the full-data models every computation reads, before anything is measured."""
    from dahp.data.settings import get_setting
    from dahp.training.train import train_full

    for name in ("mnist_lr", "mnist_mlp"):
        train_full(get_setting(name), 0, progress=False)


def _scratch_cache(folder: str):
    """A cache in ``folder`` that shares the trained checkpoints of the default cache, nothing else."""
    from dahp.core.cache import Cache, default_cache

    shared = default_cache().root / "checkpoints"
    shared.mkdir(parents=True, exist_ok=True)
    os.symlink(shared, Path(folder) / "checkpoints")
    return Cache(folder)


def child(name: str, save: str | None) -> None:
    """Run one computation in this process; print its time."""
    import torch

    if name == "train":
        import dahp

        print(f"CHILD dahp {dahp.__file__}", flush=True)
        started = time.perf_counter()
        _train_models()
        print(f"CHILD seconds {time.perf_counter() - started:.3f}", flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="dahp-peak-") as folder:
        cache = _scratch_cache(folder)
        started = time.perf_counter()
        scores = COMPUTATIONS[name][1](cache)
        seconds = time.perf_counter() - started
    if save:
        Path(save).mkdir(parents=True, exist_ok=True)
        torch.save(scores.detach().cpu(), Path(save) / f"{name}.pt")
    print(f"CHILD seconds {seconds:.3f}", flush=True)
    print(f"CHILD shape {tuple(scores.shape)}", flush=True)


def measure(name: str, save: str | None, lib: str | None) -> tuple[float, float, str]:
    """(peak RSS in GB, seconds inside the child, its output) of one computation in a fresh process."""
    command = [sys.executable, __file__, "--child", name]
    if save:
        command += ["--save", save]
    env = dict(os.environ)
    if lib:
        env["PYTHONPATH"] = lib + os.pathsep + env.get("PYTHONPATH", "")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {process.returncode}:\n{output}")
    seconds = float(next(line.split()[-1] for line in output.splitlines() if line.startswith("CHILD seconds")))
    return usage.ru_maxrss / 1024**2, seconds, output  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated names among: " + ", ".join(COMPUTATIONS))
    parser.add_argument("--save", help="folder to write each computation's scores to (<name>.pt)")
    parser.add_argument("--lib", help="import dahp from this folder (another checkout's lib/)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.save)
        return
    names = args.only.split(",") if args.only else list(COMPUTATIONS)
    unknown = [n for n in names if n not in COMPUTATIONS]
    if unknown:
        raise SystemExit(f"unknown computation(s) {unknown}; valid: {', '.join(COMPUTATIONS)}")
    peak, seconds, output = measure("train", None, args.lib)
    where = next(line.split(maxsplit=2)[-1] for line in output.splitlines() if line.startswith("CHILD dahp"))
    print(f"dahp from {where}; models trained or loaded (peak {peak:.2f} GB, {seconds:.1f} s)", flush=True)
    for name in names:
        peak, seconds, _ = measure(name, args.save, args.lib)
        print(f"# {name}: {COMPUTATIONS[name][0]}", flush=True)
        print(f"RESULT peak_rss_gb_{name} {peak:.3f}", flush=True)
        print(f"RESULT seconds_{name} {seconds:.2f}", flush=True)


if __name__ == "__main__":
    main()
