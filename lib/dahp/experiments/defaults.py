"""Table A.1 from the code: every attributor's hyperparameters and defaults, and the training recipes.

Book: "Table A.1".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd


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
