"""dahp: reproduction package for *Taming Hyperparameter Sensitivity in Data Attribution*.

Modules follow the concepts of the paper:

- :mod:`dahp.config`       -- configuration records and the one error type for bad input
- :mod:`dahp.settings`     -- named settings (data, model, recipe, target function)
- :mod:`dahp.targets`      -- the attribution target (the correct-class margin) and the loss
- :mod:`dahp.training`     -- full-data training with per-epoch checkpoints; many models at once
- :mod:`dahp.cache`        -- atomic, checksummed, keyed on-disk cache
- :mod:`dahp.ground_truth` -- retraining on random subsets (the LDS ground truth)
- :mod:`dahp.lds`          -- the linear datamodeling score
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
