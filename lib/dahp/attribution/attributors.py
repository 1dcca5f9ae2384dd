"""The attributors of the study and every hyperparameter the paper varies (spec: "Attributors").

Each attributor has a frozen record of its hyperparameters whose field defaults are the paper's
defaults (Appendix A.1); :data:`ATTRIBUTORS` is the registry. ``regularization`` is λ everywhere,
on the scale of that attributor (see :attr:`AttributorInfo.regularization_scale`).

Scores are ``(n_train, n_queries)`` with one sign convention: positive means that including the
training point raises the query's margin. The inverse-curvature attributors with a closed form
(IFFIM, TRAK, IF explicit) are computed spectrally (:mod:`dahp.attribution.spectral`) so a λ grid costs one
factorization; the iterative ones (IF CG, IF LiSSA) run dattri's own attributor afresh per λ, which
has no λ-free part to reuse; LoGra runs dattri's attributor too, forming its projected gradients once
per configuration and only the damped inverses per λ; TracIn and its variants have no λ.

Book: "Data attribution and the LDS" (the methods), "Table A.1" (their defaults).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from dahp.attribution import dattri_bridge
from dahp.attribution.features import check_proj_dim, gradient_features, one_minus_correct_probability, parameter_names
from dahp.attribution.scales import gram_scale
from dahp.attribution.spectral import (
    Eigendecomposition,
    SpectralFactors,
    Sweepable,
    check_regularization,
    curvature_eigendecomposition,
    eigendecompose,
    factors,
)
from dahp.core.cache import Cache, default_cache
from dahp.core.config import InvalidParameterError, option
from dahp.core.device import resolve_device
from dahp.data.benchmark_folder import benchmark_models
from dahp.data.settings import Setting, as_model_input
from dahp.data.targets import cross_entropy
from dahp.training.executors import Executor, Task, resolve_executor, run_tasks
from dahp.training.train import Checkpoints, check_epoch, train_full, train_full_many

#: Largest parameter count for which the exact Hessian (IF explicit) is formed.
MAX_EXPLICIT_HESSIAN_PARAMS = 20_000


# --------------------------------------------------------------------------------------------
# Hyperparameter records (defaults: the paper's Appendix A.1)


def _check_epoch_field(value: int | None) -> None:
    if value is not None and not (isinstance(value, int) and value >= 1):
        raise InvalidParameterError("training_epoch", value, "None (the last epoch) or an integer >= 1")


def _check_positive_int(name: str, value: Any) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise InvalidParameterError(name, value, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class IFFIMParams:
    """Influence function with the empirical Fisher ``F = GᵀG/n`` of the training loss."""

    regularization: float = option(1e-5, "λ added to F (mean-loss scale; default borrowed from IF explicit)")
    proj_dim: int | None = option(None, "random projection of the gradients (None: full gradients)")
    training_epoch: int | None = option(None, "checkpoint attributed (None: the last epoch)")
    proj_seed: int = option(0, "seed of the projection")

    def __post_init__(self) -> None:
        check_regularization(self.regularization)
        _check_epoch_field(self.training_epoch)
        if self.proj_dim is not None:
            _check_positive_int("proj_dim", self.proj_dim)


@dataclasses.dataclass(frozen=True)
class TRAKParams:
    """TRAK: projected margin gradients of an ensemble of independently trained models."""

    regularization: float = option(0.0, "λ added to ΦᵀΦ (sum over training points, gradients / sqrt(#params))")
    proj_dim: int | None = option(512, "projection dimension (None: the full gradients, unprojected)")
    training_epoch: int | None = option(None, "checkpoint attributed in every member (None: the last)")
    ensemble_size: int = option(10, "independently trained models averaged (TRAK-10)")
    proj_seed: int = option(0, "seed of the projection (member k uses ensemble_id k)")

    def __post_init__(self) -> None:
        check_regularization(self.regularization)
        _check_epoch_field(self.training_epoch)
        if self.proj_dim is not None:
            _check_positive_int("proj_dim", self.proj_dim)
        _check_positive_int("ensemble_size", self.ensemble_size)


@dataclasses.dataclass(frozen=True)
class IFExplicitParams:
    """Influence function with the exact Hessian of the mean training loss."""

    regularization: float = option(1e-5, "λ added to the Hessian of the mean loss")
    training_epoch: int | None = option(None, "checkpoint attributed (None: the last epoch)")

    def __post_init__(self) -> None:
        check_regularization(self.regularization)
        _check_epoch_field(self.training_epoch)


@dataclasses.dataclass(frozen=True)
class IFCGParams:
    """Influence function, inverse-Hessian-vector products by conjugate gradients (dattri)."""

    regularization: float = option(1e-2, "λ added to the Hessian of the mean loss")
    max_iteration: int = option(10, "CG iterations")
    training_epoch: int | None = option(None, "checkpoint attributed (None: the last epoch)")

    def __post_init__(self) -> None:
        check_regularization(self.regularization)
        _check_positive_int("max_iteration", self.max_iteration)
        _check_epoch_field(self.training_epoch)


@dataclasses.dataclass(frozen=True)
class IFLiSSAParams:
    """Influence function, inverse-Hessian-vector products by the LiSSA recursion (dattri)."""

    regularization: float = option(1e-3, "LiSSA damping (dattri's ``damping``)")
    scaling: float = option(5.0, "LiSSA scaling")
    recursion_depth: int = option(1000, "LiSSA recursion depth")
    batch_size: int = option(50, "training points per LiSSA step")
    training_epoch: int | None = option(None, "checkpoint attributed (None: the last epoch)")

    def __post_init__(self) -> None:
        check_regularization(self.regularization)
        if not self.scaling > 0:
            raise InvalidParameterError("scaling", self.scaling, "a number > 0")
        _check_positive_int("recursion_depth", self.recursion_depth)
        _check_positive_int("batch_size", self.batch_size)
        _check_epoch_field(self.training_epoch)


CHECKPOINT_SELECTION = re.compile(r"^(last|every)(\d+)$")


@dataclasses.dataclass(frozen=True)
class TracInParams:
    """TracInCP: gradient dot products summed over checkpoints, weighted by the learning rate."""

    proj_dim: int | None = option(None, "random projection of the gradients (None: full gradients)")
    normalization: bool = option(False, "unit-normalise the gradients (cosine instead of dot product)")
    checkpoint_selection: str = option("last10", "``lastK`` (the last K epochs) or ``everyK`` (every K-th epoch)")
    proj_seed: int = 0

    def __post_init__(self) -> None:
        if self.proj_dim is not None:
            _check_positive_int("proj_dim", self.proj_dim)
        match = CHECKPOINT_SELECTION.match(str(self.checkpoint_selection))
        if not match or int(match.group(2)) < 1:
            raise InvalidParameterError(
                "checkpoint_selection", self.checkpoint_selection, "'lastK' or 'everyK' with K >= 1, e.g. 'last10'"
            )

    def epochs(self, trained: int) -> list[int]:
        """The checkpoint epochs this selection uses, out of ``trained``."""
        mode, k = CHECKPOINT_SELECTION.match(self.checkpoint_selection).groups()
        k = int(k)
        if mode == "last":
            return list(range(max(1, trained - k + 1), trained + 1))
        return list(range(k, trained + 1, k)) or [trained]


@dataclasses.dataclass(frozen=True)
class GradDotParams(TracInParams):
    """Grad-Dot: the gradient dot product at the final checkpoint only."""

    checkpoint_selection: str = "last1"


@dataclasses.dataclass(frozen=True)
class GradCosParams(TracInParams):
    """Grad-Cos: the gradient cosine at the final checkpoint only."""

    normalization: bool = True
    checkpoint_selection: str = "last1"


@dataclasses.dataclass(frozen=True)
class LoGraParams:
    """LoGra: per-layer factorised projection with a damped empirical-Fisher inverse (dattri)."""

    regularization: float = option(1e-3, "relative damping: λ × trace / d per block")
    proj_dim: int = option(4096, "projected dimension per layer (a perfect square)")
    training_epoch: int | None = option(None, "checkpoint attributed (None: the last epoch)")

    def __post_init__(self) -> None:
        check_regularization(self.regularization)
        _check_positive_int("proj_dim", self.proj_dim)
        if math.isqrt(self.proj_dim) ** 2 != self.proj_dim:
            raise InvalidParameterError(
                "proj_dim", self.proj_dim, "a perfect square (LoGra projects each side to its root)"
            )
        _check_epoch_field(self.training_epoch)


@dataclasses.dataclass(frozen=True)
class AttributorInfo:
    """Registry entry of one attributor."""

    name: str
    label: str = option(help="name in tables and figures")
    params: type = option(help="its hyperparameter record")
    spectral: bool = option(help="λ grids are swept from one factorization")
    regularization_scale: str = option(help='what λ means for this attributor ("" if it has no λ)')


ATTRIBUTORS: dict[str, AttributorInfo] = {
    a.name: a
    for a in [
        AttributorInfo("iffim", "IFFIM", IFFIMParams, True, "added to the empirical Fisher of the mean training loss"),
        AttributorInfo(
            "trak",
            "TRAK",
            TRAKParams,
            True,
            "added to ΦᵀΦ summed over training points, gradients scaled by 1/sqrt(#parameters) (dattri)",
        ),
        AttributorInfo(
            "if_explicit", "IF (explicit)", IFExplicitParams, True, "added to the Hessian of the mean training loss"
        ),
        AttributorInfo("if_cg", "IF (CG)", IFCGParams, False, "added to the Hessian of the mean training loss"),
        AttributorInfo("if_lissa", "IF (LiSSA)", IFLiSSAParams, False, "LiSSA damping of the mean-loss Hessian"),
        AttributorInfo("tracin", "TracInCP", TracInParams, False, ""),
        AttributorInfo("grad_dot", "Grad-Dot", GradDotParams, False, ""),
        AttributorInfo("grad_cos", "Grad-Cos", GradCosParams, False, ""),
        AttributorInfo("logra", "LoGra", LoGraParams, False, "relative damping: λ × trace / d of each layer's block"),
    ]
}


def get_attributor(name: str) -> AttributorInfo:
    """The registry entry called ``name``."""
    if name not in ATTRIBUTORS:
        raise InvalidParameterError("attributor", name, list(ATTRIBUTORS))
    return ATTRIBUTORS[name]


def hyperparameter_names(attributor: str) -> list[str]:
    """Names of the hyperparameters of ``attributor``."""
    return [f.name for f in dataclasses.fields(get_attributor(attributor).params)]


def make_params(attributor: str, **values: Any) -> Any:
    """The hyperparameter record of ``attributor`` with ``values`` over the defaults (checked)."""
    info = get_attributor(attributor)
    valid = hyperparameter_names(attributor)
    for name in values:
        if name not in valid:
            raise InvalidParameterError(f"hyperparameter of {attributor}", name, valid)
    return info.params(**values)


def check_params(setting: Setting, params: Any) -> None:
    """Checks that need the setting (epoch range, projection size), before any compute."""
    _check_dattri_models(setting, params)
    epoch = getattr(params, "training_epoch", None)
    if epoch is not None:
        check_epoch(setting, epoch)
    if isinstance(params, (IFFIMParams, TRAKParams, TracInParams)):
        check_proj_dim(setting, params.proj_dim)
    if isinstance(params, IFExplicitParams) and setting.n_params() > MAX_EXPLICIT_HESSIAN_PARAMS:
        raise InvalidParameterError(
            "attributor",
            "if_explicit",
            f"settings with at most {MAX_EXPLICIT_HESSIAN_PARAMS} parameters ({setting.name} has "
            f"{setting.n_params()}; the exact Hessian would not fit); use if_cg or if_lissa",
        )


#: Attributors that can attribute dattri's published full-data models (the others run through
#: :mod:`dahp.attribution.dattri_bridge`, which takes the model from our training).
DATTRI_MODEL_ATTRIBUTORS = ("iffim", "trak", "if_explicit")


def _check_dattri_models(setting: Setting, params: Any) -> None:
    """On dattri's benchmark points the attributed models are dattri's: final weights only, as many
    as it published, and only the attributors that take a given state."""
    models = benchmark_models(setting)
    if models is None:
        return
    if not isinstance(params, (IFFIMParams, TRAKParams, IFExplicitParams)):
        name = next(a.name for a in ATTRIBUTORS.values() if type(params) is a.params)
        raise InvalidParameterError(
            "attributor", name, f"{', '.join(DATTRI_MODEL_ATTRIBUTORS)} with dattri's published models"
        )
    if params.training_epoch is not None:
        raise InvalidParameterError(
            "training_epoch",
            params.training_epoch,
            "None with dattri's published models: dattri publishes only their final weights "
            "(models_full/i/model_weights_0.pt), so no other epoch can be attributed",
        )
    if isinstance(params, TRAKParams) and params.ensemble_size > models.n_full:
        raise InvalidParameterError(
            "ensemble_size",
            params.ensemble_size,
            f"an integer in 1..{models.n_full} (the full-data models dattri published under "
            f"{models.source / 'models_full'})",
        )


# --------------------------------------------------------------------------------------------
# Scorers: scores at any λ of one attributor configuration


Scorer = Sweepable  #: scores of one attributor configuration at any λ (``scores``, ``sweep``)


@dataclasses.dataclass
class SpectralScorer(Sweepable):
    """Average over ensemble members of spectral factors, times optional per-training-point weights."""

    members: list[SpectralFactors]
    train_weights: torch.Tensor | None = option(None, "``(n_train,)`` (TRAK's mean ``1 - p_i``)")

    def scores(self, regularization: float) -> torch.Tensor:
        total = sum(member.scores(regularization) for member in self.members) / len(self.members)
        if self.train_weights is not None:
            total = total * self.train_weights.double().unsqueeze(1)
        return total

    def summed(self, membership: torch.Tensor) -> SpectralScorer:
        """Subset sums in closed form: each member's left factor summed once (the training-point weights folded in)."""
        if self.train_weights is not None:
            membership = membership.double() * self.train_weights.double().unsqueeze(0)
        return SpectralScorer([member.summed(membership) for member in self.members])

    def restricted(self, query_index: torch.Tensor) -> SpectralScorer:
        """The same scorer for the queries in ``query_index`` only (their columns of every member)."""
        members = [dataclasses.replace(m, right=m.right[:, query_index]) for m in self.members]
        return dataclasses.replace(self, members=members)


