"""The reproduction-status rules on hand-made result tables."""

import json

import numpy as np
import pandas as pd

from dahp.selection import json_list
from dahp.status import COLUMNS, c1, c3, c8, c9, local_maxima, reproduction_status


def test_local_maxima_counts_peaks_including_the_ends_and_ignores_small_wiggles():
    assert local_maxima(np.array([0.1, 0.3, 0.5, 0.4, 0.2])) == 1
    assert local_maxima(np.array([0.1, 0.3, 0.5, 0.6, 0.7])) == 1  # rising to the last point
    assert local_maxima(np.array([0.5, 0.3, 0.5, 0.2])) == 2  # falls first (left end), then a peak
    assert local_maxima(np.array([0.1, 0.5, 0.501, 0.499, 0.2])) == 1
    assert local_maxima(np.array([0.3, 0.3, 0.3])) == 1


def _grid(folder, stem, rows, n_queries=None):
    pd.DataFrame(rows).to_csv(folder / f"{stem}.csv", index=False)
    (folder / f"{stem}.json").write_text(json.dumps({"n_queries": n_queries}))


def test_c1_ratio_rule(tmp_path):
    _grid(tmp_path, "grid_mnist_mlp_if_cg_regularization",
          [{"regularization": 1e-4, "lds_mean": 0.1}, {"regularization": 1e-2, "lds_mean": 0.3}], 20)
    row = c1(tmp_path)
    assert row["holds"] == "holds" and "ratio 3.00" in row["ours"] and "20 test queries" in row["ours"]
    _grid(tmp_path, "grid_mnist_mlp_if_cg_regularization",
          [{"regularization": 1e-4, "lds_mean": 0.3}, {"regularization": 1e-2, "lds_mean": 0.25}])
    assert c1(tmp_path)["holds"] == "does not hold"


def test_c3_entanglement_rule(tmp_path):
    rows = [{"proj_dim": d, "regularization": lam, "lds_mean": v}
            for d, values in {256: (0.25, 0.26), 4096: (0.07, 0.37)}.items() for lam, v in zip((0.0, 0.1), values)]
    _grid(tmp_path, "grid_mnist_mlp_trak_proj_dim_regularization", rows)
    assert c3(tmp_path)["holds"] == "holds"
    rows[3]["lds_mean"] = 0.2  # tuned λ no longer rescues the large projection
    _grid(tmp_path, "grid_mnist_mlp_trak_proj_dim_regularization", rows)
    assert c3(tmp_path)["holds"] == "holds in part"


def _selection(folder, rows):
    base = {"attributor": "iffim", "status": "ok", "proj_dim": None, "grid": json_list([1e-3, 1e-2, 1e-1]),
            "xi_seconds": 1.0, "grid_search_seconds": 10.0, "lds_xi0.4": 0.5, "lds_xi0.6": 0.5}
    pd.DataFrame([{**base, **r} for r in rows]).to_csv(folder / "lambda_selection_iffim.csv", index=False)


def test_c8_and_c9_rules(tmp_path):
    _selection(tmp_path, [
        {"setting": "a", "lds_selected": 0.68, "lds_best": 0.70, "lds_default": 0.15, "lds_q0.5": 0.69, "lds_q0.9": 0.2,
         "lds_grid": json_list([0.2, 0.7, 0.6])},
        {"setting": "b", "lds_selected": 0.30, "lds_best": 0.40, "lds_default": 0.35, "lds_q0.5": 0.1, "lds_q0.9": 0.39,
         "lds_grid": json_list([0.2, 0.4, 0.3])},
    ])
    row = c8(tmp_path)
    assert row["holds"] == "holds in part" and "a full: 0.97 of best, +0.530 vs default" in row["ours"]
    assert c9(tmp_path)["holds"] == "holds"  # q0.5 fails on b, q0.9 fails on a


def test_every_claim_reports_not_run_without_results(tmp_path):
    table = reproduction_status(tmp_path)
    assert list(table.columns) == list(COLUMNS)
    assert list(table.claim) == [f"C{k}" for k in range(1, 13)]
    assert set(table.holds) == {"not run here"}
