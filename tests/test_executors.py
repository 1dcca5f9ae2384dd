"""Retraining fanned out on Dask and submitit: the same ground truth as in-process, chunk by chunk.

Every engine here runs on this machine (loopback only): a real ``LocalCluster`` of worker processes
and submitit's local executor. Worker processes run torch on one thread (Dask's nanny sets
``OMP_NUM_THREADS=1``; :mod:`dahp.training.executors` pins local submitit jobs), and torch's rounding
depends on its thread count, so the in-process reference is computed on one thread too: then the
results are bitwise equal.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from distributed.diagnostics.plugin import WorkerPlugin

from dahp.cli import main
from dahp.core.cache import Cache
from dahp.core.config import GroundTruthConfig, InvalidParameterError
from dahp.training import ground_truth as gt_module
from dahp.training.executors import Executor, Task, TasksFailed, resolve_executor, run_tasks
from dahp.training.ground_truth import ChunkSlice, chunk_ranges, ground_truth, train_chunks
from helpers import quick, registered

# mnist_mlp has dropout: equal results also mean each chunk's dropout stream is its own
SETTING = quick("mnist_mlp", epochs=2)
CONFIG = GroundTruthConfig(alpha=0.25, n_models=4, seed=5, models_per_chunk=1)
# the killed-worker run: more, slower chunks, so a worker can be killed while the others go on
SLOW_SETTING = quick("mnist_mlp", epochs=4)
SLOW_CONFIG = GroundTruthConfig(alpha=0.25, n_models=6, seed=6, models_per_chunk=1)


def one_thread(function, *args, **kwargs):
    """``function(*args, **kwargs)`` with torch on one thread, as in a Dask worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process ground truth of SETTING/CONFIG (one torch thread)."""
    cache = Cache(tmp_path_factory.mktemp("reference"))
    return one_thread(ground_truth, SETTING, CONFIG, cache, progress=False)


def assert_bitwise_equal(truth, reference) -> None:
    assert torch.equal(truth.subsets, reference.subsets)
    for split in ("val", "test"):
        assert torch.equal(truth.margins[split], reference.margins[split]), split
    assert torch.equal(truth.test_accuracy, reference.test_accuracy)


def entries(cache: Cache) -> list[Path]:
    return sorted((cache.root / "ground_truth").glob("*.pt"))


class Forbidden:
    """Stands in for training: any call is a test failure (input must be refused before compute)."""

    def __call__(self, *args, **kwargs):
        raise AssertionError("training started although the input was invalid")


# --------------------------------------------------------------------------------------------
# The choice of engine, checked before any compute


@pytest.mark.parametrize(
    "value",
    ["threads", "Dask", "dask:", "dask://", "dask://host", "dask://host:0", "dask://host:70000", "slurm", 3],
)
def test_bad_executor_values_are_refused_before_compute(value, cache, monkeypatch):
    monkeypatch.setattr(gt_module, "train_many", Forbidden())
    with pytest.raises(InvalidParameterError) as error:
        ground_truth(SETTING, CONFIG, cache, progress=False, executor=value)
    assert error.value.parameter == "executor" and "inline" in error.value.valid
    assert not (cache.root / "ground_truth").exists()


def test_an_unreachable_scheduler_is_reported_before_any_training(cache, monkeypatch):
    monkeypatch.setattr(gt_module, "train_many", Forbidden())
    with pytest.raises(InvalidParameterError, match="running Dask scheduler"):
        ground_truth(SETTING, CONFIG, cache, progress=False, executor="dask://127.0.0.1:9")
    assert not (cache.root / "ground_truth").exists()


def test_the_environment_variable_chooses_and_is_checked(cache, monkeypatch):
    monkeypatch.setenv("DAHP_EXECUTOR", "dask://scheduler.example:8786")
    assert resolve_executor() == Executor("dask", "tcp://scheduler.example:8786")
    assert str(resolve_executor()) == "dask://scheduler.example:8786"
    assert resolve_executor("inline") == Executor("inline")  # the argument wins
    monkeypatch.setenv("DAHP_EXECUTOR", "everywhere")
    monkeypatch.setattr(gt_module, "train_many", Forbidden())
    with pytest.raises(InvalidParameterError, match="DAHP_EXECUTOR"):
        ground_truth(SETTING, CONFIG, cache, progress=False)
    monkeypatch.delenv("DAHP_EXECUTOR")
    assert resolve_executor() == Executor("inline")


def test_malformed_submitit_parameters_are_refused_before_compute(monkeypatch):
    monkeypatch.setenv("DAHP_SUBMITIT_PARAMETERS", "[1, 2]")
    with pytest.raises(InvalidParameterError, match="DAHP_SUBMITIT_PARAMETERS"):
        resolve_executor("submitit")
    monkeypatch.setenv("DAHP_SUBMITIT_PARAMETERS", '{"slurm_partition": "gpu", "timeout_min": 30}')
    from dahp.training.executors import submitit_parameters

    assert submitit_parameters() == {"slurm_partition": "gpu", "timeout_min": 30}


def test_cli_refuses_bad_executor_and_chunks_before_compute(monkeypatch, capsys):
    name = registered(SETTING, "mnist_mlp_fanout_quick")
    monkeypatch.setattr(gt_module, "train_many", Forbidden())
    for flags in (["--executor", "cluster"], ["--chunks", "0/3"], ["--chunks", "4/3"], ["--chunks", "one/3"]):
        assert main(["ground-truth", "--setting", name, "--device", "cpu", *flags]) == 2
        assert "error: invalid" in capsys.readouterr().err


def test_inline_runs_tasks_in_order_and_stops_at_the_first_error():
    assert run_tasks([Task(str(i), pow, (i, 2)) for i in range(5)], "inline", progress=False) == [0, 1, 4, 9, 16]
    with pytest.raises(ZeroDivisionError):  # inline: a plain loop, the first error stops it
        run_tasks([Task("a", divmod, (1, 0))], "inline", progress=False)


# --------------------------------------------------------------------------------------------
# Slices of the chunks (a plain Slurm array)


@pytest.mark.parametrize(("n_models", "per_chunk", "count"), [(50, 25, 8), (7, 2, 3), (10, 1, 4), (5, 5, 1)])
def test_chunk_slices_partition_the_chunks(n_models, per_chunk, count):
    config = GroundTruthConfig(n_models=n_models, models_per_chunk=per_chunk)
    chunks = chunk_ranges(config)
    assert [a for a, _ in chunks] == list(range(0, n_models, per_chunk)) and chunks[-1][1] == n_models
    slices = [ChunkSlice(i, count).select(chunks) for i in range(1, count + 1)]
    assert sorted(c for part in slices for c in part) == chunks  # every chunk once, in no two slices
    assert max(map(len, slices)) - min(map(len, slices)) <= 1  # balanced
    assert ChunkSlice.parse(f" {count}/{count} ") == ChunkSlice(count, count)


def test_slices_train_disjoint_chunks_and_the_gathering_trains_nothing(cache, reference, monkeypatch, capsys):
    name = registered(SETTING, "mnist_mlp_fanout_quick")
    monkeypatch.setenv("DAHP_CACHE_DIR", str(cache.root))
    trained = []
    for i in (1, 2):
        assert (
            one_thread(main, ["ground-truth", "--setting", name, "--device", "cpu", "--chunks", f"{i}/2", *_flags()])
            == 0
        )
        report = capsys.readouterr().out
        assert f"chunks {i}/2" in report and "2 trained, 0 already cached" in report
        trained.append(len(entries(cache)))
    assert trained == [2, 4]
    report = one_thread(train_chunks, name, CONFIG, cache, progress=False, chunks="2/2")
    assert report.trained == [] and report.cached == [(1, 2), (3, 4)]
    monkeypatch.setattr(gt_module, "train_many", Forbidden())
    assert_bitwise_equal(ground_truth(name, CONFIG, cache, progress=False), reference)


def _flags() -> list[str]:
    return [
        "--alpha",
        str(CONFIG.alpha),
        "--n-models",
        str(CONFIG.n_models),
        "--seed",
        str(CONFIG.seed),
        "--models-per-chunk",
        str(CONFIG.models_per_chunk),
    ]


# --------------------------------------------------------------------------------------------
# The engines give the in-process result


def test_local_cluster_of_two_worker_processes_is_bitwise_equal_to_inline(cache, reference):
    truth = ground_truth(SETTING, CONFIG, cache, progress=False, executor="dask")
    assert_bitwise_equal(truth, reference)
    assert len(entries(cache)) == len(chunk_ranges(CONFIG))
    assert not list((cache.root / "ground_truth").glob("*.tmp"))


def test_submitit_local_executor_gives_the_same_result(cache, reference):
    # half the chunks cached in-process first: submitit runs the other half (two local jobs, not four)
    # and the gathering mixes both
    one_thread(train_chunks, SETTING, CONFIG, cache, progress=False, chunks="1/2")
    report = train_chunks(SETTING, CONFIG, cache, progress=False, executor="submitit")
    assert report.trained == [(1, 2), (3, 4)] and report.executor == "submitit"
    # one job folder per array task, under the cache directory
    assert len(list((cache.root / "submitit").glob("*/*_result.pkl"))) == 2
    assert_bitwise_equal(ground_truth(SETTING, CONFIG, cache, progress=False, executor="submitit"), reference)


def test_an_engine_runs_every_task_and_reports_every_failure():
    tasks = [Task("fine", pow, (3, 2)), Task("broken", divmod, (1, 0)), Task("also fine", pow, (2, 3))]
    with pytest.raises(TasksFailed) as failed:
        run_tasks(tasks, "dask", progress=False)
    assert list(failed.value.failures) == ["broken"]
    assert "ZeroDivisionError" in failed.value.failures["broken"] and "1 of 3 tasks failed" in str(failed.value)


# --------------------------------------------------------------------------------------------
# Failures: a killed worker, a corrupt entry, racing writers


class CountWrites(WorkerPlugin):
    """A Dask worker plugin: every cache write of the worker's process appends its file name to
    ``log`` (re-installed by the scheduler on a restarted worker)."""

    name = "count-cache-writes"

    def __init__(self, log: str) -> None:
        self.log = log

    def setup(self, worker) -> None:
        from dahp.core.cache import Cache

        original, log = Cache.save, self.log
        if getattr(original, "_counted", False):
            return

        def save(cache, kind, spec, payload):
            path = original(cache, kind, spec, payload)
            with open(log, "a") as handle:  # one short append per write: atomic on a local file system
                handle.write(f"{path.name}\n")
            return path

        save._counted = True
        Cache.save = save


def test_a_killed_worker_loses_no_finished_chunk_and_nothing_is_computed_twice(cache, tmp_path):
    import cloudpickle
    from dask.distributed import Client, LocalCluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the plugin's class, for the workers
    log = tmp_path / "writes.log"
    killed: dict = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.register_plugin(CountWrites(str(log)))
            address = "dask://" + cluster.scheduler_address.removeprefix("tcp://")
            outcome: dict = {}

            def build() -> None:
                try:
                    outcome["truth"] = ground_truth(SLOW_SETTING, SLOW_CONFIG, cache, progress=False, executor=address)
                except BaseException as error:  # reported by the main thread below
                    outcome["error"] = error

            run = threading.Thread(target=build)
            run.start()
            deadline = time.monotonic() + 90
            while not entries(cache) and time.monotonic() < deadline:
                time.sleep(0.05)
            # the first chunk is written: kill a worker that is training one of the others
            pids = client.run(os.getpid)
            busy = [address for address, keys in client.processing().items() if keys]
            assert busy, "no worker was running a chunk"
            killed["finished"] = {path.name: _identity(path) for path in entries(cache)}
            os.kill(pids[busy[0]], signal.SIGKILL)
            run.join(timeout=120)
            assert not run.is_alive() and "error" not in outcome, outcome.get("error")
            assert set(client.run(os.getpid).values()).isdisjoint({pids[busy[0]]})  # a restarted worker

            finished_at_kill = killed["finished"]
            assert 1 <= len(finished_at_kill) < len(chunk_ranges(SLOW_CONFIG))  # killed mid-run
            # no finished chunk was lost or rewritten (a rewrite would be a new file: a new inode)
            after = {path.name: _identity(path) for path in entries(cache)}
            assert {name: after[name] for name in finished_at_kill} == finished_at_kill
            assert len(after) == len(chunk_ranges(SLOW_CONFIG))

            # a rerun on the same cluster finds everything cached: nothing is trained again
            report = train_chunks(SLOW_SETTING, SLOW_CONFIG, cache, progress=False, executor=address)
            assert report.trained == [] and len(report.cached) == len(chunk_ranges(SLOW_CONFIG))
            writes = log.read_text().split()
    # every chunk was written exactly once, over the killed run and the rerun
    assert sorted(writes) == sorted(after) and len(writes) == len(set(writes))
    # and the chunks are the in-process ones
    inline = one_thread(ground_truth, SLOW_SETTING, SLOW_CONFIG, Cache(tmp_path / "inline"), progress=False)
    assert_bitwise_equal(outcome["truth"], inline)


def test_a_corrupt_chunk_is_detected_and_only_it_is_recomputed(cache, reference, monkeypatch):
    one_thread(ground_truth, SETTING, CONFIG, cache, progress=False)
    paths = entries(cache)
    # a worker that crashed mid-write under a non-atomic writer: a truncated entry; and a stray temporary file
    blob = paths[1].read_bytes()
    paths[1].write_bytes(blob[: len(blob) // 2])
    (paths[0].parent / f"{paths[0].name}1234.tmp").write_bytes(blob[:100])
    inodes = {path.name: _identity(path) for path in paths}

    calls = []
    real = gt_module.train_many
    monkeypatch.setattr(gt_module, "train_many", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.warns(UserWarning, match="damaged cache entry"):
        truth = one_thread(ground_truth, SETTING, CONFIG, cache, progress=False)
    assert len(calls) == 1  # only the damaged chunk was trained again
    assert_bitwise_equal(truth, reference)
    now = {path.name: _identity(path) for path in entries(cache)}
    assert [name for name in now if now[name] != inodes[name]] == [paths[1].name]


def _save_repeatedly(root: str, rounds: int, start: multiprocessing.Event) -> None:
    cache = Cache(root)
    payload = {"values": torch.arange(200_000, dtype=torch.float64)}
    start.wait()
    for _ in range(rounds):
        cache.save("ground_truth", {"race": 1}, payload)


def test_two_processes_racing_for_one_entry_end_with_one_valid_entry(tmp_path):
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    racers = [context.Process(target=_save_repeatedly, args=(str(tmp_path), 20, start)) for _ in range(2)]
    for racer in racers:
        racer.start()
    start.set()
    for racer in racers:
        racer.join(timeout=90)
        assert racer.exitcode == 0
    files = sorted(p.name for p in (tmp_path / "ground_truth").iterdir())
    cache = Cache(tmp_path)
    assert files == [cache.path("ground_truth", {"race": 1}).name]  # no temporary file left behind
    assert torch.equal(cache.load("ground_truth", {"race": 1})["values"], torch.arange(200_000, dtype=torch.float64))


def _identity(path: Path) -> tuple[int, int]:
    """A file's inode and modification time: a rewrite (a new file renamed into place) changes them."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


