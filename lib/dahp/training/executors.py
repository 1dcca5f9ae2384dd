"""Where independent work runs: in this process, on a Dask cluster, or as submitit (Slurm) jobs.

Loops of independent trainings (the ground truth's chunks first) hand their tasks to
:func:`run_tasks`. Which engine runs them is one choice, resolved by :func:`resolve_executor` in
this order: the ``executor`` argument (the CLI's ``--executor``, a papermill parameter), the
environment variable ``DAHP_EXECUTOR``, else ``"inline"``:

- ``inline`` -- one task after the other in the calling process (the default; what ran before);
- ``dask`` -- a ``dask.distributed.LocalCluster`` on this machine (one single-threaded worker
  process per core, at most one per task), closed when the tasks are done;
- ``dask://HOST:PORT`` -- the scheduler of a running Dask cluster (``dask scheduler`` plus
  ``dask worker``\\ s, or a ``dask_jobqueue.SLURMCluster``'s ``scheduler_address``);
- ``submitit`` -- a ``submitit.AutoExecutor``: a Slurm job array on a Slurm cluster, its local
  executor elsewhere (one subprocess per task, all started at once, torch on one thread in each).
  Its logs and pickles go to ``submitit/`` under the cache directory;
  ``$DAHP_SUBMITIT_PARAMETERS`` (a JSON object, e.g.
  ``{"slurm_partition": "gpu", "gpus_per_node": 1, "timeout_min": 240}``) is passed to its
  ``update_parameters``.

The engines' own APIs do the scheduling (``client.map`` and ``as_completed``; ``map_array``). A task
writes its own result to the cache (atomically: temporary file and rename, see
:mod:`dahp.core.cache`), so the caller gathers from the cache, a killed worker loses only the task it
was running, and a rerun recomputes only what is missing. Every worker must reach the same cache
directory (``$DAHP_CACHE_DIR`` on a shared file system) and the same data (``$DAHP_DATA_DIR``).

torch's rounding depends on its number of threads: a task on one thread (a local Dask worker, a
local submitit job) gives, bitwise, what a one-thread run in this process gives; with more threads
results agree to rounding only (as across devices, :mod:`dahp.core.device`).

Progress: a bar counts done tasks and shows how many are running and how many failed; the
failures' messages are collected and raised together (:class:`TasksFailed`) once every other task
has finished, so one failure does not waste the others' work.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dahp.core.cache import default_cache
from dahp.core.config import InvalidParameterError
from dahp.core.progress import tqdm

EXECUTOR_ENV = "DAHP_EXECUTOR"
SUBMITIT_PARAMETERS_ENV = "DAHP_SUBMITIT_PARAMETERS"
#: The values :func:`resolve_executor` accepts.
EXECUTOR_VALUES = ("inline", "dask", "dask://HOST:PORT", "submitit")
#: submitit's local executor kills a job after ``timeout_min`` (2 minutes unless told): a long default.
SUBMITIT_DEFAULT_TIMEOUT_MIN = 24 * 60
#: seconds :func:`check_reachable` waits for a Dask scheduler to accept a connection
SCHEDULER_PROBE_SECONDS = 3.0
_DASK_ADDRESS = re.compile(r"^dask://(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")


class TasksFailed(RuntimeError):
    """Some tasks failed; the others finished (and wrote their cache entries). Holds the messages."""

    def __init__(self, failures: dict[str, str], total: int) -> None:
        self.failures = failures
        listed = "\n".join(f"  - {label}: {message}" for label, message in failures.items())
        super().__init__(
            f"{len(failures)} of {total} tasks failed (the others are cached; a rerun computes only what is "
            f"missing):\n{listed}"
        )


@dataclasses.dataclass(frozen=True)
class Executor:
    """A resolved engine choice: ``kind`` is ``inline``, ``dask`` or ``submitit``; ``address`` the
    Dask scheduler's (``tcp://HOST:PORT``), or ``None`` for a local cluster."""

    kind: str
    address: str | None = None

    def __str__(self) -> str:
        return self.address.replace("tcp://", "dask://", 1) if self.address else self.kind


@dataclasses.dataclass(frozen=True)
class Task:
    """One independent unit of work: ``function(*args)``, picklable (a module-level function and
    plain arguments), named by ``label`` in progress and failure messages."""

    label: str
    function: Callable[..., Any]
    args: tuple[Any, ...] = ()

    def __call__(self) -> Any:
        return self.function(*self.args)


