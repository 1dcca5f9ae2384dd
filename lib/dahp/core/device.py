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

import os
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
    return f"cpu ({torch.get_num_threads()} threads)"
