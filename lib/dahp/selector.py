"""Deprecated import path: use :mod:`dahp.selection.selector` (this alias goes away in the next release)."""

import importlib
import sys
import warnings

warnings.warn(
    "dahp.selector moved to dahp.selection.selector; the old import path will be removed in the next release",
    DeprecationWarning,
    stacklevel=2,
)
# the alias *is* the moved module, so every name (and monkeypatching) reaches the real one
sys.modules[__name__] = importlib.import_module("dahp.selection.selector")
