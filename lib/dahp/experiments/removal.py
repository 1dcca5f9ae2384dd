"""Data selection by removal (the poster's table): does a better λ find the points that matter?

Each attribution method ranks the training points by their total attribution to the test
queries (the sum of a row of the ``(n_train, n_test)`` scores; positive means the point raises
the queries' margins). The top ``rate`` of the ranking is removed, the model is retrained on the
rest with several seeds, and the test accuracy is recorded. A lower accuracy after removal means
the method found points the test set really depends on. ``Random`` removes a fresh uniformly
random subset per seed; ``Full`` removes nothing.

Retraining uses the setting's recipe and :func:`dahp.training.train.train_many` (all seeds of one cell
at once); every cell is cached by the ranking it removes, the rate and the seeds -- not by the
``device`` the retraining runs on (:func:`dahp.core.device.resolve_device`).

Book: "Data selection by removal".
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dahp.core.cache import Cache, default_cache
from dahp.core.config import InvalidParameterError, option
from dahp.core.device import resolve_device
from dahp.core.published import POSTER_REMOVAL_RATES, POSTER_TABLE
from dahp.core.results import read_json, write_json
from dahp.core.statistics import Estimate, paired_difference, share_verdict
from dahp.data.settings import Setting, get_setting
from dahp.experiments.cases import PUBLISHED, SELECTED, case_scores
from dahp.training.executors import Executor, Task, resolve_executor, run_tasks
from dahp.training.train import accuracy_many, dropout_stream, train_many

#: Removal rates of the table: the poster's.
REMOVAL_RATES = POSTER_REMOVAL_RATES

#: C11: the rule behind :meth:`RemovalRecord.verdict`.
REMOVAL_RULE = (
    "per setting, attributor and rate: accuracy after removal by the selected λ below that by the default "
    "by > 2 SE (paired over seeds); all: holds, some: in part"
)


@dataclasses.dataclass(frozen=True)
class RemovalConfig:
    """The retraining behind one removal table."""

    rates: tuple[float, ...] = option(REMOVAL_RATES, "fractions of the training set removed")
    n_seeds: int = option(5, "retraining seeds per cell (mean ± std over them)")
    seed: int = option(0, "first seed; cell seeds are ``1000 + seed + k`` (disjoint from the ground truth's)")

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
    n_removed = round(rate * n_train)
    rows = []
    for seed in seeds:
        if order is None:
            permutation = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
            rows.append(torch.sort(permutation[n_removed:]).values)
        else:
            rows.append(torch.sort(order[n_removed:]).values)
    return torch.stack(rows)


def retrained_accuracy(
    setting: Setting,
    index_sets: torch.Tensor,
    seeds: Sequence[int],
    key: dict,
    cache: Cache | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Test accuracy of models retrained on ``index_sets`` (one per seed), all trained in one batch
    on ``device`` and cached under ``key``."""
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    data = setting.data()

    def compute() -> torch.Tensor:
        state = train_many(
            setting, data.x_train, data.y_train, index_sets, list(seeds), dropout_seed=seeds[0], device=device
        )
        return accuracy_many(setting, state, data.x_test, data.y_test, device=device)

    spec = {**setting.spec(), **key, "seeds": list(seeds), "n_kept": int(index_sets.shape[1])}
    spec.update(dropout_stream(setting, device))
    return cache.get_or_compute("removal", spec, compute).numpy()


