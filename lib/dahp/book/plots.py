"""Figures in one consistent style, readable in print (seaborn "paper" context, large labels).

Captions go in the notebooks' cell metadata, not in titles; every λ axis names its scale.

Book: every figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


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


def lds_lines(
    table: pd.DataFrame,
    x: str,
    hue: str | None = None,
    x_label: str = "",
    log_x: bool = True,
    ax: plt.Axes | None = None,
) -> plt.Figure:
    """Mean LDS against one hyperparameter (± one standard error over queries), one line per ``hue``.

    A λ of 0 cannot sit on a log axis; it is drawn at a tenth of the smallest positive value and
    labelled ``0``.
    """
    use_style()
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4))
    data = table.copy()
    zero_at = None
    if log_x and (data[x] == 0).any():
        zero_at = data.loc[data[x] > 0, x].min() / 10
        data.loc[data[x] == 0, x] = zero_at
    groups = data.groupby(hue, dropna=False, sort=False) if hue else [(None, data)]
    numeric = data[x].dtype.kind in "if"
    for key, part in groups:
        part = part.sort_values(x) if numeric else part  # categories keep the grid's order
        positions = part[x] if numeric else range(len(part))
        ax.errorbar(
            positions,
            part.lds_mean,
            yerr=part.lds_sem,
            marker="o",
            capsize=3,
            label=None if hue is None else f"{hue.replace('_', ' ')} = {key}",
        )
        if not numeric:
            ax.set_xticks(list(positions), [str(v) for v in part[x]])
    if log_x and numeric:
        ax.set_xscale("log")
    if zero_at is not None:
        ticks = [t for t in ax.get_xticks() if t > zero_at * 3]
        ax.set_xticks([zero_at, *ticks], ["0", *[f"{t:.0e}" for t in ticks]])
        ax.set_xlim(zero_at / 2, data[x].max() * 2)
    ax.set_xlabel(x_label or x.replace("_", " "))
    ax.set_ylabel("LDS")
    if hue:
        ax.legend(fontsize=9)
    ax.figure.tight_layout()
    return ax.figure


def panel_grid(n_panels: int, n_columns: int = 3, size: tuple[float, float] = (4.6, 3.4)) -> tuple[plt.Figure, list]:
    """A figure with ``n_panels`` axes in rows of ``n_columns`` (spare axes hidden)."""
    use_style()
    n_rows = -(-n_panels // n_columns)
    columns = min(n_columns, n_panels)
    fig, axes = plt.subplots(n_rows, columns, figsize=(size[0] * columns, size[1] * n_rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def not_run_panel(ax: plt.Axes, title: str, reason: str = "data not supplied") -> None:
    """Mark a panel whose setting could not run here."""
    ax.text(0.5, 0.5, f"not run here:\n{reason}", ha="center", va="center", transform=ax.transAxes, fontsize=11)
    ax.set_title(title, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


def category_labels(values: pd.Series, none_label: str = "none") -> pd.Series:
    """Hyperparameter values as axis labels: missing -> ``none_label``, whole floats -> integers."""

    def label(value) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return none_label
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    return values.map(label)


def show(fig: plt.Figure, path: Path):
    """Save ``fig`` (:func:`save`) and return it as an image for the notebook to display.

    The library draws with the non-interactive Agg backend, so a notebook cannot show a figure
    object itself; it shows the PNG that was written, which is also what the book embeds.
    """
    from IPython.display import Image

    return Image(filename=str(save(fig, path)))
