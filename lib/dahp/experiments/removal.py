"""Data selection by removal (the poster's table): does a better λ find the points that matter?

Each attribution method ranks the training points by their total attribution to the test
queries (the sum of a row of the ``(n_train, n_test)`` scores; positive means the point raises
the queries' margins). The top ``rate`` of the ranking is removed, the model is retrained on the
rest with several seeds, and the test accuracy is recorded. A lower accuracy after removal means
the method found points the test set really depends on. ``Random`` removes a fresh uniformly
random subset per seed; ``Full`` removes nothing.

Retraining uses the setting's recipe and :func:`dahp.training.train_many` (all seeds of one cell
at once); every cell is cached by the ranking it removes, the rate and the seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from dahp.cache import Cache, default_cache
from dahp.config import InvalidParameterError
from dahp.settings import Setting
from dahp.training import accuracy_many, train_many

#: Removal rates of the poster's table.
REMOVAL_RATES = (0.1, 0.3, 0.5)

#: The poster's numbers (test accuracy in %, mean ± std), for the comparison column.
POSTER_TABLE = {
    "Full": [(88.63, 0.03)] * 3,
    "Random": [(88.52, 0.03), (88.06, 0.05), (87.60, 0.06)],
    "IFFIM default": [(88.44, 0.05), (87.77, 0.08), (87.58, 0.10)],
    "IFFIM selected": [(87.66, 0.04), (84.50, 0.04), (81.53, 0.06)],
    "TRAK default": [(88.53, 0.06), (87.92, 0.11), (86.88, 0.29)],
    "TRAK selected": [(87.30, 0.04), (83.84, 0.05), (80.12, 0.08)],
}


@dataclasses.dataclass(frozen=True)
class RemovalConfig:
    """The retraining behind one removal table."""

    rates: tuple[float, ...] = REMOVAL_RATES  #: fractions of the training set removed
    n_seeds: int = 5  #: retraining seeds per cell (mean ± std over them)
    seed: int = 0  #: first seed; cell seeds are ``1000 + seed + k`` (disjoint from the ground truth's)

    def __post_init__(self) -> None:
        if not self.rates or not all(isinstance(r, float) and 0 < r < 1 for r in self.rates):
            raise InvalidParameterError("rates", self.rates, "fractions strictly between 0 and 1")
        if not (isinstance(self.n_seeds, int) and self.n_seeds >= 1):
            raise InvalidParameterError("n_seeds", self.n_seeds, "an integer >= 1")

    def seeds(self) -> list[int]:
        """The retraining seeds of every cell."""
        return [1000 + self.seed + k for k in range(self.n_seeds)]


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Training indices from the highest total attribution to the queries to the lowest (stable)."""
    total = scores.double().sum(dim=1)
    return torch.from_numpy(np.argsort(-total.numpy(), kind="stable").copy())


def _digest(order: torch.Tensor | None) -> str:
    return "random" if order is None else hashlib.sha256(order.numpy().astype(np.int64).tobytes()).hexdigest()[:16]


def kept_index_sets(n_train: int, order: torch.Tensor | None, rate: float, seeds: Sequence[int]) -> torch.Tensor:
    """``(n_seeds, kept)`` training indices left after removing the top ``rate`` of ``order``
    (a fresh random subset per seed when ``order`` is None)."""
    n_removed = int(round(rate * n_train))
    rows = []
    for seed in seeds:
        if order is None:
            permutation = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
            rows.append(torch.sort(permutation[n_removed:]).values)
        else:
            rows.append(torch.sort(order[n_removed:]).values)
    return torch.stack(rows)


def retrained_accuracy(setting: Setting, index_sets: torch.Tensor, seeds: Sequence[int], key: dict,
                       cache: Cache | None = None) -> np.ndarray:
    """Test accuracy of models retrained on ``index_sets`` (one per seed), all trained in one batch
    and cached under ``key``."""
    cache = default_cache() if cache is None else cache
    data = setting.data()

    def compute() -> torch.Tensor:
        state = train_many(setting, data.x_train, data.y_train, index_sets, list(seeds), dropout_seed=seeds[0])
        return accuracy_many(setting, state, data.x_test, data.y_test)

    spec = {**setting.spec(), **key, "seeds": list(seeds), "n_kept": int(index_sets.shape[1])}
    return cache.get_or_compute("removal", spec, compute).numpy()


