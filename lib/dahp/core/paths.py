"""Where the package reads and writes: the repository root, the data directory.

Every other module asks here, so that ``$DAHP_DATA_DIR`` means the same thing everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (this file is ``lib/dahp/core/paths.py``).
REPO_ROOT = Path(__file__).resolve().parents[3]


def data_dir() -> Path:
    """The data directory: ``$DAHP_DATA_DIR`` if set, else ``data/`` at the repository root."""
    env = os.environ.get("DAHP_DATA_DIR")
    if env:
        return Path(env)
    return REPO_ROOT / "data"
