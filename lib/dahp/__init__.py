"""dahp: reproduction package for *Taming Hyperparameter Sensitivity in Data Attribution*.

The method -- modules named after the concepts of the paper:

- :mod:`dahp.config`       -- configuration records and the one error type for bad input
- :mod:`dahp.settings`     -- named settings (data, model, recipe, target function)
- :mod:`dahp.targets`      -- the attribution target (the correct-class margin) and the loss
- :mod:`dahp.training`     -- full-data training with per-epoch checkpoints; many models at once
- :mod:`dahp.device`       -- where long computations run (argument, $DAHP_DEVICE, CUDA if present)
- :mod:`dahp.cache`        -- atomic, checksummed, keyed on-disk cache
- :mod:`dahp.executors`    -- where independent trainings run: in-process, Dask, submitit (Slurm)
- :mod:`dahp.ground_truth` -- retraining on random subsets (the LDS ground truth)
- :mod:`dahp.lds`          -- the linear datamodeling score
- :mod:`dahp.features`     -- per-example gradient features, projected with dattri's projector, cached
- :mod:`dahp.spectral`     -- one eigendecomposition serves every λ (primal and dual forms)
- :mod:`dahp.attributors`  -- the attributors of the study and their hyperparameters (paper defaults)
- :mod:`dahp.dattri_bridge` -- dattri's own attributors on our settings (tasks, loaders, signs)
- :mod:`dahp.surrogate`    -- the surrogate indicator ξ, its partner ω, the exact condition
- :mod:`dahp.selection`    -- Algorithm 1 and the zero-cost baselines (pure rules)
- :mod:`dahp.selector`     -- λ for any ``dattri`` ``AttributionTask`` (for practitioners): no retraining, or a few
- :mod:`dahp.rules`        -- every rule for λ behind one interface: picks with diagnoses and costs
- :mod:`dahp.learned_weights` -- learned parameter-group weights (seed 002): per-group contributions, the top-k objective
- :mod:`dahp.suite`        -- the robustness suite: 34 small problems in five families, and their λ curves
- :mod:`dahp.profiles`     -- run sizes: quick (CI), default (the book on a CPU), paper
- :mod:`dahp.plan`         -- the book's plan: notebooks executed by papermill, skipped when unchanged
- :mod:`dahp.progress`     -- progress bars that reach the terminal of `make book`, not the pages
- :mod:`dahp.plots`        -- the figures' one style and shared figure helpers

The paper's experiments and their results -- :mod:`dahp.experiments`:

- :mod:`dahp.experiments.records` -- the results layer: one typed record per artifact, headline numbers
- :mod:`dahp.experiments.grid`    -- sensitivity grids (Fig 1, Fig 4)
- :mod:`dahp.experiments.cases`   -- λ-selection cases judged by the LDS (Fig 2, 3, 5, 6)
- :mod:`dahp.experiments.removal` -- data selection by removal (the poster's table)
- :mod:`dahp.experiments.theorem` -- Theorem 4.3 on planted problems and on real data
- :mod:`dahp.experiments.robustness` -- when does the selector work? every λ rule on every suite problem
- :mod:`dahp.experiments.status`  -- the reproduction status: every claim's verdict from the records
"""

from dahp.config import GroundTruthConfig, InvalidParameterError, TrainingRecipe
from dahp.lds import LDSResult, lds
from dahp.settings import available_settings, get_setting

__all__ = [
    "GroundTruthConfig",
    "InvalidParameterError",
    "LDSResult",
    "TrainingRecipe",
    "available_settings",
    "get_setting",
    "lds",
]