@dataclasses.dataclass
class RerunScorer(Sweepable):
    """Runs the attributor afresh at each λ (attributors with no closed form in λ)."""

    setting: Setting
    attributor: str
    params: Any
    split: str
    cache: Cache
    query_index: torch.Tensor | None = option(None, "run on these queries only (None: all)")
    device: torch.device | None = option(None, "where dattri runs (None: resolved by dahp.core.device)")

    def scores(self, regularization: float) -> torch.Tensor:
        params = (
            dataclasses.replace(self.params, regularization=regularization)
            if hasattr(self.params, "regularization")
            else self.params
        )
        return dattri_bridge.run(
            self.setting, self.attributor, params, self.split, self.cache, self.query_index, device=self.device
        )


def checkpoint_spec(setting: Setting, seed: int, epoch: int) -> dict:
    """What determines a full-data checkpoint (for the feature cache keys)."""
    return {**setting.spec(), "model_seed": seed, "epoch": epoch}


def _epoch(setting: Setting, params: Any) -> int:
    return params.training_epoch or setting.recipe.epochs


def full_data_state(
    setting: Setting, seed: int, epoch: int, cache: Cache, progress: bool, device: torch.device
) -> tuple[dict[str, torch.Tensor], dict]:
    """The attributed state -- full-data model ``seed`` after ``epoch`` -- and the spec that keys what
    is cached from it.

    Ours is trained (and cached) by :func:`dahp.training.train.train_full`. On dattri's benchmark points
    (:func:`dahp.data.benchmark_folder.benchmark_setting`) it is dattri's published full-data model
    ``seed`` (its final weights; :func:`check_params` has refused any other epoch) and nothing is
    trained; the setting's spec then carries the folder's identity.
    """
    models = benchmark_models(setting)
    if models is not None:
        return models.state(seed), {**setting.spec(), "dattri_full_model": seed}
    return train_full(setting, seed, cache, progress, device=device).state(epoch), checkpoint_spec(setting, seed, epoch)


