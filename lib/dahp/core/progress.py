"""Progress bars that reach the terminal of ``make book`` instead of the executed notebook.

``from dahp.core.progress import tqdm`` is a drop-in for ``tqdm.tqdm`` (same signature, a subclass).
What it does depends on the environment variable ``DAHP_PROGRESS``, read at each call:

- unset (or any other value): exactly ``tqdm.tqdm``;
- ``terminal``: the bar is written to the process's real standard error, never to the notebook.
  The plan runner (:mod:`dahp.book.plan`) sets this in the environment of the kernels it launches, so a
  bar asked for with ``disable=False`` inside a notebook shows on the terminal running the plan and
  leaves no trace in the page. ``disable=True`` still hides a bar; ``file=`` is overridden;
- ``off``: every bar is disabled (``run-plan --no-progress``).

"The real standard error" needs care inside a Jupyter kernel: ipykernel (6 and later) redirects
file descriptor 2 into a pipe whose content it forwards to the notebook as a ``stderr`` stream, so
writing to ``sys.__stderr__`` would land in the executed notebook. It keeps a duplicate of the
original descriptor (``sys.stderr._original_stdstream_copy``); the bar is written there. Outside a
kernel, or when the kernel does not capture descriptors, ``sys.__stderr__`` is used.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import IO

import tqdm as _tqdm

#: The environment variable, and its values.
ENV = "DAHP_PROGRESS"
TERMINAL = "terminal"
OFF = "off"

_terminal: IO[str] | None = None


def mode() -> str | None:
    """``"terminal"``, ``"off"``, or None (plain tqdm), from ``$DAHP_PROGRESS``."""
    value = os.environ.get(ENV)
    return value if value in (TERMINAL, OFF) else None


def terminal_stream() -> IO[str]:
    """The process's real standard error: not the stream a kernel forwards to the notebook."""
    global _terminal
    copy = getattr(sys.stderr, "_original_stdstream_copy", None)
    if isinstance(copy, int) and getattr(sys.stderr, "_should_watch", False):
        if _terminal is None or _terminal.closed:
            # our own duplicate: the kernel closes its copy when it stops watching
            _terminal = open(os.dup(copy), "w", buffering=1, encoding="utf-8", errors="replace", closefd=True)
        return _terminal
    return sys.__stderr__ if sys.__stderr__ is not None else sys.stderr


class tqdm(_tqdm.tqdm):  # lower case: the name of the class it replaces
    """``tqdm.tqdm``, routed by ``$DAHP_PROGRESS`` (see the module's documentation)."""

    def __init__(self, *args, **kwargs):
        current = mode()
        if current is not None:
            # any argument may come by position: bind them to their names before overriding one
            bound = _SIGNATURE.bind(None, *args, **kwargs)
            args, kwargs = (), {name: value for name, value in bound.arguments.items() if name != "self"}
            kwargs.update(kwargs.pop("kwargs", {}))
            if current == TERMINAL:
                kwargs["file"] = terminal_stream()
            else:
                kwargs["disable"] = True
        super().__init__(*args, **kwargs)


_SIGNATURE = inspect.signature(_tqdm.tqdm.__init__)


def trange(*args, **kwargs) -> tqdm:
    """``tqdm(range(*args), **kwargs)``, as ``tqdm.trange``."""
    return tqdm(range(*args), **kwargs)
