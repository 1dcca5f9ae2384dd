"""dahp: reproduction package for *Taming Hyperparameter Sensitivity in Data Attribution*.

The package is layered; a module imports only from layers below its own (checked by import-linter,
``make lint``):

========================  ==========================================================================
``dahp.cli``              the ``dahp`` command (``python -m dahp``)
``dahp.book``             the book's plan (notebooks executed by papermill) and the figures' style
``dahp.experiments``      each experiment of the paper with its own record; the reproduction status
``dahp.methods``          methods beyond the paper: learned parameter-group weights
``dahp.selection``        ξ and Algorithm 1, the rule registry, the public λ selector
``dahp.attribution``      gradient rows, λ scales and grids, the spectral engine, attributors, LDS
``dahp.training``         training, executors, the LDS ground truth
``dahp.data``             the split, the settings and their datasets, fixtures, dattri's benchmark folder
``dahp.core``             configuration and errors, paths, device, cache, progress, published numbers
========================  ==========================================================================

The names below are the public surface; they are imported on first use, so ``import dahp`` (and
``dahp --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from dahp._version import __version__ as __version__  # the re-export (PEP 484)

#: public name -> the module that defines it
_PUBLIC = {
    "GroundTruthConfig": "dahp.core.config",
    "InvalidParameterError": "dahp.core.config",
    "TrainingRecipe": "dahp.core.config",
    "LDSResult": "dahp.attribution.lds",
    "lds": "dahp.attribution.lds",
    "available_settings": "dahp.data.settings",
    "get_setting": "dahp.data.settings",
    "select_regularization": "dahp.selection.selector",
    "SelectorResult": "dahp.selection.selector",
    "RecipeFacts": "dahp.selection.recipe",
    "learn_group_weights": "dahp.methods.learned_weights",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dahp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