def scorer(
    setting: Setting,
    attributor: str,
    params: Any,
    split: str = "test",
    cache: Cache | None = None,
    progress: bool = True,
    query_index: torch.Tensor | None = None,
    device: str | torch.device | None = None,
) -> Scorer:
    """A scorer for ``attributor`` with ``params`` (λ is taken per call), after validating everything.

    With ``query_index`` the scores cover those queries of ``split`` only; the attributors run
    through dattri then attribute only those queries, which is what makes them affordable.
    Training, gradients, projections, eigendecompositions and dattri's attributors run on
    ``device`` (:func:`dahp.core.device.resolve_device`); the scores are on the CPU.
    """
    info = get_attributor(attributor)
    if not isinstance(params, info.params):
        raise InvalidParameterError("params", type(params).__name__, f"a {info.params.__name__}")
    check_params(setting, params)
    device = resolve_device(device)
    resolve_executor()  # the ensemble members' engine ($DAHP_EXECUTOR): a bad value fails before any compute
    cache = default_cache() if cache is None else cache
    builders = {"iffim": _iffim, "trak": _trak, "if_explicit": _if_explicit}
    if attributor in builders:
        built = builders[attributor](setting, params, split, cache, progress, device)
        return built if query_index is None else built.restricted(query_index)
    if attributor == "logra":
        return _logra(setting, params, split, cache, progress, query_index, device)
    return RerunScorer(setting, attributor, params, split, cache, query_index, device)


