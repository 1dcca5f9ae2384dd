"""Run profiles: how big each notebook's experiment is (``quick`` for CI, ``default`` for the book
on a CPU, ``paper`` for the paper's sizes on a GPU machine).

``default`` is sized so that the whole book builds in about a quarter of an hour on a two-core CPU
from a fresh clone: fewer retrained models (M = 12; every LDS is stated with its standard error, so
the smaller M shows as wider intervals, not as a different estimate), a TRAK ensemble of 2, and the
settings that retrain the most (Fig 6's α study and the removal table on ``mnist_mlp``) left to the
``paper`` profile, where every page runs at the paper's sizes.

A notebook takes ``profile`` as a papermill parameter and reads its sizes from here, so the sizes
live in one place and the book's defaults table can be generated from them.

Book: "Table A.1" (the sizes of every profile), "Rerun it".
"""

from __future__ import annotations

import dataclasses

from dahp.core.config import InvalidParameterError, field_help, option


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes of the experiments behind the figures."""

    name: str
    n_models: int = option(help="retrained models of the LDS ground truth (M)")
    trak_ensemble: int = option(help="TRAK ensemble size")
    proj_dims: tuple[int, ...] = option(help="projection dimensions of the 2-D grids (Fig 1b, TracIn in Fig 4)")
    n_lambdas: int = option(help="points of each λ grid of the closed-form attributors (log-spaced)")
    n_queries: int | None = option(help="test queries of the closed-form attributors (None: all 500)")
    rerun_queries: int = option(
        help="test queries of the attributors dattri reruns per setting (CG, LiSSA, TracIn, LoGra)"
    )
    rerun_lambdas: int = option(help="points of the λ grid of an attributor dattri reruns per λ")
    lissa_scalings: tuple[float, ...] = option(help="LiSSA scaling values (Fig 1d)")
    lissa_depths: tuple[int, ...] = option(help="LiSSA recursion depths (Fig 1d)")
    epochs: tuple[int, ...] = option(help="training epochs attributed (Fig 1e, Fig 4); the last epoch is always added")
    cg_iterations: tuple[int, ...] = option(help="CG max-iteration values (Fig 4)")
    hessian_epochs: tuple[int, ...] = option(
        help="earlier epochs at which IF explicit factorizes the exact Hessian (Fig 4)"
    )
    removal_seeds: int = option(help="retraining seeds per cell of the removal table")
    removal_settings: tuple[str, ...] = option(
        help="settings of the removal table at this size (the poster's numbers are on mnist_lr; the page lists the rest)"
    )
    alpha_settings: tuple[str, ...] = option(
        help="settings whose cases Fig 6 runs at this size (every α retrains M models; the page lists the rest)"
    )
    learned_lambdas: int = option(
        help="λ per IFFIM / TRAK case of the learned-weights study (weights fitted once per λ; log-spaced)"
    )
    learned_fit_queries: int | None = option(
        help="validation queries the group weights are fitted on (None: all 500; evenly spaced)"
    )
    learned_select_queries: int | None = option(
        help="other validation queries the learned-weights checks are also judged on (None: all the rest; 0: none)"
    )
    learned_test_queries: int | None = option(
        help="test queries the learned-weights study and checks are judged on (None: all 500; evenly spaced)"
    )
    learned_trak_ensemble: int = option(help="TRAK ensemble size of the learned-weights study and checks")
    learned_iffim_proj_dim: int | None = option(
        help="IFFIM's random projection in the learned-weights study on large settings (None: unprojected)"
    )
    learned_iffim_project_from: int = option(
        help="parameter count from which the learned-weights study projects IFFIM (smaller settings: unprojected)"
    )
    learned_left_out: tuple[str, ...] = option(
        help="cases '<setting> <attributor>' of the learned-weights study not run at this size (the page lists them)"
    )
    learned_ablation_ks: tuple[int, ...] = option(
        help="k (top-k pseudo-positives) of the learned weights' ablations (one fit per value and case)"
    )
    learned_ablation_penalties: tuple[float, ...] = option(
        help="λ_w (penalty pulling the weights toward uniform) of the learned weights' ablations"
    )
    suite: str = option(
        help="problems of the robustness suite: ``quick`` (a handful), ``small`` (a few per family) or ``default`` (all)"
    )
    suite_models: int = option(help="retrained models (M) of each robustness-suite problem's ground truth")
    suite_trak_ensemble: int = option(help="TRAK ensemble size on the robustness suite")


PROFILES = {
    "quick": Profile(
        "quick",
        n_models=6,
        trak_ensemble=2,
        proj_dims=(128, 256),
        n_lambdas=5,
        n_queries=100,
        rerun_queries=4,
        rerun_lambdas=2,
        lissa_scalings=(5.0, 25.0),
        lissa_depths=(5, 10),
        epochs=(1,),
        cg_iterations=(2, 10),
        hessian_epochs=(),
        removal_seeds=2,
        removal_settings=("mnist_lr",),
        alpha_settings=("mnist_lr",),
        learned_lambdas=3,
        learned_fit_queries=20,
        learned_select_queries=20,
        learned_test_queries=100,
        learned_trak_ensemble=1,
        learned_iffim_proj_dim=256,
        learned_iffim_project_from=0,
        learned_left_out=(),
        learned_ablation_ks=(5, 10),
        learned_ablation_penalties=(0.0, 1e-2),
        suite="quick",
        suite_models=10,
        suite_trak_ensemble=2,
    ),
    "default": Profile(
        "default",
        n_models=12,
        trak_ensemble=2,
        proj_dims=(256, 512, 1024),
        n_lambdas=9,
        n_queries=None,
        rerun_queries=10,
        rerun_lambdas=3,
        lissa_scalings=(1.0, 25.0),
        lissa_depths=(10, 30),
        epochs=(1, 10),
        cg_iterations=(2, 10),
        hessian_epochs=(),
        removal_seeds=2,
        removal_settings=("mnist_lr",),
        alpha_settings=("mnist_lr",),
        learned_lambdas=3,
        learned_fit_queries=100,
        learned_select_queries=100,
        learned_test_queries=None,
        learned_trak_ensemble=1,
        learned_iffim_proj_dim=512,
        learned_iffim_project_from=0,
        learned_left_out=(),
        learned_ablation_ks=(1, 10, 100),
        learned_ablation_penalties=(0.0, 1e-2),
        suite="quick",
        suite_models=12,
        suite_trak_ensemble=2,
    ),
    "paper": Profile(
        "paper",
        n_models=50,
        trak_ensemble=10,
        proj_dims=(256, 512, 1024, 2048, 4096, 8192),
        n_lambdas=33,
        n_queries=None,
        rerun_queries=500,
        rerun_lambdas=9,
        lissa_scalings=(1.0, 5.0, 25.0, 125.0),
        lissa_depths=(100, 300, 1000),
        epochs=(1, 2, 5, 10, 20, 30, 40),
        cg_iterations=(2, 5, 10, 20, 50),
        hessian_epochs=(1, 5, 10),
        removal_seeds=5,
        removal_settings=("mnist_lr", "mnist_mlp", "cifar2_resnet9"),
        alpha_settings=("mnist_lr", "mnist_mlp", "cifar2_resnet9", "maestro_mt"),
        learned_lambdas=9,
        learned_fit_queries=250,
        learned_select_queries=None,
        learned_test_queries=None,
        learned_trak_ensemble=10,
        learned_iffim_proj_dim=None,
        learned_iffim_project_from=0,
        learned_left_out=(),
        learned_ablation_ks=(1, 5, 10, 20, 50, 100),
        learned_ablation_penalties=(0.0, 1e-3, 1e-2),
        suite="default",
        suite_models=50,
        suite_trak_ensemble=10,
    ),
}


def epochs_to_attribute(profile: Profile, trained_epochs: int) -> list[int]:
    """The profile's epochs that exist for a model trained ``trained_epochs`` epochs, plus the last."""
    return sorted({e for e in profile.epochs if e < trained_epochs} | {trained_epochs})


def profiles_table():
    """Every profile's sizes, one column per profile (the book's "Rerun it" chapter shows it)."""
    import pandas as pd

    rows = {
        p.name: {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "name"}
        for p in PROFILES.values()
    }
    table = pd.DataFrame(rows)
    meaning = field_help(Profile)
    table.insert(0, "meaning", [meaning[name] for name in table.index])
    return table


def get_profile(name: str) -> Profile:
    """The profile called ``name``."""
    if name not in PROFILES:
        raise InvalidParameterError("profile", name, list(PROFILES))
    return PROFILES[name]