def removal_table(
    setting: Setting,
    methods: Mapping[str, torch.Tensor],
    config: RemovalConfig | None = None,
    cache: Cache | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    executor: str | Executor | None = None,
) -> pd.DataFrame:
    """Accuracy after removal for ``Full``, ``Random`` and every method (name -> test scores).

    All cells of one removal rate keep the same number of points, so their models are trained in
    one batch (one cache entry per rate, keyed by every ranking in it). The batches are independent
    tasks on ``executor`` (:mod:`dahp.training.executors`; default ``$DAHP_EXECUTOR``, else in this process),
    each caching its own entry. Returns one row per (method, rate, seed) with the test accuracy in
    %; ``Full`` has rate 0.
    """
    config = config or RemovalConfig()
    device = resolve_device(device)
    chosen = resolve_executor(executor)
    cache = default_cache() if cache is None else cache
    n_train = setting.data().n_train
    for name, scores in methods.items():
        if scores.shape[0] != n_train:
            raise InvalidParameterError(f"scores of {name}", tuple(scores.shape), f"shape ({n_train}, n_queries)")
    orders: dict[str, torch.Tensor | None] = {"Random": None, **{name: ranking(s) for name, s in methods.items()}}
    seeds = config.seeds()
    everything = torch.arange(n_train).unsqueeze(0).repeat(len(seeds), 1)
    # one task per removal rate (and one for the full data): each trains its batch and caches it
    cells = [("full data", everything, seeds, {"ranking": "full", "rate": 0.0})]
    for rate in config.rates:
        index_sets = torch.cat([kept_index_sets(n_train, order, rate, seeds) for order in orders.values()])
        key = {"rankings": [_digest(order) for order in orders.values()], "rate": rate}
        cells.append((f"removal rate {rate}", index_sets, seeds * len(orders), key))
    tasks = [
        Task(label, retrained_accuracy, (setting, kept, cell_seeds, key, cache, device))
        for label, kept, cell_seeds, key in cells
    ]
    results = run_tasks(
        tasks,
        chosen,
        desc=f"retraining {setting.name} after removal",
        log_dir=cache.root / "submitit",
        progress=progress,
    )
    accuracy = {("Full", 0.0): 100 * results[0]}
    for rate, result in zip(config.rates, results[1:]):
        batch = 100 * result
        for k, name in enumerate(orders):
            accuracy[(name, rate)] = batch[k * len(seeds) : (k + 1) * len(seeds)]
    return pd.DataFrame(
        [
            {"setting": setting.name, "method": name, "removal_rate": rate, "seed": seed, "accuracy": float(value)}
            for (name, rate), values in accuracy.items()
            for seed, value in zip(seeds, values)
        ]
    )


def removal_study(
    settings: Sequence[str],
    proj_dims: Mapping[str, Mapping[str, int | None]],
    config: RemovalConfig | None = None,
    n_points: int = 33,
    trak_ensemble: int | None = None,
    cache: Cache | None = None,
    progress: bool = False,
    profile: str | None = None,
    device: str | torch.device | None = None,
    executor: str | Executor | None = None,
) -> tuple[RemovalRecord, dict[str, str]]:
    """The removal table over ``settings``: IFFIM and TRAK at the published default λ and at the λ the ξ rule
    selects on the validation queries (``proj_dims``: attributor -> setting -> projection).

    Returns the record and, for settings whose data is not supplied, the message saying what to put where.
    """

    config = config or RemovalConfig()
    device = resolve_device(device)
    engine = resolve_executor(executor)
    chosen = [get_setting(name) for name in settings]  # unknown names fail before any compute
    tables, lambdas, missing = [], [], {}
    for setting in chosen:
        message = setting.missing_data_message()
        if message:
            missing[setting.name] = message
            continue
        methods = {}
        for attributor in ("iffim", "trak"):
            label = "IFFIM" if attributor == "iffim" else "TRAK"
            picked = case_scores(
                setting,
                attributor,
                proj_dims[attributor][setting.name],
                rules_used=(PUBLISHED, SELECTED),
                n_points=n_points,
                ensemble_size=trak_ensemble if attributor == "trak" else None,
                cache=cache,
                progress=progress,
                device=device,
            )
            for rule, name in ((PUBLISHED, "default"), (SELECTED, "selected")):
                lam, scores = picked[rule]
                methods[f"{label} {name}"] = scores
                lambdas.append({"setting": setting.name, "method": f"{label} {name}", "regularization": lam})
        tables.append(removal_table(setting, methods, config, cache, progress, device, engine))
    accuracies = (
        pd.concat(tables, ignore_index=True)
        if tables
        else pd.DataFrame(columns=["setting", "method", "removal_rate", "seed", "accuracy"])
    )
    record_config = {
        **dataclasses.asdict(config),
        "seeds": config.seeds(),
        "n_points": n_points,
        "trak_ensemble": trak_ensemble,
        "proj_dims": proj_dims,
        "not_run": missing,
    }
    return RemovalRecord(accuracies, pd.DataFrame(lambdas), record_config, profile), missing