def attribute(
    setting: Setting,
    attributor: str,
    split: str = "test",
    device: str | torch.device | None = None,
    **hyperparameters: Any,
) -> torch.Tensor:
    """``(n_train, n_queries)`` scores of ``attributor`` with ``hyperparameters`` over its defaults."""
    params = make_params(attributor, **hyperparameters)
    lam = getattr(params, "regularization", 0.0)
    return scorer(setting, attributor, params, split, device=device).scores(lam)


def _logra(
    setting: Setting,
    params: LoGraParams,
    split: str,
    cache: Cache,
    progress: bool,
    query_index: torch.Tensor | None,
    device: torch.device,
) -> dattri_bridge.LoGraScorer:
    """dattri's LoGra on the full-data model at the epoch of ``params``: its projected gradients are
    formed once, and a λ grid forms only the damped inverses again."""
    state = train_full(setting, 0, cache, progress, device=device).state(_epoch(setting, params))
    return dattri_bridge.LoGraScorer(setting, state, params.proj_dim, split, query_index, device)


def _iffim(
    setting: Setting, params: IFFIMParams, split: str, cache: Cache, progress: bool, device: torch.device
) -> SpectralScorer:
    state, spec = full_data_state(setting, 0, _epoch(setting, params), cache, progress, device)
    kw = dict(proj_dims=(params.proj_dim,), seed=params.proj_seed, cache=cache, progress=progress, device=device)
    train = gradient_features(setting, state, spec, "train", "loss", **kw)[params.proj_dim]
    queries = gradient_features(setting, state, spec, split, "target", **kw)[params.proj_dim]
    eig = _cached_eigendecomposition(
        cache,
        {**spec, "kind": "loss", "proj_dim": params.proj_dim, "proj_seed": params.proj_seed},
        train,
        gram_scale("iffim", len(train)),
        device,
    )
    return SpectralScorer([factors(eig, train, queries, sign=-1.0, device=device)])


