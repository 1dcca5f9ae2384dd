"""Figures in one consistent style, readable in print (seaborn "paper" context, large labels).

Captions go in the notebooks' cell metadata, not in titles; every λ axis names its scale.

Book: every figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

if TYPE_CHECKING:  # the records are only read here; importing them would load the experiments with every plot
    from dahp.experiments.grid import GridRecord
    from dahp.experiments.learned import LearnedAblationRecord, LearnedWeightsRecord


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


# --------------------------------------------------------------------------------------------
# One function per kind of figure the pages draw


def grid_panels(panels: Mapping[str, GridRecord | None], n_columns: int = 3, x_label: str = "") -> plt.Figure:
    """One panel per grid, titled by its key: the mean LDS against the grid's first varied hyperparameter,
    one line per value of the second (if any). A key mapped to None gets a "not run here" panel.

    λ is drawn on a log axis; a projection dimension and any value that is missing or not a number are
    drawn as categories (a missing projection reads "full gradients").
    """
    fig, axes = panel_grid(len(panels), n_columns=n_columns)
    for ax, (title, record) in zip(axes, panels.items()):
        if record is None:
            not_run_panel(ax, title)
            continue
        names, table = record.varied, record.table
        x, hue = names[0], (names[1] if len(names) > 1 else None)
        numeric = table[x].dtype.kind in "if" and table[x].notna().all() and x != "proj_dim"
        shown = table if numeric else table.assign(**{x: category_labels(table[x], "full gradients")})
        lds_lines(shown, x, hue=hue, x_label=x_label, log_x=x == "regularization", ax=ax)
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def theorem_curves(by_lambda: pd.DataFrame) -> plt.Figure:
    """The theory check on real data against λ: mean ξ, mean ω̂ and the share of queries whose LDS rises
    (``by_lambda``: :meth:`dahp.experiments.theorem.TheoremRecord.real_by_lambda`)."""
    use_style()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogx(by_lambda.index, by_lambda.mean_xi, "o-", label="mean ξ (trained model only)")
    ax.semilogx(by_lambda.index, by_lambda.mean_omega, "s-", label="mean ω̂ (β̂ from retraining)")
    ax.semilogx(by_lambda.index, by_lambda.lds_rises_share, "^:", label="share of queries whose LDS rises")
    ax.set_xlabel("λ (IFFIM, mean-loss scale)")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def learned_group_weights(record: LearnedWeightsRecord, names: Mapping[str, str]) -> plt.Figure:
    """The learned weight of every parameter group (1 = uniform), one panel per (setting, attributor), at
    the λ where the learned weighting's test LDS is highest; ``names``: attributor -> its label."""
    head = record.headline()
    fig, axes = panel_grid(len(record.cases), n_columns=3)
    for ax, (setting, attributor) in zip(axes, record.cases):
        lam = head[record.label(setting, attributor)]["lambda_learned"]
        weights = record.weights_at(setting, attributor, lam)
        ax.bar(range(len(weights)), weights.to_numpy(), color="tab:blue")
        ax.axhline(1.0, color="black", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(weights)), weights.index, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{setting}, {names[attributor]}" + ("" if lam is None else f", λ={lam:.2g}"), fontsize=10)
        ax.set_ylabel("weight (1 = uniform)")
    fig.tight_layout()
    return fig


#: Colour of each weighting in the learned-weights figures.
WEIGHTING_COLOURS = {"uniform": "grey", "learned": "tab:blue"}


def weighting_bars(record: LearnedWeightsRecord, names: Mapping[str, str]) -> plt.Figure:
    """Test LDS with uniform and with learned weights, each at its own best λ (± one standard error), one
    pair of bars per (setting, attributor); ``names``: attributor -> its label."""
    head = record.headline()
    fig, axes = panel_grid(1, n_columns=1, size=(9.0, 3.8))
    ax = axes[0]
    labels = [record.label(s, a) for s, a in record.cases]
    x = np.arange(len(labels))
    for offset, weighting in ((-0.2, "uniform"), (0.2, "learned")):
        estimates = [head[key][f"lds_{weighting}"] for key in labels]
        ax.bar(
            x + offset,
            [e.value for e in estimates],
            width=0.4,
            yerr=[e.se for e in estimates],
            capsize=3,
            color=WEIGHTING_COLOURS[weighting],
            label=weighting,
        )
    ax.set_xticks(x, [f"{s}\n{names[a]}" for s, a in record.cases], fontsize=9)
    ax.set_ylabel("test LDS")
    ax.legend()
    fig.tight_layout()
    return fig


