"""The names of the attributors, without importing torch.

The command line offers them as choices and must answer ``--help`` without loading torch or
dattri; the registry itself is :data:`dahp.attribution.attributors.ATTRIBUTORS`.
``tests/test_cli.py`` checks that these tuples equal the registries they name.
"""

from __future__ import annotations

#: the keys of :data:`dahp.attribution.attributors.ATTRIBUTORS`, in its order
ATTRIBUTOR_NAMES = ("iffim", "trak", "if_explicit", "if_cg", "if_lissa", "tracin", "grad_dot", "grad_cos", "logra")
#: the attributors whose λ the selector and its rules choose (their one definition: the selector and
#: :mod:`dahp.selection.rules` import it)
SELECTABLE_ATTRIBUTORS = ("iffim", "trak")