def resolve_executor(executor: str | Executor | None = None) -> Executor:
    """The engine to run tasks on: ``executor``, else ``$DAHP_EXECUTOR``, else ``inline``.

    Checked here, before any compute: an unknown value, a malformed Dask address, or an engine
    whose package is not installed raises :class:`~dahp.core.config.InvalidParameterError`.
    """
    if isinstance(executor, Executor):
        return executor
    source = "executor"
    if executor is None or executor == "":
        executor = os.environ.get(EXECUTOR_ENV) or "inline"
        source = EXECUTOR_ENV
    if not isinstance(executor, str):
        raise InvalidParameterError(source, executor, EXECUTOR_VALUES)
    value = executor.strip()
    if value == "inline":
        return Executor("inline")
    if value == "dask" or value.startswith("dask://"):
        address = None
        if value != "dask":
            match = _DASK_ADDRESS.match(value)
            if match is None or not 1 <= int(match["port"]) <= 65535:
                raise InvalidParameterError(
                    source, executor, "inline, dask, dask://HOST:PORT (a port in 1..65535) or submitit"
                )
            address = f"tcp://{match['host']}:{match['port']}"
        _require("distributed", source, executor, "dask[distributed]")
        return Executor("dask", address)
    if value == "submitit":
        _require("submitit", source, executor, "submitit")
        submitit_parameters()  # a malformed $DAHP_SUBMITIT_PARAMETERS fails now, not after the submission
        return Executor("submitit")
    raise InvalidParameterError(source, executor, EXECUTOR_VALUES)


def check_reachable(executor: Executor, timeout: float = SCHEDULER_PROBE_SECONDS) -> None:
    """Refuse a Dask scheduler address at which nothing accepts a TCP connection within ``timeout``.

    A plain socket connect, no Dask client: the command line calls this with its other argument
    checks, so a mistyped or stopped scheduler is reported before the full-data model trains (Dask's
    own client would find out only when the first task is submitted). Other executors pass.
    """
    if executor.kind != "dask" or executor.address is None:
        return
    host, port = executor.address.removeprefix("tcp://").rsplit(":", 1)
    host = host.strip("[]")  # an IPv6 literal is written [::1]:8786
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise InvalidParameterError(
            "executor", str(executor), f"the address of a running Dask scheduler ({host}:{port}: {error})"
        ) from None


def _require(module: str, source: str, value: str, package: str) -> None:
    """Refuse an engine whose package is missing, naming what to install."""
    if importlib.util.find_spec(module) is None:
        raise InvalidParameterError(source, value, f"an engine that is installed (pip install '{package}')")


def submitit_parameters() -> dict[str, Any]:
    """The parameters for submitit's ``update_parameters``: ``timeout_min`` (default
    :data:`SUBMITIT_DEFAULT_TIMEOUT_MIN`) updated by the JSON object in ``$DAHP_SUBMITIT_PARAMETERS``."""
    text = os.environ.get(SUBMITIT_PARAMETERS_ENV, "").strip()
    parameters: dict[str, Any] = {"timeout_min": SUBMITIT_DEFAULT_TIMEOUT_MIN}
    if not text:
        return parameters
    try:
        given = json.loads(text)
    except json.JSONDecodeError:
        given = None
    if not isinstance(given, dict):
        raise InvalidParameterError(
            SUBMITIT_PARAMETERS_ENV, text, 'a JSON object of submitit parameters, e.g. {"slurm_partition": "gpu"}'
        )
    return {**parameters, **given}


def run_tasks(
    tasks: Sequence[Task],
    executor: str | Executor | None = None,
    *,
    desc: str = "tasks",
    log_dir: Path | None = None,
    progress: bool = True,
) -> list[Any]:
    """Run ``tasks`` on ``executor`` (:func:`resolve_executor`) and return their results in order.

    ``inline`` runs them here, one after the other, and lets an exception through at once (as a
    plain loop would). The engines run them all, then raise :class:`TasksFailed` with every
    failure's message if any failed. ``log_dir`` is submitit's folder (default: ``submitit/`` under
    the default cache directory).
    """
    chosen = resolve_executor(executor)
    tasks = list(tasks)
    if not tasks:
        return []
    bar = tqdm(total=len(tasks), desc=f"{desc} [{chosen}]", unit="task", disable=not progress)
    try:
        if chosen.kind == "inline":
            return _run_inline(tasks, bar)
        if chosen.kind == "dask":
            return _run_dask(tasks, chosen.address, bar)
        return _run_submitit(tasks, log_dir, bar)
    finally:
        bar.close()