def removal_table(
    setting: Setting, methods: Mapping[str, torch.Tensor], config: RemovalConfig | None = None,
    cache: Cache | None = None, progress: bool = True,
) -> pd.DataFrame:
    """Accuracy after removal for ``Full``, ``Random`` and every method (name -> test scores).

    All cells of one removal rate keep the same number of points, so their models are trained in
    one batch (one cache entry per rate, keyed by every ranking in it). Returns one row per
    (method, rate): ``accuracy_mean`` and ``accuracy_std`` in %, the seeds' accuracies, and the
    poster's number for the same row where it has one.
    """
    config = config or RemovalConfig()
    n_train = setting.data().n_train
    for name, scores in methods.items():
        if scores.shape[0] != n_train:
            raise InvalidParameterError(f"scores of {name}", tuple(scores.shape), f"shape ({n_train}, n_queries)")
    orders: dict[str, torch.Tensor | None] = {"Random": None, **{name: ranking(s) for name, s in methods.items()}}
    seeds = config.seeds()
    everything = torch.arange(n_train).unsqueeze(0).repeat(len(seeds), 1)
    accuracy = {("Full", 0.0): 100 * retrained_accuracy(setting, everything, seeds, {"ranking": "full", "rate": 0.0}, cache)}
    for rate in tqdm(config.rates, desc=f"retraining {setting.name} after removal", disable=not progress):
        index_sets = torch.cat([kept_index_sets(n_train, order, rate, seeds) for order in orders.values()])
        key = {"rankings": [_digest(order) for order in orders.values()], "rate": rate}
        batch = 100 * retrained_accuracy(setting, index_sets, seeds * len(orders), key, cache)
        for k, name in enumerate(orders):
            accuracy[(name, rate)] = batch[k * len(seeds) : (k + 1) * len(seeds)]
    rows = []
    for (name, rate), values in accuracy.items():
        for shown in (config.rates if name == "Full" else (rate,)):
            paper = dict(zip(REMOVAL_RATES, POSTER_TABLE.get(name, []))).get(shown)
            rows.append({"setting": setting.name, "method": name, "removal_rate": shown,
                         "accuracy_mean": float(values.mean()),
                         "accuracy_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                         "n_seeds": len(values), "accuracies": [round(float(a), 2) for a in values],
                         "poster_mean": paper[0] if paper else np.nan, "poster_std": paper[1] if paper else np.nan})
    return pd.DataFrame(rows)


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """The table in the poster's layout: methods down, rates across, ``mean ± std`` (ours | poster)."""
    def cell(row: pd.Series) -> str:
        ours = f"{row.accuracy_mean:.2f} ± {row.accuracy_std:.2f}"
        return ours if np.isnan(row.poster_mean) else f"{ours}  ({row.poster_mean:.2f} ± {row.poster_std:.2f})"

    shown = table.assign(cell=table.apply(cell, axis=1), rate=(100 * table.removal_rate).round().astype(int).astype(str) + " %")
    methods = list(dict.fromkeys(table.method))
    return shown.pivot(index="method", columns="rate", values="cell").loc[methods]


def default_and_selected(
    setting: Setting, attributor: str, proj_dim: int | None, n_points: int = 33, ensemble_size: int | None = None,
    cache: Cache | None = None, progress: bool = False,
) -> dict[str, tuple[float, torch.Tensor]]:
    """Test scores of ``attributor`` at its published default λ and at the ξ-selected λ.

    Returns ``{"<label> default": (λ, scores), "<label> selected": (λ, scores)}``; the selection
    uses the validation queries only, as Algorithm 1 prescribes.
    """
    from dahp import attributors as attr
    from dahp.selection import PUBLISHED_DEFAULTS, default_grid, selection_params, xi_selection

    params = selection_params(attributor, proj_dim, ensemble_size)
    validation = attr.scorer(setting, attributor, params, "val", cache, progress)
    selected = xi_selection(validation.members, default_grid(setting, attributor, n_points)).grid_pick.regularization
    test = attr.scorer(setting, attributor, params, "test", cache, progress)
    label = attr.get_attributor(attributor).label
    default = PUBLISHED_DEFAULTS[attributor]
    return {f"{label} default": (default, test.scores(default)), f"{label} selected": (selected, test.scores(selected))}
