"""CPU numbers pinned before ``device`` was threaded through the package.

The constants below were computed with the code at commit 09a7728 (before any long computation
took a ``device``), on the embedded MNIST data: a small sensitivity grid of IFFIM and TRAK on
``mnist_lr`` (400 training points, 2 epochs), with a ground truth of 8 retrained models. The
LDS is a rank statistic, so it is exact to well below 1e-10 wherever the scores keep their order;
the code must reproduce it on the CPU whatever the device plumbing around it.

The grid runs on ONE torch thread. How a reduction is split over threads changes the last bits of
the scores, and that can swap two nearly tied ranks: on the two-core development machine the
constants came out at 1, 2, 3 and 8 threads, but at 4 threads TRAK at (256, 1e-3) gave an LDS mean of
0.1406666666666667 instead of 0.14071428571428574. One thread makes the pin independent of how many
cores the machine has and of what earlier tests did to torch's thread count.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from dahp.core.config import GroundTruthConfig
from dahp.experiments.grid import make_grid_spec, run_grid
from helpers import registered, small

TRUTH = GroundTruthConfig(n_models=8, models_per_chunk=8)
PROJ_DIMS = [128, 256, None]
LAMBDAS = {"iffim": [1e-4, 1e-2, 1.0], "trak": [1e-3, 1e-1, 10.0]}
FIXED = {"iffim": {}, "trak": {"ensemble_size": 2}}

#: The torch intra-op thread count the grid runs on (see the module docstring).
PINNED_THREADS = 1

#: (attributor, proj_dim, λ) -> (LDS mean, LDS standard error), computed at 09a7728.
PINNED: dict[tuple[str, int | None, float], tuple[float, float]] = {
    ("iffim", 128, 0.0001): (0.19166666666666668, 0.01663765487162151),
    ("iffim", 128, 0.01): (0.19490476190476186, 0.01664365936155709),
    ("iffim", 128, 1.0): (0.2369047619047619, 0.016612644716121377),
    ("iffim", 256, 0.0001): (0.08747619047619049, 0.017018017702815413),
    ("iffim", 256, 0.01): (0.15504761904761905, 0.01749875291986789),
    ("iffim", 256, 1.0): (0.24166666666666667, 0.016904546852232),
    ("iffim", None, 0.0001): (0.1049047619047619, 0.017011255286697245),
    ("iffim", None, 0.01): (0.22204761904761905, 0.017902897262975708),
    ("iffim", None, 1.0): (0.3011428571428571, 0.015618554173739205),
    ("trak", 128, 0.001): (0.18928571428571428, 0.01694978205657763),
    ("trak", 128, 0.1): (0.2181904761904762, 0.0164317245688214),
    ("trak", 128, 10.0): (0.3023333333333333, 0.015700340971732965),
    ("trak", 256, 0.001): (0.14071428571428574, 0.01652537481451523),
    ("trak", 256, 0.1): (0.2350952380952381, 0.01666871567299202),
    ("trak", 256, 10.0): (0.31876190476190475, 0.015983271306881156),
    ("trak", None, 0.001): (0.1710952380952381, 0.01801636884724051),
    ("trak", None, 0.1): (0.2647619047619047, 0.016359402332293146),
    ("trak", None, 10.0): (0.3097142857142857, 0.01601673108108051),
}


def pin_setting() -> str:
    return registered(small("mnist_lr"), "mnist_lr_small_pin_quick")


def grid_values(attributor: str, **run) -> dict[tuple[str, int | None, float], tuple[float, float]]:
    """``(attributor, proj_dim, λ) -> (mean, sem)`` of the pinned grid of ``attributor``."""
    spec = make_grid_spec(
        pin_setting(),
        attributor,
        {"proj_dim": PROJ_DIMS, "regularization": LAMBDAS[attributor]},
        FIXED[attributor],
        ground_truth_config=TRUTH,
    )
    table = run_grid(spec, progress=False, **run).table
    return {
        (attributor, None if pd.isna(row.proj_dim) else int(row.proj_dim), float(row.regularization)): (
            float(row.lds_mean),
            float(row.lds_sem),
        )
        for row in table.itertuples()
    }


@pytest.mark.parametrize("attributor", ["iffim", "trak"])
def test_cpu_grid_reproduces_the_numbers_pinned_before_the_device_change(attributor):
    """The grid on PINNED_THREADS torch threads (conftest puts the thread count back afterwards)."""
    torch.set_num_threads(PINNED_THREADS)
    found = grid_values(attributor)
    expected = {key: value for key, value in PINNED.items() if key[0] == attributor}
    assert set(found) == set(expected)
    for key, (mean, sem) in expected.items():
        assert found[key][0] == pytest.approx(mean, rel=1e-10, abs=1e-12), key
        assert found[key][1] == pytest.approx(sem, rel=1e-10, abs=1e-12), key
