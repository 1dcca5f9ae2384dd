"""A 20-point λ sweep from one factorization against dattri's attributor, on the same inputs.

Three timings in one run, all from a cold cache (features, factorization and dattri's own
gradients all computed inside the timed region):

1. our sweep: gradient features + one float64 eigendecomposition + scores at all 20 λ;
2. one ``cache()`` + ``attribute()`` of the matching dattri attributor at one λ;
3. dattri once per λ, as a sweep without the spectral form would run (``--per-lambda`` calls
   timed and, when fewer than 20, extrapolated linearly -- said so in the output).

    python bench/lambda_sweep.py [--setting mnist_mlp] [--proj-dim 512] [--per-lambda 20]

TRAK with one model (dattri's ``TRAKAttributor``) on the chosen setting; 4,000 training points
and 500 test queries.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from dahp.attribution import dattri_bridge
from dahp.attribution.attributors import TRAKParams, checkpoint_spec, trak_scorer
from dahp.core.cache import Cache
from dahp.data.settings import get_setting
from dahp.training.train import train_full

N_LAMBDAS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="mnist_mlp")
    parser.add_argument("--proj-dim", type=int, default=512)
    parser.add_argument(
        "--per-lambda", type=int, default=N_LAMBDAS, help="dattri calls actually timed for the per-λ figure"
    )
    args = parser.parse_args()

    setting = get_setting(args.setting)
    epoch = setting.recipe.epochs
    state = train_full(setting, 0).state(epoch)  # the trained model is shared input, outside the timings
    lambdas = [0.0, *np.logspace(-6, 2, N_LAMBDAS - 1)]
    params = TRAKParams(proj_dim=args.proj_dim, ensemble_size=1)

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        scorer = trak_scorer(setting, [state], [checkpoint_spec(setting, 0, epoch)], params, "test", Cache(folder))
        for lam in lambdas:
            scorer.scores(lam)
        sweep_seconds = time.perf_counter() - started

    started = time.perf_counter()
    dattri_bridge.run_trak(setting, [state], args.proj_dim, lambdas[0], "test")
    one_call_seconds = time.perf_counter() - started

    calls = max(1, min(args.per_lambda, N_LAMBDAS))
    started = time.perf_counter()
    for lam in lambdas[:calls]:
        dattri_bridge.run_trak(setting, [state], args.proj_dim, lam, "test")
    per_lambda_seconds = (time.perf_counter() - started) * N_LAMBDAS / calls
    note = "" if calls == N_LAMBDAS else f" (extrapolated from {calls} timed calls)"

    print(f"TRAK, {setting.name}, proj_dim {args.proj_dim}, one model, {N_LAMBDAS} λ values")
    print(f"our sweep (features + factorization + {N_LAMBDAS} λ): {sweep_seconds:8.2f} s")
    print(f"dattri, one cache()+attribute():               {one_call_seconds:8.2f} s")
    print(f"dattri, once per λ:                            {per_lambda_seconds:8.2f} s{note}")
    print(f"RESULT lambda_sweep_vs_one_call {sweep_seconds / one_call_seconds:.3f} goal 1.3")
    print(f"RESULT lambda_sweep_speedup_vs_per_lambda {per_lambda_seconds / sweep_seconds:.2f}")


if __name__ == "__main__":
    main()
