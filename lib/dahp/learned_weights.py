"""Deprecated import path: use :mod:`dahp.methods.learned_weights` (this alias goes away in the next release)."""

import importlib
import sys
import warnings

warnings.warn(
    "dahp.learned_weights moved to dahp.methods.learned_weights; the old import path will be removed in the next release",
    DeprecationWarning,
    stacklevel=2,
)
# the alias *is* the moved module, so every name (and monkeypatching) reaches the real one
sys.modules[__name__] = importlib.import_module("dahp.methods.learned_weights")
