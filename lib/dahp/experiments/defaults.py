"""Table A.1 from the code: every attributor's hyperparameters and defaults, and the training recipes.

Book: "Table A.1".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from dahp.attribution.attributors import defaults_table
from dahp.data.settings import available_settings, get_setting
from dahp.experiments.profiles import profiles_table


@dataclasses.dataclass
class DefaultsRecord:
    """Table A.1 and the training recipes, generated from the code's records."""

    defaults: pd.DataFrame
    recipes: pd.DataFrame
    profiles: pd.DataFrame
    profile: str | None = None

    def save(self, folder: Path) -> Path:
        """Write ``table_a1_defaults.csv``, ``training_recipes.csv`` and ``run_profiles.csv``."""
        self.defaults.to_csv(folder / "table_a1_defaults.csv", index=False)
        self.recipes.to_csv(folder / "training_recipes.csv", index=False)
        self.profiles.to_csv(folder / "run_profiles.csv")
        return folder / "table_a1_defaults.csv"


def table_a1(profile: str | None = None) -> DefaultsRecord:
    """Table A.1 from the code's records: every attributor's defaults, every setting's training recipe and
    every run profile's sizes (``profile`` only names the record's results folder)."""
    recipes = pd.DataFrame([{"setting": name, **get_setting(name).recipe.as_dict()} for name in available_settings()])
    return DefaultsRecord(defaults_table(), recipes, profiles_table(), profile)
