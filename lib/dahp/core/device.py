"""Where the long computations run: one device choice, honoured end to end.

Every long computation (training, per-example gradients and projections, curvature and its
eigendecomposition, dattri's attributors, the LDS) takes a ``device`` argument and resolves it
with :func:`resolve_device`, in this order:

1. the argument itself (a papermill parameter or the CLI's ``--device`` pass it through);
2. the environment variable ``DAHP_DEVICE`` (so ``DAHP_DEVICE=cpu make book`` pins a GPU machine
   to the CPU without editing a notebook);
3. CUDA when it is present, else the CPU.

Results must not depend on the device beyond rounding, so no cache key carries the device's name:
tensors are moved to the device for the computation and what is cached comes back to the CPU. The
one exception is dropout, whose masks CUDA draws differently from the same seed: the training
keys of a model with dropout record that stream (:func:`dahp.training.train.dropout_stream`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dahp.core.config import InvalidParameterError

if TYPE_CHECKING:  # torch is imported where a device is resolved: the CLI's --help must not load it
    import torch

DEVICE_ENV = "DAHP_DEVICE"
#: Device kinds :func:`resolve_device` accepts (with an optional index, e.g. ``cuda:1``).
DEVICE_KINDS = ("cpu", "cuda")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device a computation runs on: ``device``, else ``$DAHP_DEVICE``, else CUDA if present, else CPU.

    Raises:
        InvalidParameterError: the name is not ``cpu``/``cuda``/``cuda:N``, or CUDA is asked for on a
            machine without it (checked here, before any compute).
    """
    import torch

    source = "device"
    if device is None or device == "":
        device = os.environ.get(DEVICE_ENV) or None
        source = DEVICE_ENV
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidParameterError(source, device, "'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type not in DEVICE_KINDS:
        raise InvalidParameterError(source, device, "'cpu', 'cuda' or 'cuda:N'")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameterError(source, device, "'cpu' (this machine has no CUDA device)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InvalidParameterError(
                source, device, f"'cpu' or 'cuda:N' with N < {torch.cuda.device_count()} (the CUDA devices here)"
            )
    return resolved


def describe(device: torch.device) -> str:
    """One line naming the device, for page stamps and the terminal (e.g. ``cuda:0 (NVIDIA H100)``)."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"


#: Models with fewer parameters than this train on one CPU thread (:func:`one_thread_below`).
ONE_THREAD_BELOW_PARAMS = 1_000_000


@contextlib.contextmanager
def one_cpu_thread(active: bool = True) -> Iterator[None]:
    """Run the block with torch on one intra-op thread (when ``active``), restoring the count after.

    Why: the operations of a small model are microseconds long, and each one is an OpenMP parallel
    region that waits for all its threads. On a small machine whose cores are also busy (a test run,
    papermill's parent, another kernel) one of those threads is often descheduled, and every operation
    then waits for it: training the book's 12 MLPs took 84 ms per step on two threads and 12 ms on one
    (measured on 2 shared cores). One thread gives up little when the machine is idle.
    """
    import torch

    threads = torch.get_num_threads()
    if active:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_thread_below(n_parameters: int, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """:func:`one_cpu_thread` for work on the CPU with a model of fewer than :data:`ONE_THREAD_BELOW_PARAMS`
    parameters; a no-op for larger models and other devices."""
    return one_cpu_thread(device.type == "cpu" and n_parameters < ONE_THREAD_BELOW_PARAMS)