def _show(bar: tqdm, done: int, running: int, failed: int) -> None:
    bar.set_postfix(done=done, running=running, failed=failed, refresh=False)
    bar.n = done + failed
    bar.refresh()


def _message(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def _run_inline(tasks: list[Task], bar: tqdm) -> list[Any]:
    results = []
    for index, task in enumerate(tasks):
        _show(bar, index, 1, 0)
        results.append(task())
    _show(bar, len(tasks), 0, 0)
    return results


def _run_dask(tasks: list[Task], address: str | None, bar: tqdm) -> list[Any]:
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if address is None:
        # single-threaded worker processes: torch's own threads would compete for the same cores
        workers = max(1, min(len(tasks), os.cpu_count() or 1))
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        client = Client(cluster) if cluster is not None else Client(address, timeout="10s")
    except OSError:
        if cluster is not None:
            cluster.close()
        # nothing has run yet: the address is wrong, or the scheduler is not up
        shown = address.replace("tcp://", "dask://", 1) if address else "dask"
        raise InvalidParameterError(
            "executor", shown, f"the address of a running Dask scheduler (none answered at {address})"
        ) from None
    try:
        futures = client.map(Task.__call__, tasks, pure=False, key=[_dask_key(t) for t in tasks])
        position = {future.key: index for index, future in enumerate(futures)}
        results: list[Any] = [None] * len(tasks)
        failures: dict[str, str] = {}
        done = 0
        for future in as_completed(futures):
            index = position[future.key]
            if future.status == "finished":
                results[index] = future.result()
                done += 1
            elif future.status == "error":
                failures[tasks[index].label] = _message(future.exception())
            else:
                failures[tasks[index].label] = f"the task was {future.status}"
            _show(bar, done, _dask_running(client, position), len(failures))
        if failures:
            raise TasksFailed(failures, len(tasks))
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _dask_key(task: Task) -> str:
    return f"dahp-{re.sub(r'[^A-Za-z0-9_.-]+', '_', task.label)}-{uuid.uuid4().hex[:8]}"


def _dask_running(client: Any, ours: dict[str, int]) -> int:
    """How many of our tasks the scheduler has on a worker now (the others are queued or done)."""
    try:
        processing = client.processing()
    except Exception:  # the count is for the bar only; never let it break a run
        return 0
    return sum(1 for keys in processing.values() for key in keys if key in ours)


def _run_submitit(tasks: list[Task], log_dir: Path | None, bar: tqdm) -> list[Any]:
    import submitit

    if log_dir is None:
        log_dir = default_cache().root / "submitit"
    executor = submitit.AutoExecutor(folder=Path(log_dir) / "%j")
    executor.update_parameters(**submitit_parameters())
    if executor.cluster in ("local", "debug"):
        # off a cluster every task is a process of this machine, all started at once: one torch thread
        # each, as in a Dask worker (and the same rounding as there)
        tasks = [Task(task.label, _single_threaded, (task,)) for task in tasks]
    jobs = executor.map_array(Task.__call__, tasks)
    finished: set[int] = set()
    failures: dict[str, str] = {}
    results: list[Any] = [None] * len(tasks)
    while len(finished) < len(jobs):
        running = 0
        for index, job in enumerate(jobs):
            if index in finished:
                continue
            if not job.done():
                running += job.state == "RUNNING"
                continue
            finished.add(index)
            error = job.exception()
            if error is None:
                results[index] = job.result()
            else:
                failures[tasks[index].label] = f"{_message(error)} (logs: {job.paths.stderr})"
        _show(bar, len(finished) - len(failures), running, len(failures))
        if len(finished) < len(jobs):
            time.sleep(0.5)
    if failures:
        raise TasksFailed(failures, len(tasks))
    return results


def _single_threaded(task: Task) -> Any:
    """``task()`` with torch on one thread (for processes that share this machine's cores)."""
    import torch

    torch.set_num_threads(1)
    return task()