def weighting_curves(record: LearnedWeightsRecord, names: Mapping[str, str]) -> plt.Figure:
    """Test LDS against λ with uniform and with learned weights (± one standard error), one panel per case
    that has a λ (Grad-Dot has none); vertical lines at the ξ rule's pick for each weighting (dashed grey:
    uniform, solid blue: learned). ``names``: attributor -> its label."""
    head = record.headline()
    spectral = [(s, a) for s, a in record.cases if a != "grad_dot"]
    fig, axes = panel_grid(max(len(spectral), 1), n_columns=2)
    for ax, (setting, attributor) in zip(axes, spectral):
        grid = record.grid(setting, attributor)
        for weighting, colour in WEIGHTING_COLOURS.items():
            curve = [record.lds(setting, attributor, lam, weighting) for lam in grid]
            ax.errorbar(
                grid,
                [e.value for e in curve],
                yerr=[e.se for e in curve],
                fmt="o-",
                color=colour,
                markersize=3,
                capsize=2,
                label=weighting,
            )
        xi = head[record.label(setting, attributor)].get("xi")
        if xi:
            ax.axvline(xi["lambda_uniform"], color="grey", linestyle="--", linewidth=1.2)
            ax.axvline(xi["lambda_learned"], color="tab:blue", linewidth=1.2)
        ax.set_xscale("log")
        ax.set_xlabel(f"λ ({names[attributor]} scale)")
        ax.set_ylabel("test LDS")
        ax.set_title(f"{setting}, {names[attributor]}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def predicted_against_actual(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> plt.Figure:
    """One scatter per title of ``pairs`` (title -> (predicted, actual) changes), side by side, with the
    line "prediction = actual" dashed; the walkthrough's influence against leave-one-out."""
    use_style()
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.8 * len(pairs), 4.2), squeeze=False)
    axes = list(axes.ravel())
    for ax, (title, (predicted, actual)) in zip(axes, pairs.items()):
        ax.scatter(predicted, actual, s=12, alpha=0.6)
        low, high = min(predicted.min(), actual.min()), max(predicted.max(), actual.max())
        ax.plot([low, high], [low, high], "k--", linewidth=1)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("predicted change (influence)")
    axes[0].set_ylabel("actual change (refit)")
    fig.tight_layout()
    return fig


def lds_and_xi_bar(
    grid: Sequence[float],
    lds_mean: Sequence[float],
    lds_se: Sequence[float],
    xi_bar: Sequence[float],
    pick: float,
    lambda_scale: str,
) -> plt.Figure:
    """Mean LDS (± one standard error, needs retraining) and ξ̄ (needs only the trained model) against λ
    on a log axis, with a vertical line at Algorithm 1's pick; ``lambda_scale`` names λ's scale."""
    use_style()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.errorbar(grid, lds_mean, yerr=lds_se, marker="o", capsize=3, label="mean LDS (retraining)")
    ax.plot(grid, xi_bar, "s--", label="ξ̄ (trained model only)")
    ax.axvline(pick, color="tab:red", label="Algorithm 1 pick")
    ax.set_xscale("log")
    ax.set_xlabel(f"λ ({lambda_scale})")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def learned_check_differences(
    checks: LearnedAblationRecord, names: Mapping[str, str], order: Sequence[str]
) -> plt.Figure:
    """Learned minus uniform test LDS (± two paired standard errors) of every row of the checks in ``order``
    (check names), one panel per (setting, attributor); the study's own configuration in black.
    ``names``: attributor -> its label."""
    use_style()
    table = checks.table()
    base = checks.config.get("weights", {})
    own = {
        ("grouping", base.get("grouping")),
        ("projection", base.get("projection")),
        ("k", str(base.get("k"))),
        ("signal", base.get("signal")),
        ("labels", base.get("labels")),
        ("fit", f"{base.get('steps')} steps at lr {base.get('lr', 0):g}"),
        ("weight_penalty", f"{base.get('weight_penalty', 0.0):g}"),
    }
    cases = checks.cases
    fig, axes = panel_grid(len(cases), n_columns=3, size=(4.6, 0.28 * 20 + 1.2))
    for ax, (setting, attributor) in zip(axes, cases):
        rows = table[(table.setting == setting) & (table.attributor == attributor) & table.check.isin(order)]
        rows = rows.assign(rank=rows.check.map({c: i for i, c in enumerate(order)})).sort_values("rank", kind="stable")
        y = np.arange(len(rows))[::-1]
        colours = ["black" if (c, v) in own else "tab:blue" for c, v in zip(rows.check, rows.value)]
        for yi, d, se, colour in zip(y, rows.difference, rows.difference_se, colours):
            ax.errorbar([d], [yi], xerr=[2 * se], fmt="o", color=colour, markersize=3, capsize=2)
        ax.axvline(0.0, color="grey", linestyle=":", linewidth=1)
        ax.set_yticks(y, [f"{c}: {v}" for c, v in zip(rows.check, rows.value)], fontsize=7)
        ax.set_xlabel("learned − uniform test LDS")
        ax.set_title(f"{setting}, {names[attributor]}", fontsize=10)
    fig.tight_layout()
    return fig


def learned_fit_trace(checks: LearnedAblationRecord, names: Mapping[str, str], trace: str = "fit_trace") -> plt.Figure:
    """Test LDS (± one standard error) after each recorded step of the study's fit (step 0: uniform weights),
    one line per (setting, attributor); ``names``: attributor -> its label."""
    use_style()
    fig, axes = panel_grid(1, n_columns=1, size=(7.0, 4.0))
    ax = axes[0]
    for setting, attributor in checks.cases:
        steps = [int(v) for v in checks.values(setting, attributor, trace)]
        if not steps:
            continue
        rows = [checks.row(setting, attributor, trace, str(s))["learned"] for s in steps]
        x = [max(s, 0.5) for s in steps]  # step 0 drawn at 0.5 on the log axis
        ax.errorbar(
            x,
            [e.value for e in rows],
            yerr=[e.se for e in rows],
            fmt="o-",
            markersize=3,
            capsize=2,
            label=f"{setting}, {names[attributor]}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("Adam steps of the fit (0 drawn at 0.5: uniform weights)")
    ax.set_ylabel("test LDS")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