def _cached_eigendecomposition(
    cache: Cache, spec: dict, train: torch.Tensor, scale: float, device: str | torch.device | None = None
) -> Eigendecomposition:
    """The float64 eigendecomposition of a feature Gram matrix (computed on ``device``, cached on the
    CPU beside the features)."""
    payload = cache.get_or_compute(
        "eigh", {**spec, "scale": scale}, lambda: dataclasses.asdict(eigendecompose(train, scale, device=device))
    )
    return Eigendecomposition(**payload)


def trak_members(
    setting: Setting,
    ensemble_size: int,
    cache: Cache,
    progress: bool,
    device: str | torch.device | None = None,
    executor: str | Executor | None = None,
) -> list[Checkpoints]:
    """The independently trained full-data models of a TRAK ensemble (seeds 0..size-1): on an engine
    (``executor``, :mod:`dahp.training.executors`) trained there as independent tasks, in this process those
    not yet cached trained together (:func:`dahp.training.train.train_full_many`); read back from the cache."""
    train_members(setting, range(ensemble_size), cache, progress, device, executor)
    return train_full_many(setting, range(ensemble_size), cache, progress, device=device)


def train_members(
    setting: Setting,
    seeds: Iterable[int],
    cache: Cache,
    progress: bool,
    device: str | torch.device | None = None,
    executor: str | Executor | None = None,
) -> None:
    """Train (and cache) the full-data models ``seeds`` of an ensemble as independent tasks on
    ``executor`` (default ``$DAHP_EXECUTOR``, else ``inline``). Inline this does nothing: the
    caller's own loop trains each member when it first asks for it, as before. dattri's published
    models are read, never trained."""
    chosen = resolve_executor(executor)
    if chosen.kind == "inline" or benchmark_models(setting) is not None:
        return
    device = resolve_device(device)
    tasks = [Task(f"full-data model {seed}", _train_member_task, (setting, seed, cache.root, device)) for seed in seeds]
    run_tasks(
        tasks,
        chosen,
        desc=f"full-data {setting.name} models",
        log_dir=cache.root / "submitit",
        progress=progress,
    )


