"""The figures' λ axes come from dahp.attribution.scales.sweep and equal the expressions the pages used to
spell out themselves (so moving them changed no cache key and no number)."""

from pathlib import Path

import numpy as np
import pytest

from dahp.attribution.scales import SWEEPS, sweep
from dahp.core.config import InvalidParameterError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("n", [3, 7, 13])
def test_sweeps_equal_the_pages_former_expressions(n):
    assert sweep("fig1a_cg", n) == sorted({1e-4, 1e-2, *np.logspace(-4, 0, n).round(12)})
    assert sweep("fig1b_trak", n) == [0.0, *np.logspace(-4, 2, n - 1)]
    assert sweep("fig4_if_explicit", n) == list(np.logspace(-6, 2, n))
    assert sweep("theorem_real", n) == list(np.logspace(-6, 2, n))
    # fixed axes ignore the profile's size
    assert sweep("fig1f_logra", n) == list(np.logspace(-5, 1, 7))
    assert sweep("theorem_planted", n) == list(np.logspace(-4, 2, 25))
    assert sweep("walkthrough") == [float(v) for v in np.logspace(-7, 2, 19)]


def test_anchors_are_on_the_axis_once():
    values = sweep("fig1a_cg", 5)  # 1e-4 .. 1e0 at one decade each: both anchors are grid points
    assert values.count(1e-4) == 1 and values.count(1e-2) == 1 and values == sorted(values)
    assert {1e-4, 1e-2} <= set(sweep("fig1a_cg", 4))  # 4 points miss 1e-2: the anchor is added


def test_bad_sweeps_are_refused():
    with pytest.raises(InvalidParameterError, match="sweep"):
        sweep("fig9")
    with pytest.raises(InvalidParameterError, match="n_points"):
        sweep("fig1b_trak")  # the profile must give the size of this axis
    with pytest.raises(InvalidParameterError, match="n_points"):
        sweep("fig4_if_explicit", 1)


def test_no_page_spells_out_a_lambda_grid():
    spelled = [p.name for p in NOTEBOOKS.glob("*.md") if "logspace" in p.read_text() or "geomspace" in p.read_text()]
    assert spelled == [], "λ axes belong in dahp.attribution.scales.SWEEPS"
    used = {name for p in NOTEBOOKS.glob("*.md") for name in SWEEPS if f'sweep("{name}"' in p.read_text()}
    assert used == set(SWEEPS), f"sweeps no page uses: {set(SWEEPS) - used}"
