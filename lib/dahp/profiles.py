"""Run profiles: how big each notebook's experiment is (``quick`` for CI, ``default`` for the book
on a CPU, ``paper`` for the paper's sizes on a GPU machine).

A notebook takes ``profile`` as a papermill parameter and reads its sizes from here, so the sizes
live in one place and the book's defaults table can be generated from them.
"""

from __future__ import annotations

import dataclasses

from dahp.config import InvalidParameterError


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes of the experiments behind the figures."""

    name: str
    n_models: int  #: retrained models of the LDS ground truth (M)
    trak_ensemble: int  #: TRAK ensemble size
    proj_dims: tuple[int, ...]  #: projection dimensions of the Fig 1b grid
    n_lambdas: int  #: points of each λ grid (log-spaced)
    n_queries: int | None  #: test queries evaluated (None: all 500)


PROFILES = {
    "quick": Profile("quick", n_models=6, trak_ensemble=2, proj_dims=(128, 256), n_lambdas=5, n_queries=100),
    "default": Profile("default", n_models=50, trak_ensemble=10, proj_dims=(256, 512, 1024, 2048, 4096),
                       n_lambdas=17, n_queries=None),
    "paper": Profile("paper", n_models=50, trak_ensemble=10, proj_dims=(256, 512, 1024, 2048, 4096, 8192),
                     n_lambdas=33, n_queries=None),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``."""
    if name not in PROFILES:
        raise InvalidParameterError("profile", name, list(PROFILES))
    return PROFILES[name]