def _train_member_task(setting: Setting, seed: int, cache_root: Any, device: torch.device) -> None:
    """One ensemble member as a task on a worker: trained and cached there (nothing is sent back)."""
    train_full(setting, seed, Cache(cache_root), False, device=device)


def _trak(
    setting: Setting, params: TRAKParams, split: str, cache: Cache, progress: bool, device: torch.device
) -> SpectralScorer:
    epoch = _epoch(setting, params)
    train_members(setting, range(params.ensemble_size), cache, progress, device)
    members = [full_data_state(setting, k, epoch, cache, progress, device) for k in range(params.ensemble_size)]
    states, specs = [state for state, _ in members], [spec for _, spec in members]
    return trak_scorer(setting, states, specs, params, split, cache, progress, device)


def trak_scorer(
    setting: Setting,
    states: list[dict[str, torch.Tensor]],
    specs: list[dict],
    params: TRAKParams,
    split: str,
    cache: Cache | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> SpectralScorer:
    """TRAK over given ensemble members (``states``, described by ``specs`` for the cache).

    Member ``k`` is projected with dattri's ``ensemble_id = k``; scores are averaged over members
    and multiplied by the members' mean ``1 - p_i``, as dattri's ``TRAKAttributor`` does.
    """
    cache = default_cache() if cache is None else cache
    device = resolve_device(device)
    members, weights = [], []
    for k, (state, spec) in enumerate(zip(states, specs)):
        kw = dict(
            proj_dims=(params.proj_dim,),
            seed=params.proj_seed,
            ensemble_id=k,
            cache=cache,
            progress=progress,
            device=device,
        )
        train = gradient_features(setting, state, spec, "train", "trak", **kw)[params.proj_dim]
        queries = gradient_features(setting, state, spec, split, "trak", **kw)[params.proj_dim]
        eig = _cached_eigendecomposition(
            cache,
            {**spec, "kind": "trak", "proj_dim": params.proj_dim, "proj_seed": params.proj_seed, "ensemble_id": k},
            train,
            gram_scale("trak", len(train)),
            device,
        )
        members.append(factors(eig, train, queries, sign=1.0, device=device))
        weights.append(one_minus_correct_probability(setting, state, device))
    return SpectralScorer(members, torch.stack(weights).mean(0))


@torch.no_grad()
def train_margins(
    setting: Setting, members: int, cache: Cache | None = None, progress: bool = False, device=None
) -> np.ndarray:
    """``(members, n)`` margins (the setting's target) of the training points under full-data models
    0..members-1 (the models TRAK's ensemble attributes, from the cache), in float64, on the CPU."""
    cache = default_cache() if cache is None else cache
    device = resolve_device(device)
    data = setting.data()
    rows = []
    for seed in range(members):
        state, _ = full_data_state(setting, seed, setting.recipe.epochs, cache, progress, device)
        model = setting.make_model()
        model.load_state_dict(state)
        rows.append(setting.target(model.eval()(data.x_train), data.y_train).double().numpy())
    return np.stack(rows)


def mean_loss_hessian(
    setting: Setting, state: dict[str, torch.Tensor], device: str | torch.device | None = None
) -> torch.Tensor:
    """Exact ``(d, d)`` Hessian of the mean training loss at ``state``, in float64, on the CPU
    (computed on ``device``).

    A model that is one affine layer under the mean cross-entropy (softmax regression) gets the
    closed form, which is ~20x faster than differentiating twice; any other model goes through
    ``torch.func.hessian``. Both give the same matrix (tested).
    """
    from torch.func import functional_call, hessian

    device = resolve_device(device)
    data = setting.data()
    model = setting.make_model().eval().double().to(device)
    model.load_state_dict(state)
    x, y = as_model_input(data.x_train, torch.float64, device), data.y_train.to(device)
    if _is_softmax_regression(setting, model, x):
        with torch.no_grad():
            return softmax_regression_hessian(x.reshape(len(x), -1), torch.softmax(model(x), dim=-1)).cpu()
    names = parameter_names(setting)
    shapes = [state[n].shape for n in names]
    sizes = [state[n].numel() for n in names]
    flat = torch.cat([state[n].to(device, torch.float64).reshape(-1) for n in names])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(names, (t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes))))
        return setting.loss(functional_call(model, parts, (x,)), y)

    return hessian(loss)(flat).cpu()


