"""The ground truth fanned out: in-process against a 2-worker Dask ``LocalCluster``, and the cost per task.

Part 1 builds the ``mnist_mlp`` ground truth with the default :class:`~dahp.core.config.GroundTruthConfig`
(50 models, α = 0.5, 25 models per chunk: two chunks) twice, each time into a fresh temporary
cache directory: in this process (torch on all its threads), and with ``executor="dask"`` on a
``LocalCluster`` of ``--workers`` single-threaded worker processes (its start and shutdown
included). It prints both wall times and their ratio side by side.

Part 2 measures what one task costs an engine beyond its work: ``--tiny`` tasks that do nothing
(``int(0)``), in-process and on an already-running 2-worker cluster (``dask://HOST:PORT``), and
submitit's local executor on ``--tiny-submitit`` of them (one Python process per task); plus the
start and shutdown of a ``LocalCluster``.

    python bench/fanout.py [--part all|ground-truth|overhead] [--workers 2] [--tiny 200] [--tiny-submitit 4]
                           [--n-models 50] [--models-per-chunk 25]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from dahp.core.cache import Cache
from dahp.core.config import GroundTruthConfig
from dahp.training.executors import Task, run_tasks
from dahp.training.ground_truth import ground_truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "ground-truth", "overhead"], default="all")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tiny", type=int, default=200)
    parser.add_argument("--tiny-submitit", type=int, default=4)
    defaults = GroundTruthConfig()
    parser.add_argument("--n-models", type=int, default=defaults.n_models)
    parser.add_argument("--models-per-chunk", type=int, default=defaults.models_per_chunk)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.part in ("all", "ground-truth"):
        ground_truth_part(args)
    if args.part in ("all", "overhead"):
        overhead_part(args)


def ground_truth_part(args: argparse.Namespace) -> None:
    """Part 1: the 50-model mnist_mlp ground truth in-process and on a LocalCluster."""
    config = GroundTruthConfig(n_models=args.n_models, models_per_chunk=args.models_per_chunk)
    seconds, truths = {}, {}
    for label, executor in (("in-process", "inline"), (f"LocalCluster ({args.workers} workers)", "dask")):
        with tempfile.TemporaryDirectory(prefix="dahp-fanout-") as root:
            os.environ["DAHP_CACHE_DIR"] = root  # fresh: nothing cached
            started = time.perf_counter()
            if executor == "dask":
                truths[label] = _on_local_cluster(config, Path(root), args.workers)
            else:
                truths[label] = ground_truth("mnist_mlp", config, Cache(root), progress=False, executor=executor)
            seconds[label] = time.perf_counter() - started
        print(
            f"  {label:28s} {seconds[label]:8.1f} s  (training summed over chunks "
            f"{truths[label].train_seconds:.1f} s, load average {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    a, b = truths.values()
    first, second = list(seconds)
    agree = max(float((a.margins[s] - b.margins[s]).abs().max()) for s in ("val", "test"))
    print(
        f"mnist_mlp ground truth, M={config.n_models}, {config.models_per_chunk} per chunk "
        f"({-(-config.n_models // config.models_per_chunk)} chunks): {first} {seconds[first]:.1f} s | {second} "
        f"{seconds[second]:.1f} s | ratio {seconds[first] / seconds[second]:.2f}x "
        f"(torch threads in-process: {torch.get_num_threads()}; largest margin difference {agree:.2e})"
    )


def _on_local_cluster(config: GroundTruthConfig, root: Path, workers: int):
    """The ground truth on a LocalCluster of ``workers`` processes, started and closed inside the timing."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        address = "dask://" + cluster.scheduler_address.removeprefix("tcp://")
        return ground_truth("mnist_mlp", config, Cache(root), progress=False, executor=address)


def overhead_part(args: argparse.Namespace) -> None:
    """Part 2: the cost of one task on each engine (tasks that do nothing)."""
    from dask.distributed import LocalCluster

    tiny = [Task(f"noop {i}", int, (0,)) for i in range(args.tiny)]
    started = time.perf_counter()
    run_tasks(tiny, "inline", progress=False)
    inline = time.perf_counter() - started

    started = time.perf_counter()
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None)
    start_up = time.perf_counter() - started
    address = "dask://" + cluster.scheduler_address.removeprefix("tcp://")
    run_tasks(tiny[:2], address, progress=False)  # the workers' first task imports dahp
    started = time.perf_counter()
    run_tasks(tiny, address, progress=False)
    dask = time.perf_counter() - started
    started = time.perf_counter()
    cluster.close()
    shut_down = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="dahp-fanout-") as root:
        few = tiny[: args.tiny_submitit]
        started = time.perf_counter()
        run_tasks(few, "submitit", log_dir=Path(root) / "submitit", progress=False)
        submitit = time.perf_counter() - started

    print(
        f"per task, {args.tiny} tasks that do nothing: in-process {1e6 * inline / args.tiny:.1f} µs | "
        f"Dask, {args.workers} workers running {1e3 * dask / args.tiny:.2f} ms (client connect and gather included) | "
        f"submitit local, {len(few)} tasks {submitit / len(few):.2f} s (one Python process each, run together)"
    )
    print(f"LocalCluster of {args.workers} workers: start {start_up:.1f} s, shutdown {shut_down:.1f} s")


if __name__ == "__main__":
    main()
