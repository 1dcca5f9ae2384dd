"""Numbers and texts published with the paper, in one place: what our results are compared with.

Nothing here is computed; every value is copied from the paper, its appendix or its poster and says
where it comes from.
"""

from __future__ import annotations

#: Published default λ of each attributor on its own scale: dattri's TRAK uses 0; IFFIM has no
#: published default and borrows IF explicit's 1e-5 (the same mean-loss scale).
PUBLISHED_DEFAULTS: dict[str, float] = {"iffim": 1e-5, "trak": 0.0}