def _is_softmax_regression(setting: Setting, model: torch.nn.Module, x: torch.Tensor) -> bool:
    """True when the model is one ``Linear(flatten(x))`` (weight, then bias) under the mean cross-entropy."""

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if setting.loss is not cross_entropy or len(linears) != 1 or linears[0].bias is None:
        return False
    layer = linears[0]
    if [p.data_ptr() for p in model.parameters()] != [layer.weight.data_ptr(), layer.bias.data_ptr()]:
        return False
    probe = x[:16]
    with torch.no_grad():
        return torch.allclose(model(probe), layer(probe.reshape(len(probe), -1)), rtol=0, atol=1e-12)


def softmax_regression_hessian(x: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """Hessian of the mean cross-entropy of ``softmax(W x + b)`` in the parameters ``(W row-major, b)``.

    With ``A_i = diag(p_i) - p_i p_iᵀ`` and ``x̃_i = (x_i, 1)``, the block of classes ``(a, b)`` is
    ``(1/n) Σ_i A_i[a, b] x̃_i x̃_iᵀ``; the bias entries sit after all weights, as in
    ``named_parameters()``.
    """
    n, d = x.shape
    k = probabilities.shape[1]
    x = x.double()
    p = probabilities.double()
    weights = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # (n, k, k)
    augmented = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], dim=1)  # (n, d + 1)
    blocks = torch.empty(k, k, d + 1, d + 1, dtype=torch.float64, device=x.device)
    for a in range(k):
        for b in range(a, k):
            block = augmented.T @ (augmented * weights[:, a, b].unsqueeze(1)) / n
            blocks[a, b] = block
            blocks[b, a] = block.T
    # reorder (class, feature | bias) into (all weights class-major, then the k biases)
    full = blocks.permute(0, 2, 1, 3)  # (k, d+1, k, d+1)
    position = torch.arange(k * (d + 1), device=x.device).reshape(k, d + 1)  # (class, feature | bias) -> flat index
    order = torch.cat([position[:, :d].reshape(-1), position[:, d]])
    return full.reshape(k * (d + 1), k * (d + 1))[order][:, order]