# --------------------------------------------------------------------------------------------
# The record


@dataclasses.dataclass
class RemovalRecord:
    """Test accuracy after removing the top-attributed training points (:mod:`dahp.experiments.removal`).

    ``accuracies``: one row per (setting, method, removal rate, seed) with the accuracy in %;
    ``Full`` has rate 0. ``lambdas``: the λ each method used.
    """

    accuracies: pd.DataFrame
    lambdas: pd.DataFrame
    config: dict = dataclasses.field(default_factory=dict)
    profile: str | None = None
    stem: str = "removal_table"

    @property
    def settings(self) -> list[str]:
        """The settings that ran."""
        return list(dict.fromkeys(self.accuracies.setting))

    def rates(self, setting: str) -> list[float]:
        """The removal rates of a setting (Full's 0 excluded)."""
        part = self.accuracies[(self.accuracies.setting == setting) & (self.accuracies.removal_rate > 0)]
        return sorted(part.removal_rate.unique().tolist())

    def seeds_of(self, setting: str, method: str, rate: float) -> np.ndarray:
        """Accuracies (%) of one cell, in seed order."""
        part = self.accuracies[(self.accuracies.setting == setting) & (self.accuracies.method == method)]
        if method != "Full":
            part = part[np.isclose(part.removal_rate, rate)]
        return part.sort_values("seed").accuracy.to_numpy(dtype=float)

    def selected_minus_default(self, setting: str, label: str, rate: float) -> Estimate:
        """Accuracy after removal by the selected λ minus by the default λ (paired over seeds; negative:
        the selected λ found points the test set depends on more)."""
        return paired_difference(
            self.seeds_of(setting, f"{label} selected", rate), self.seeds_of(setting, f"{label} default", rate)
        )

    def wide(self, setting: str) -> pd.DataFrame:
        """The poster's layout: methods down, rates across, ``mean ± std`` (and the poster's number)."""

        methods = list(dict.fromkeys(self.accuracies[self.accuracies.setting == setting].method))
        table = {}
        for rate in self.rates(setting):
            column = {}
            for method in methods:
                values = self.seeds_of(setting, method, rate)
                ours = f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"
                poster = dict(zip(POSTER_REMOVAL_RATES, POSTER_TABLE.get(method, []))).get(rate)
                column[method] = ours + (f"  ({poster[0]:.2f} ± {poster[1]:.2f})" if poster else "")
            table[f"{round(100 * rate)} %"] = column
        return pd.DataFrame(table).loc[methods]

    def headline(self) -> dict[str, Any]:
        """Per setting, attributor and rate: selected minus default accuracy (paired over seeds)."""
        return {
            f"{setting} {label} {round(100 * rate)}%": self.selected_minus_default(setting, label, rate)
            for setting in self.settings
            for label in ("IFFIM", "TRAK")
            for rate in self.rates(setting)
        }

    def verdict(self, keys: Collection[str] | None = None) -> str:
        """C11 (:data:`REMOVAL_RULE`) on the :meth:`headline` cells named by ``keys`` (None: all)."""
        head = self.headline()
        return share_verdict([value.below(0) for key, value in head.items() if keys is None or key in keys])

    def save(self, folder: Path) -> Path:
        """Write ``removal_table.csv`` (long), ``removal_lambdas.csv`` and ``removal_table.json``."""
        path = folder / f"{self.stem}.csv"
        self.accuracies.to_csv(path, index=False)
        self.lambdas.reindex(columns=["setting", "method", "regularization"]).to_csv(
            folder / "removal_lambdas.csv", index=False
        )
        write_json(
            folder / f"{self.stem}.json",
            {"record": "removal", "profile": self.profile, "config": self.config, "headline": self.headline()},
        )
        return path

    @classmethod
    def load(cls, folder: Path, stem: str = "removal_table") -> RemovalRecord | None:
        """The removal record under ``folder``, or None."""
        if not (folder / f"{stem}.json").exists():
            return None
        meta = read_json(folder / f"{stem}.json")
        return cls(
            pd.read_csv(folder / f"{stem}.csv"),
            pd.read_csv(folder / "removal_lambdas.csv"),
            meta.get("config", {}),
            meta.get("profile"),
            stem,
        )
