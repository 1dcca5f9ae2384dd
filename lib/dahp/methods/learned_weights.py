"""Learned parameter-group weights for gradient attribution (seed 002; spec: learned-weights.md).

The parameters are split into groups (one per tensor, or one per layer), each group ``j`` gets a
weight ``w_j >= 0`` on the query side, and the weights are learned from unlabelled validation
queries with a label-free objective. The weighted score is linear in the query gradient, so

    τ̃(q, i; w) = Σ_j w_j C_j(q, i),    C_j(q, i) = g_[j]ᵀ K G_iᵀ,    Σ_j C_j = τ

where ``g_[j]`` is the query gradient with every coordinate outside group ``j`` set to zero and ``K``
the attributor's preconditioner. The contributions ``C`` are formed once from the gradient features
(:mod:`dahp.attribution.features`) and, for IFFIM, from the spectral factors (:mod:`dahp.attribution.spectral`) so that every
λ costs one product: ``C_j(λ) = -V diag(1/(e+λ)) Vᵀ G_[:, j] g_jᵀ`` (dual form; the primal form uses
the rows of group ``j`` of its eigenvectors). Learning the weights never touches a gradient again.

Shapes follow the package's score convention: contributions are ``(M, n_train, n_queries)`` float64,
so ``C.sum(0)`` is the attributor's ``(n_train, n_queries)`` score matrix (positive: including the
training point raises the query's margin).

Weights are reported relative to uniform: ``weights = M · softmax(θ)`` (mean 1), so θ = 0 gives
``w = 1`` everywhere and ``Σ_j w_j C_j`` *is* the attributor's score, not a multiple of it. The
objective is scale invariant, so this changes nothing in the fit; the penalty λ_w acts on the
softmax itself (the spec's ``‖w‖²`` on the simplex).

Implemented on this package's settings: Grad-Dot, TracIn (lr-weighted sum over checkpoints, one
shared w) and IFFIM without a random projection, and TRAK with its single projection: each member's
query gradient is projected group by group with that member's matrix, ``φ_{q,j} = Pᵀ g_[j]``
(``Σ_j φ_{q,j} = φ_q``), the training side is TRAK's own cached projected features, and the
contributions are averaged over the ensemble (one shared w) and weighted by ``1 - p_i``. For a
user's ``AttributionTask``: Grad-Dot and IFFIM (unprojected).

Book: none yet (issue 12).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from dahp.attribution.attributors import (
    IFFIMParams,
    _cached_eigendecomposition,
    check_params,
    full_data_state,
    make_params,
)
from dahp.attribution.features import (
    PROJECTOR_BLOCK,
    Projection,
    gradient_features,
    one_minus_correct_probability,
    per_example_gradients,
    projection_block,
    projection_generator,
    task_gradient_rows,
)
from dahp.attribution.scales import feature_scale, gram_scale
from dahp.attribution.spectral import Eigendecomposition, check_regularization, eigendecompose
from dahp.core.cache import Cache, default_cache
from dahp.core.config import InvalidParameterError, option
from dahp.core.device import resolve_device
from dahp.data.settings import Setting, as_model_input
from dahp.training.train import train_full

#: How parameters are grouped: one group per tensor, or one per layer (the module owning it).
GROUPINGS = ("tensor", "layer")
#: Labels of the queries the weights are learned on: the true class, or the model's prediction.
LABELS = ("true", "predicted")
#: The objective's signal: the mean of the top-k scores (the paper's), or both tails (the reviewers' variant).
SIGNALS = ("top", "top_and_bottom")
#: Attributors whose per-group contributions are implemented.
LEARNABLE = ("grad_dot", "tracin", "iffim", "trak")
#: Attributors a user's ``AttributionTask`` can learn weights for (:func:`learn_group_weights`).
TASK_ATTRIBUTORS = ("grad_dot", "iffim")


@dataclasses.dataclass(frozen=True)
class GroupWeightConfig:
    """How the group weights are learned (spec §4; fixed before any LDS is computed).

    The objective is always evaluated on all queries at once (full batch).
    """

    k: int = option(10, "pseudo-positives per query: the top-k scores whose mean is the signal")
    lr: float = option(0.05, "Adam's learning rate on the softmax logits θ")
    steps: int = option(300, "Adam steps (full batch)")
    weight_penalty: float = option(0.0, "λ_w: penalty λ_w ‖softmax(θ)‖² (pulls toward uniform weights)")
    init: float = option(0.0, "θ₀: initial value of every logit (0: uniform weights, the baseline)")
    grouping: str = option("tensor", "``tensor`` (one group per parameter tensor) or ``layer`` (per module)")
    labels: str = option("true", "query labels the weights are learned with: ``true`` or ``predicted`` (label-free)")
    signal: str = option(
        "top",
        "``top``: the mean of the top-k scores; ``top_and_bottom``: half the mean of the top-k minus the mean of "
        "the bottom-k (both tails, which both move a counterfactual)",
    )

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 1):
            raise InvalidParameterError("k", self.k, "an integer >= 1 (and at most the number of training points)")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InvalidParameterError("lr", self.lr, "a number > 0")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise InvalidParameterError("steps", self.steps, "an integer >= 0")
        if not (isinstance(self.weight_penalty, (int, float)) and self.weight_penalty >= 0):
            raise InvalidParameterError("weight_penalty", self.weight_penalty, "a number >= 0")
        if not (isinstance(self.init, (int, float)) and abs(self.init) != float("inf")):
            raise InvalidParameterError("init", self.init, "a finite number")
        if self.grouping not in GROUPINGS:
            raise InvalidParameterError("grouping", self.grouping, GROUPINGS)
        if self.labels not in LABELS:
            raise InvalidParameterError("labels", self.labels, LABELS)
        if self.signal not in SIGNALS:
            raise InvalidParameterError("signal", self.signal, SIGNALS)

    def check_n_train(self, n_train: int) -> None:
        """``k`` cannot exceed the number of training points ranked per query."""
        if self.k > n_train:
            raise InvalidParameterError("k", self.k, f"an integer in 1..{n_train} (the number of training points)")

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form, written beside results."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Parameter groups


@dataclasses.dataclass(frozen=True)
class ParameterGroup:
    """Coordinates ``start:stop`` of the flattened gradient (``named_parameters()`` order)."""

    name: str  #: the tensor's name, or the layer's (module path)
    start: int
    stop: int
    tensors: tuple[str, ...]  #: parameter names in the group

    @property
    def size(self) -> int:
        """Number of parameters in the group."""
        return self.stop - self.start


def _layer_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def parameter_groups(model: nn.Module, grouping: str) -> list[ParameterGroup]:
    """The groups of ``model``'s trainable parameters, as index ranges into dattri's flattening.

    ``layer`` merges consecutive tensors owned by the same module (``fc1.weight``, ``fc1.bias`` ->
    ``fc1``); a module whose tensors are not adjacent in ``named_parameters()`` gets one group per run.
    """
    if grouping not in GROUPINGS:
        raise InvalidParameterError("grouping", grouping, GROUPINGS)
    groups: list[ParameterGroup] = []
    start = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = name if grouping == "tensor" else _layer_of(name)
        stop = start + p.numel()
        if grouping == "layer" and groups and groups[-1].name == key and groups[-1].stop == start:
            last = groups.pop()
            groups.append(ParameterGroup(key, last.start, stop, (*last.tensors, name)))
        else:
            groups.append(ParameterGroup(key, start, stop, (name,)))
        start = stop
    return groups


# --------------------------------------------------------------------------------------------
# Per-group contributions


class GroupContributions:
    """``C`` at any λ: ``(M, n_train, n_queries)`` float64, on the CPU."""

    def at(self, regularization: float | None = None) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class DotContributions(GroupContributions):
    """Contributions with no λ (Grad-Dot, TracIn): stored as they are."""

    values: torch.Tensor  #: ``(M, n_train, n_queries)``

    def at(self, regularization: float | None = None) -> torch.Tensor:
        """The stored contributions (λ plays no part)."""
        return self.values


@dataclasses.dataclass(frozen=True)
class SpectralContributions(GroupContributions):
    """``C_j(λ) = sign · L diag(1/(e+λ)) R_j``, the per-group split of :class:`dahp.attribution.spectral.SpectralFactors`."""

    left: torch.Tensor  #: ``(n, r)``
    eigenvalues: torch.Tensor  #: ``(r,)``
    rights: torch.Tensor  #: ``(M, r, q)``; their sum over groups is the factors' ``right``
    sign: float = 1.0

    def at(self, regularization: float | None = None) -> torch.Tensor:
        """Contributions at one λ (one batched product)."""
        if regularization is None:
            raise InvalidParameterError("regularization", regularization, "a finite number >= 0 (IFFIM needs λ)")
        check_regularization(regularization)
        scaled = self.rights / (self.eigenvalues + regularization).view(1, -1, 1)
        return self.sign * torch.matmul(self.left.unsqueeze(0), scaled)


@dataclasses.dataclass(frozen=True)
class SummedContributions(GroupContributions):
    """A weighted sum of contributions sharing one set of groups (checkpoints, ensemble members)."""

    parts: tuple[GroupContributions, ...]
    weights: tuple[float, ...]

    def at(self, regularization: float | None = None) -> torch.Tensor:
        """``Σ_c weight_c · part_c.at(λ)``."""
        return sum(w * part.at(regularization) for w, part in zip(self.weights, self.parts))


@dataclasses.dataclass(frozen=True)
class RowWeightedContributions(GroupContributions):
    """Contributions times a weight per training point (TRAK's mean ``1 - p_i``)."""

    inner: GroupContributions
    row_weights: torch.Tensor  #: ``(n_train,)``

    def at(self, regularization: float | None = None) -> torch.Tensor:
        """``row_weights[i] · C_j(q, i)``."""
        return self.inner.at(regularization) * self.row_weights.double().view(1, -1, 1)


#: Gradient coordinates converted to float64 at a time: a float64 copy of all of an MLP's 4,000 training
#: gradients would take 3.5 GB; a block of this many columns takes 4000 x 8192 x 8 B = 262 MB.
COLUMN_BLOCK = 8192


def _column_blocks(group: ParameterGroup, block: int = COLUMN_BLOCK) -> list[slice]:
    return [slice(a, min(a + block, group.stop)) for a in range(group.start, group.stop, block)]


def group_products(
    train: torch.Tensor, queries: torch.Tensor, groups: Sequence[ParameterGroup], block: int = COLUMN_BLOCK
) -> torch.Tensor:
    """``G_[:, j] Q_[:, j]ᵀ`` for every group in float64: ``(M, n_train, n_queries)``.

    Accumulated over blocks of ``block`` coordinates, each converted to float64 on its own, so the
    float32 features are never copied whole.
    """
    out = torch.zeros(len(groups), len(train), len(queries), dtype=torch.float64)
    for j, g in enumerate(groups):
        for cols in _column_blocks(g, block):
            out[j] += train[:, cols].double() @ queries[:, cols].double().T
    return out


def dot_contributions(
    train: torch.Tensor, queries: torch.Tensor, groups: Sequence[ParameterGroup], sign: float = 1.0
) -> torch.Tensor:
    """``sign · G_[:, j] Q_[:, j]ᵀ`` for every group: ``(M, n_train, n_queries)`` float64."""
    return sign * group_products(train, queries, groups)


def group_rights(
    eig: Eigendecomposition, train: torch.Tensor, queries: torch.Tensor, groups: Sequence[ParameterGroup]
) -> torch.Tensor:
    """Per-group right factors ``R_j`` with ``Σ_j R_j = R`` of :func:`dahp.attribution.spectral.factors`: ``(M, r, q)``.

    Dual form (push-through): ``R_j = Vᵀ G_[:, j] g_jᵀ``; primal (or curvature) form:
    ``R_j = W_[j]ᵀ g_jᵀ`` with ``W_[j]`` the eigenvector rows of group ``j``.
    """
    vectors = eig.vectors.double()
    if eig.form == "dual":
        return torch.einsum("nr,mnq->mrq", vectors, group_products(train, queries, groups))
    rights = torch.zeros(len(groups), vectors.shape[1], len(queries), dtype=torch.float64)
    for j, g in enumerate(groups):
        for cols in _column_blocks(g):
            rights[j] += vectors[cols].T @ queries[:, cols].double().T
    return rights


def spectral_contributions(
    eig: Eigendecomposition,
    train: torch.Tensor,
    queries: torch.Tensor,
    groups: Sequence[ParameterGroup],
    sign: float = 1.0,
) -> SpectralContributions:
    """Per-group contributions of ``sign · G (C + λI)⁻¹ Qᵀ`` for every λ, from one eigendecomposition."""
    left = eig.vectors.double() if eig.form == "dual" else train.double() @ eig.vectors.double()
    return SpectralContributions(left, eig.eigenvalues.double(), group_rights(eig, train, queries, groups), sign)


def projected_rights(eig: Eigendecomposition, train: torch.Tensor, per_group: torch.Tensor) -> torch.Tensor:
    """Right factors of projected per-group queries ``φ_j`` (``(M, q, p)``, ``Σ_j φ_j = φ``): ``(M, r, q)``.

    Dual form: ``Vᵀ Φ φ_jᵀ``; primal: ``Wᵀ φ_jᵀ`` -- :func:`dahp.attribution.spectral.factors` applied to each ``φ_j``.
    """
    vectors, phi = eig.vectors.double(), per_group.double()
    if eig.form == "dual":
        return torch.stack([vectors.T @ (train.double() @ part.T) for part in phi])
    return torch.stack([vectors.T @ part.T for part in phi])


def projection_matrix(n_features: int, projection: Projection, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Gaussian projection matrix of ``projection``, normalised, on the CPU: ``(n_features, dim)``,
    ``project(x) = x @ P``.

    Drawn block by block as :func:`dahp.attribution.features.project_on_device` draws it (by the generator the
    features were projected with), so that the rows of a group can be applied to that group's
    coordinates alone.
    """
    width = min(projection.dim, PROJECTOR_BLOCK)
    blocks = []
    for block in range(math.ceil(projection.dim / width)):
        first, last = block * width, min((block + 1) * width, projection.dim)
        drawn = projection_block(n_features, projection, block, dtype, projection.generator)
        blocks.append(drawn[:, : last - first].cpu())
    return torch.cat(blocks, dim=1) / math.sqrt(projection.dim)


def project_by_group(rows: torch.Tensor, matrix: torch.Tensor, groups: Sequence[ParameterGroup]) -> torch.Tensor:
    """``φ_j = g_[j]ᵀ P`` for every group: ``(M, q, p)`` (their sum over groups is ``g P``)."""
    return torch.stack([rows[:, g.start : g.stop] @ matrix[g.start : g.stop] for g in groups])


# --------------------------------------------------------------------------------------------
# Contributions on a setting of this package (from the cached features)


def _check_learnable(attributor: str, params: Any) -> None:
    if attributor not in LEARNABLE:
        raise InvalidParameterError("attributor", attributor, LEARNABLE)
    if attributor != "trak" and getattr(params, "proj_dim", None) is not None:
        raise InvalidParameterError(
            "proj_dim",
            params.proj_dim,
            f"None for {attributor} (per-group contributions of projected features: TRAK only)",
        )
    if getattr(params, "normalization", False):
        raise InvalidParameterError("normalization", params.normalization, "False (Grad-Cos is not implemented)")


@torch.no_grad()
def predicted_labels(
    setting: Setting, state: dict[str, torch.Tensor], x: torch.Tensor, device: str | torch.device | None = None
) -> torch.Tensor:
    """The class ``state``'s model predicts for each input of ``x`` (on the CPU)."""
    device = resolve_device(device)
    dtype = next(iter(state.values())).dtype
    model = setting.make_model().to(dtype).eval().to(device)
    model.load_state_dict(state)
    return model(as_model_input(x, dtype, device)).argmax(-1).cpu()


def _query_rows(
    setting: Setting,
    state: dict[str, torch.Tensor],
    spec: dict,
    split: str,
    labels: str,
    cache: Cache,
    progress: bool,
    device: torch.device,
) -> torch.Tensor:
    """Raw target gradients of the queries of ``split``: cached with true labels, computed with predicted."""
    if labels == "true":
        kw = dict(cache=cache, progress=progress, device=device)
        return gradient_features(setting, state, spec, split, "target", (None,), **kw)[None]
    x, _ = setting.data().queries(split)
    y = predicted_labels(setting, state, x, device)
    return per_example_gradients(setting, state, x, y, setting.target, device=device)


def setting_contributions(
    setting: Setting,
    attributor: str,
    params: Any = None,
    split: str = "val",
    config: GroupWeightConfig | None = None,
    cache: Cache | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> GroupContributions:
    """Per-group contributions of ``attributor`` on ``setting``'s queries of ``split``.

    Grad-Dot and TracIn: ``-lr · G_[:, j] g_jᵀ`` summed over the selected checkpoints (dattri's
    TracIn, in this package's sign); IFFIM: the spectral split of ``-G (F + λI)⁻¹ gᵀ`` at the
    attributed checkpoint, from the same cached features and eigendecomposition as
    :func:`dahp.attribution.attributors.scorer`; TRAK: see the module docstring. Of ``config`` only ``grouping``,
    ``labels`` and the bound ``k <= n_train`` matter here; with ``labels == "predicted"`` the query gradients are formed at the
    classes the attributed model predicts (not cached).
    """

    params = make_params(attributor) if params is None and attributor in LEARNABLE else params
    _check_learnable(attributor, params)
    check_params(setting, params)
    config = config or GroupWeightConfig()
    config.check_n_train(len(setting.data().x_train))  # the fit will rank these; refuse k > n now
    labels = config.labels
    groups = parameter_groups(setting.make_model(), config.grouping)
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    kw = dict(cache=cache, progress=progress, device=device)
    if attributor == "iffim":
        epoch = params.training_epoch or setting.recipe.epochs
        state, spec = full_data_state(setting, 0, epoch, cache, progress, device)
        train = gradient_features(setting, state, spec, "train", "loss", (None,), **kw)[None]
        queries = _query_rows(setting, state, spec, split, labels, cache, progress, device)
        eig_spec = {**spec, "kind": "loss", "proj_dim": None, "proj_seed": params.proj_seed}
        eig = _cached_eigendecomposition(cache, eig_spec, train, gram_scale("iffim", len(train)), device)
        return spectral_contributions(eig, train, queries, groups, sign=-1.0)
    if attributor == "trak":
        return _trak_contributions(setting, params, split, labels, groups, cache, progress, device)

    checkpoints = train_full(setting, 0, cache, progress, device=device)
    total = None
    for epoch in params.epochs(checkpoints.epochs):
        state, spec = full_data_state(setting, 0, epoch, cache, progress, device)
        train = gradient_features(setting, state, spec, "train", "loss", (None,), **kw)[None]
        queries = _query_rows(setting, state, spec, split, labels, cache, progress, device)
        part = dot_contributions(train, queries, groups, sign=-float(setting.recipe.lr))
        total = part if total is None else total + part
    return DotContributions(total)


def _trak_contributions(
    setting: Setting,
    params: Any,
    split: str,
    labels: str,
    groups: list[ParameterGroup],
    cache: Cache,
    progress: bool,
    device: torch.device,
) -> GroupContributions:
    """TRAK's per-group contributions: each member's cached projected training features and
    eigendecomposition, its query gradients projected group by group with the member's own matrix
    (not cached), averaged over members and multiplied by the mean ``1 - p_i``, as
    :func:`dahp.attribution.attributors.trak_scorer` does."""

    epoch = params.training_epoch or setting.recipe.epochs
    scale = feature_scale("trak", setting.n_params())
    x, y = setting.data().queries(split)
    parts, row_weights = [], []
    for k in range(params.ensemble_size):
        state, spec = full_data_state(setting, k, epoch, cache, progress, device)
        kw = dict(seed=params.proj_seed, ensemble_id=k, cache=cache, progress=progress, device=device)
        train = gradient_features(setting, state, spec, "train", "trak", (params.proj_dim,), **kw)[params.proj_dim]
        eig_spec = {**spec, "kind": "trak", "proj_dim": params.proj_dim, "proj_seed": params.proj_seed}
        eig = _cached_eigendecomposition(
            cache, {**eig_spec, "ensemble_id": k}, train, gram_scale("trak", len(train)), device
        )
        labels_k = y if labels == "true" else predicted_labels(setting, state, x, device)
        if params.proj_dim is None:
            queries = per_example_gradients(setting, state, x, labels_k, setting.target, scale, device=device)
            parts.append(spectral_contributions(eig, train, queries, groups))
        else:
            projection = Projection(params.proj_dim, params.proj_seed, k, projection_generator(device))
            matrix = projection_matrix(setting.n_params(), projection)
            chunks: list[torch.Tensor] = []

            def sink(_: int, rows: torch.Tensor, matrix: torch.Tensor = matrix, chunks: list = chunks) -> None:
                chunks.append(project_by_group(rows.cpu(), matrix, groups))

            per_example_gradients(setting, state, x, labels_k, setting.target, scale, sink=sink, device=device)
            rights = projected_rights(eig, train, torch.cat(chunks, dim=1))
            left = eig.vectors.double() if eig.form == "dual" else train.double() @ eig.vectors.double()
            parts.append(SpectralContributions(left, eig.eigenvalues.double(), rights))
        row_weights.append(one_minus_correct_probability(setting, state, device))
    mean = SummedContributions(tuple(parts), (1.0 / len(parts),) * len(parts))
    return RowWeightedContributions(mean, torch.stack(row_weights).mean(0))


# --------------------------------------------------------------------------------------------
# The objective and its fit


def weighted_scores(contributions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_j w_j C_j``: ``(n_train, n_queries)``."""
    return torch.einsum("m,mnq->nq", weights.to(contributions.dtype), contributions)


def relative_weights(theta: torch.Tensor) -> torch.Tensor:
    """``M · softmax(θ)``: weights of mean 1 (θ = 0 gives 1 everywhere)."""
    return len(theta) * torch.softmax(theta, dim=0)


def query_objective(scores: torch.Tensor, k: int, signal: str = "top") -> torch.Tensor:
    """``L_q = -(1/k) Σ_{i ∈ T_k} s_i / ‖s‖₂`` for each query (column) of ``scores``: ``(n_queries,)``.

    ``T_k`` is the top-k of the current scores (recomputed at each call; not differentiated). With
    ``signal == "top_and_bottom"`` the numerator is ``(mean of the top-k - mean of the bottom-k) / 2``
    (the mean |s| over both tails when the top scores are positive and the bottom ones negative).
    Either way ``|L_q| <= 1/√k``. A query whose scores are all zero has ``L_q = 0``.
    """
    if signal not in SIGNALS:
        raise InvalidParameterError("signal", signal, SIGNALS)
    top = scores.topk(k, dim=0).values.mean(0)
    if signal == "top_and_bottom":
        top = (top - scores.topk(k, dim=0, largest=False).values.mean(0)) / 2
    norm = scores.norm(dim=0)
    return -top / norm.clamp_min(torch.finfo(scores.dtype).tiny)


def objective(
    theta: torch.Tensor, contributions: torch.Tensor, k: int, weight_penalty: float = 0.0, signal: str = "top"
) -> torch.Tensor:
    """The fitted objective: ``mean_q L_q(w) + λ_w ‖softmax(θ)‖²``."""
    value = query_objective(weighted_scores(contributions, relative_weights(theta)), k, signal).mean()
    if weight_penalty:
        value = value + weight_penalty * torch.softmax(theta, dim=0).pow(2).sum()
    return value


@dataclasses.dataclass(frozen=True)
class WeightFit:
    """The learned logits, the weights (mean 1) and the objective before each step and after the last."""

    theta: torch.Tensor
    weights: torch.Tensor
    trace: list[float]
    seconds: float  #: wall time of the fit (the contributions already formed)


def fit_weights(contributions: torch.Tensor, config: GroupWeightConfig | None = None) -> WeightFit:
    """Adam on θ over the validation contributions ``(M, n_train, n_queries)`` (full batch)."""
    config = config or GroupWeightConfig()
    config.check_n_train(contributions.shape[1])
    start = time.perf_counter()
    contributions = contributions.double()
    theta = torch.full((contributions.shape[0],), float(config.init), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=config.lr)
    trace: list[float] = []
    for _ in range(config.steps):
        optimizer.zero_grad()
        value = objective(theta, contributions, config.k, config.weight_penalty, config.signal)
        trace.append(float(value.detach()))
        value.backward()
        optimizer.step()
    with torch.no_grad():
        trace.append(float(objective(theta, contributions, config.k, config.weight_penalty, config.signal)))
        theta = theta.detach().clone()
        return WeightFit(theta, relative_weights(theta), trace, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# For a user's dattri AttributionTask


@dataclasses.dataclass(frozen=True)
class LearnedWeights:
    """What :func:`learn_group_weights` found."""

    attributor: str
    regularization: float | None  #: λ of IFFIM (None for Grad-Dot)
    groups: list[ParameterGroup]
    weights: torch.Tensor  #: ``(M,)``, mean 1; uniform weights are 1
    trace: list[float]  #: the objective before each Adam step and after the last
    config: GroupWeightConfig
    seconds: dict[str, float]  #: ``"contributions"`` (gradients, factorization) and ``"fit"``
    score: Callable[[Iterable], torch.Tensor]  #: query loader -> ``(n_train, n_queries)`` weighted scores

    def weights_by_group(self) -> dict[str, float]:
        """Group name -> weight."""
        return {g.name: float(w) for g, w in zip(self.groups, self.weights)}


def _with_predicted_labels(task, loader: Iterable) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of ``loader`` (``(inputs, labels)``) with the labels the last checkpoint predicts."""
    task.get_param(ckpt_idx=len(task.get_checkpoints()) - 1)  # loads that checkpoint into the model
    model = task.get_model()
    where = next(model.parameters()).device  # the forward pass runs where the task keeps its model
    out = []
    with torch.no_grad():
        for x, _ in loader:
            out.append((x, model(x.to(where)).argmax(-1).cpu()))
    return out


@dataclasses.dataclass
class _TaskMember:
    """The training side of one checkpoint: loss gradients and (IFFIM) their eigendecomposition."""

    params: torch.Tensor
    train: torch.Tensor
    eig: Eigendecomposition | None


def _task_contributions(
    task, members: list[_TaskMember], loader: Iterable, groups: list[ParameterGroup], device: torch.device
) -> GroupContributions:
    """Per-group contributions of the queries in ``loader``, summed (Grad-Dot) or averaged (IFFIM) over checkpoints."""
    target = task.get_grad_target_func(in_dims=(None, 0))
    parts: list[GroupContributions] = []
    for m in members:
        queries = task_gradient_rows(target, m.params, loader, device=device).cpu()
        if m.eig is None:
            parts.append(DotContributions(dot_contributions(m.train, queries, groups, sign=-1.0)))
        else:
            parts.append(spectral_contributions(m.eig, m.train, queries, groups, sign=-1.0))
    weight = 1.0 if members[0].eig is None else 1.0 / len(members)
    return SummedContributions(tuple(parts), (weight,) * len(parts))


def learn_group_weights(
    task,
    train_loader: Iterable,
    val_loader: Iterable,
    attributor: str = "grad_dot",
    regularization: float | None = None,
    config: GroupWeightConfig | None = None,
    device: str | torch.device | None = None,
) -> LearnedWeights:
    """Learn one weight per parameter group of ``task``'s model from its validation queries.

    Args:
        task: a ``dattri.task.AttributionTask``; its loss gradients represent training points, its
            target gradients the queries. Several checkpoints: Grad-Dot sums over them (TracIn with
            unit learning rates), IFFIM averages; one weight vector is shared.
        train_loader: the training points (not shuffled); batches as the task's functions take them.
        val_loader: held-out queries -- never the queries the attribution will be judged on. With
            ``config.labels == "predicted"`` its batches must be ``(inputs, labels)`` and the model
            must accept the inputs as batched; the labels are replaced by its predictions.
        attributor: ``"grad_dot"`` or ``"iffim"``.
        regularization: IFFIM's λ on the empirical Fisher of the mean loss (default: IFFIM's
            default, :class:`dahp.attribution.attributors.IFFIMParams`); must be None for Grad-Dot.
        config: the objective and optimiser (:class:`GroupWeightConfig`; defaults: spec §4).
        device: where gradients and the eigendecomposition run.

    Returns:
        :class:`LearnedWeights`; its ``score(loader)`` gives the weighted scores of new queries
        (this package's sign: positive supports the query's target).
    """

    config = config or GroupWeightConfig()
    if attributor not in TASK_ATTRIBUTORS:
        raise InvalidParameterError("attributor", attributor, TASK_ATTRIBUTORS)
    if attributor == "grad_dot" and regularization is not None:
        raise InvalidParameterError("regularization", regularization, "None with attributor='grad_dot' (no λ)")
    if attributor == "iffim":
        regularization = IFFIMParams().regularization if regularization is None else regularization
        check_regularization(regularization)
    n_train = sum(len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch) for batch in train_loader)
    config.check_n_train(n_train)
    device = resolve_device(device)
    groups = parameter_groups(task.get_model(), config.grouping)

    start = time.perf_counter()
    loss_grad = task.get_grad_loss_func(in_dims=(None, 0))
    members = []
    for k in range(len(task.get_checkpoints())):
        params, _ = task.get_param(ckpt_idx=k)
        params = params.detach().to(device)
        train = task_gradient_rows(loss_grad, params, train_loader, device=device).cpu()
        eig = eigendecompose(train, gram_scale("iffim", len(train)), device=device) if attributor == "iffim" else None
        members.append(_TaskMember(params, train, eig))
    queries = _with_predicted_labels(task, val_loader) if config.labels == "predicted" else val_loader
    contributions = _task_contributions(task, members, queries, groups, device).at(regularization)
    formed = time.perf_counter() - start
    fit = fit_weights(contributions, config)
    weights = fit.weights

    def score(loader: Iterable) -> torch.Tensor:
        return weighted_scores(_task_contributions(task, members, loader, groups, device).at(regularization), weights)

    seconds = {"contributions": formed, "fit": fit.seconds}
    return LearnedWeights(attributor, regularization, groups, weights, fit.trace, config, seconds, score)
