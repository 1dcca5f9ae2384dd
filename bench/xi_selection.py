"""ξ selection against the LDS grid search it replaces, on ``mnist_mlp`` (IFFIM, projected gradients).

Both start from the same trained full-data model and an otherwise empty cache, in one run:

- ξ selection: training-point and validation-query gradient features, one factorization, ξ̄ on the
  33-point grid and the bisection crossing;
- grid search: retraining the ``--models`` subset models of the LDS ground truth, test-query
  features, and the LDS at every grid point (it reuses the training features the ξ run built, so
  its time is the part that retraining-based selection adds).

Also printed: the marginal cost of ξ over what running the attributor needs anyway (validation
features and the ξ̄ curve, given the training features and factorization).

    python bench/xi_selection.py [--proj-dim 2048] [--models 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from dahp.attribution import attributors as attr
from dahp.attribution.lds import lds
from dahp.core.cache import Cache
from dahp.core.config import GroundTruthConfig
from dahp.data.settings import get_setting
from dahp.experiments.cases import default_grid
from dahp.selection.algorithm import select_continuous, select_on_grid, xi_bar_curve
from dahp.training.ground_truth import ground_truth
from dahp.training.train import train_full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proj-dim", type=int, default=2048)
    parser.add_argument("--models", type=int, default=50)
    args = parser.parse_args()
    setting = get_setting("mnist_mlp")
    params = attr.make_params("iffim", proj_dim=args.proj_dim)
    grid = default_grid(setting, "iffim")

    with tempfile.TemporaryDirectory() as folder:
        cache = Cache(folder)
        cache.save("checkpoints", {**setting.spec(), "seed": 0}, train_full(setting, 0).states)  # shared input

        started = time.perf_counter()
        members = attr.scorer(setting, "iffim", params, "val", cache, progress=False).members
        curve = xi_bar_curve(members, grid)
        pick = select_on_grid(curve, grid)
        select_continuous(members)
        xi_seconds = time.perf_counter() - started

        started = time.perf_counter()
        truth = ground_truth(setting, GroundTruthConfig(n_models=args.models), cache, progress=False)
        test = attr.scorer(setting, "iffim", params, "test", cache, progress=False)
        values = [lds(test.scores(lam), truth.targets("test"), truth.subsets).mean for lam in grid]
        grid_seconds = time.perf_counter() - started

        # marginal ξ cost: validation features (training features and factorization already cached)
        marginal_cache = Cache(folder)
        started = time.perf_counter()
        spec = {
            **attr.checkpoint_spec(setting, 0, setting.recipe.epochs),
            "split": "val",
            "kind": "target",
            "projection": {"dim": args.proj_dim, "seed": 0, "ensemble_id": 0},
        }
        marginal_cache.path("features", spec).unlink()
        members = attr.scorer(setting, "iffim", params, "val", marginal_cache, progress=False).members
        xi_bar_curve(members, grid)
        marginal_seconds = time.perf_counter() - started

    best = max(values)
    print(f"IFFIM on {setting.name}, proj_dim {args.proj_dim}, {len(grid)} candidate λ, {args.models} retrained models")
    print(f"ξ selection (features + factorization + ξ̄ + bisection): {xi_seconds:8.2f} s")
    print(f"  marginal ξ cost given the attributor's own features:   {marginal_seconds:8.2f} s")
    print(
        f"grid search (retraining + test features + {len(grid)} LDS):   {grid_seconds:8.2f} s "
        f"(retraining {truth.train_seconds:.2f} s)"
    )
    print(f"picked λ={pick.regularization:.3g} LDS {values[grid.index(pick.regularization)]:.3f}; best LDS {best:.3f}")
    print(f"RESULT xi_selection_speedup {grid_seconds / xi_seconds:.2f} goal 100")
    print(f"RESULT xi_selection_speedup_marginal {grid_seconds / marginal_seconds:.2f}")


if __name__ == "__main__":
    main()
