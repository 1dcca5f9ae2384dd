"""Figures in one consistent style, readable in print (seaborn "paper" context, large labels).

Captions go in the notebooks' cell metadata, not in titles; every λ axis names its scale.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def use_style() -> None:
    """The book's figure style."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.3)


def lds_heatmap(table: pd.DataFrame, rows: str, columns: str, lambda_scale: str = "") -> plt.Figure:
    """Heat-map of the mean LDS over a 2-D grid (rows × columns), annotated with the values."""
    use_style()
    pivot = table.pivot(index=rows, columns=columns, values="lds_mean")
    pivot.index = [f"{v:.2g}" for v in pivot.index] if pivot.index.dtype.kind == "f" else pivot.index
    fig, ax = plt.subplots(figsize=(1.1 * len(pivot.columns) + 2.5, 0.42 * len(pivot) + 1.8))
    sns.heatmap(pivot, annot=True, fmt=".2f", cmap="viridis", cbar_kws={"label": "LDS"}, ax=ax)
    ax.set_xlabel(columns.replace("_", " "))
    ax.set_ylabel(rows.replace("_", " ") + (f"\n({lambda_scale})" if lambda_scale else ""))
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: Path) -> Path:
    """Save a figure as PNG (150 dpi) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