# --------------------------------------------------------------------------------------------
# The other loops of independent trainings: TRAK's ensemble members, the removal table's batches


@pytest.fixture(scope="module")
def running_cluster():
    """A running 2-worker LocalCluster, reached by its address as a remote scheduler would be."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield "dask://" + cluster.scheduler_address.removeprefix("tcp://")


def test_trak_members_trained_on_a_cluster_equal_those_trained_inline(tmp_path, running_cluster):
    from dahp.attribution.attributors import trak_members

    setting = quick("mnist_lr", epochs=2)
    fanned = trak_members(setting, 3, Cache(tmp_path / "fanned"), False, "cpu", executor=running_cluster)
    inline = one_thread(trak_members, setting, 3, Cache(tmp_path / "inline"), False, "cpu", executor="inline")
    assert len(fanned) == len(inline) == 3
    for a, b in zip(fanned, inline):
        assert a.states.keys() == b.states.keys()
        assert all(torch.equal(a.states[name], b.states[name]) for name in a.states)
    assert not torch.equal(fanned[0].states["linear.weight"], fanned[1].states["linear.weight"])  # 3 seeds


def test_removal_table_on_a_cluster_equals_inline(tmp_path, running_cluster):
    import pandas as pd

    from dahp.experiments.removal import RemovalConfig, removal_table

    setting = quick("mnist_lr", epochs=1)
    scores = torch.linspace(-1, 1, setting.data().n_train, dtype=torch.float64).unsqueeze(1).repeat(1, 2)
    config = RemovalConfig(rates=(0.1, 0.5), n_seeds=2)
    fanned = removal_table(setting, {"m": scores}, config, Cache(tmp_path / "f"), False, "cpu", running_cluster)
    inline = one_thread(removal_table, setting, {"m": scores}, config, Cache(tmp_path / "i"), False, "cpu", "inline")
    pd.testing.assert_frame_equal(fanned, inline, check_exact=True)
    assert len(list((tmp_path / "f" / "removal").glob("*.pt"))) == 1 + len(config.rates)  # a task, an entry