def _if_explicit(
    setting: Setting, params: IFExplicitParams, split: str, cache: Cache, progress: bool, device: torch.device
) -> SpectralScorer:
    state, spec = full_data_state(setting, 0, _epoch(setting, params), cache, progress, device)
    state = {k: v.double() for k, v in state.items()}
    spec = {**spec, "dtype": "float64"}
    payload = cache.get_or_compute(
        "hessian_eigh",
        spec,
        lambda: dataclasses.asdict(curvature_eigendecomposition(mean_loss_hessian(setting, state, device), device)),
    )
    kw = dict(proj_dims=(None,), cache=cache, progress=progress, device=device)
    train = gradient_features(setting, state, spec, "train", "loss", **kw)[None]
    queries = gradient_features(setting, state, spec, split, "target", **kw)[None]
    return SpectralScorer([factors(Eigendecomposition(**payload), train, queries, sign=-1.0, device=device)])


def prefetch_features(
    setting: Setting,
    attributor: str,
    params: Any,
    proj_dims: Iterable[int | None],
    split: str,
    cache: Cache | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> None:
    """Cache the features of several projection dimensions at once (one projection per model)."""
    cache = default_cache() if cache is None else cache
    check_params(setting, params)
    dims = tuple(proj_dims)
    for dim in dims:
        check_proj_dim(setting, dim)
    device = resolve_device(device)
    epoch = _epoch(setting, params)
    if attributor == "iffim":
        state, spec = full_data_state(setting, 0, epoch, cache, progress, device)
        for split_, kind in (("train", "loss"), (split, "target")):
            gradient_features(
                setting, state, spec, split_, kind, dims, params.proj_seed, 0, cache, progress, device=device
            )
    elif attributor == "trak":
        for k in range(params.ensemble_size):
            state, spec = full_data_state(setting, k, epoch, cache, progress, device)
            for split_ in ("train", split):
                gradient_features(
                    setting, state, spec, split_, "trak", dims, params.proj_seed, k, cache, progress, device=device
                )


def defaults_table():
    """Table A.1 from the code: every attributor's hyperparameters and defaults (one row each)."""
    import pandas as pd

    rows = []
    for info in ATTRIBUTORS.values():
        for field in dataclasses.fields(info.params):
            default = field.default
            if field.name == "training_epoch" and default is None:
                default = "last"
            elif field.name == "proj_dim" and default is None:
                default = "none (full gradients)"
            scale = info.regularization_scale if field.name == "regularization" else ""
            rows.append(
                {
                    "attributor": info.label,
                    "hyperparameter": field.name,
                    "default": default,
                    "meaning": field.metadata.get("help", ""),
                    "λ scale": scale,
                }
            )
    return pd.DataFrame(rows)
