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
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from dahp.attribution.spectral import Eigendecomposition, SpectralFactors, check_regularization, eigendecompose
from dahp.core.cache import Cache, default_cache
from dahp.core.config import InvalidParameterError
from dahp.core.device import resolve_device
from dahp.data.settings import Setting, as_model_input
from dahp.methods.weight_fit import GROUPINGS, LABELS, GroupWeightConfig, fit_weights, weighted_scores
from dahp.training.train import train_full

#: Attributors whose per-group contributions are implemented.
LEARNABLE = ("grad_dot", "tracin", "iffim", "trak")
#: Attributors a user's ``AttributionTask`` can learn weights for (:func:`learn_group_weights`).
TASK_ATTRIBUTORS = ("grad_dot", "iffim")


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


def regroup(
    contributions: torch.Tensor, fine: Sequence[ParameterGroup], coarse: Sequence[ParameterGroup]
) -> torch.Tensor:
    """Contributions of ``coarse`` groups from those of ``fine`` ones (``(M_fine, n, q)`` -> ``(M_coarse, n, q)``).

    The score is linear in the query gradient, so a coarse group's contribution is the sum of those of the
    fine groups it contains (per-layer from per-tensor); every fine group must lie inside exactly one coarse group.
    """
    out = torch.zeros(len(coarse), *contributions.shape[1:], dtype=contributions.dtype)
    for j, g in enumerate(fine):
        inside = [c for c, big in enumerate(coarse) if big.start <= g.start and g.stop <= big.stop]
        if len(inside) != 1:
            raise InvalidParameterError("coarse", g.name, "groups that each contain whole fine groups")
        out[inside[0]] += contributions[j]
    return out


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
    if attributor not in ("trak", "iffim") and getattr(params, "proj_dim", None) is not None:
        raise InvalidParameterError(
            "proj_dim",
            params.proj_dim,
            f"None for {attributor} (per-group contributions of projected features: TRAK and IFFIM only)",
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


@dataclasses.dataclass(frozen=True)
class QuerySet:
    """Queries whose contributions are formed: those of ``split`` (at ``index``, or all), with true or predicted labels."""

    split: str
    labels: str = "true"
    index: torch.Tensor | None = None  #: positions within the split (None: every query)


@dataclasses.dataclass(frozen=True)
class GroupProjector:
    """A projection of gradient rows that keeps track of the groups (``project(x) = x @ P``, P of shape ``(d, D)``).

    ``shared``: one ``(d, p)`` matrix for every coordinate, a group's part ``x_[j] P_[j]`` lives in the shared
    ``p`` dimensions; ``per_group``: group ``j`` gets its own block of ``D`` (its own matrix, or its coordinates
    unchanged when the group is no larger than the dimension), so its part is zero outside that block.
    """

    groups: tuple[ParameterGroup, ...]
    matrices: tuple[torch.Tensor | None, ...]  #: per group (``per_group``; None: kept unprojected) or one (``shared``)
    shared: bool

    @property
    def blocks(self) -> list[slice]:
        """Columns of each group's block in the projected features (``per_group`` only)."""
        out, start = [], 0
        for g, m in zip(self.groups, self.matrices):
            width = g.size if m is None else m.shape[1]
            out.append(slice(start, start + width))
            start += width
        return out

    @property
    def dim(self) -> int:
        """``D``, the projected dimension."""
        return self.matrices[0].shape[1] if self.shared else self.blocks[-1].stop

    def _part(self, rows: torch.Tensor, j: int) -> torch.Tensor:
        g, m = self.groups[j], self.matrices[0] if self.shared else self.matrices[j]
        sub = rows[:, g.start : g.stop]
        return sub @ (m[g.start : g.stop] if self.shared else m) if m is not None else sub

    def features(self, rows: torch.Tensor) -> torch.Tensor:
        """Projected rows ``(n, D)``."""
        if self.shared:
            return rows @ self.matrices[0]
        return torch.cat([self._part(rows, j) for j in range(len(self.groups))], dim=1)

    def by_group(self, rows: torch.Tensor) -> torch.Tensor:
        """Each group's part ``(M, n, D)``; their sum over groups is :meth:`features`."""
        if self.shared:
            return torch.stack([self._part(rows, j) for j in range(len(self.groups))])
        out = torch.zeros(len(self.groups), len(rows), self.dim, dtype=rows.dtype)
        for j, block in enumerate(self.blocks):
            out[j, :, block] = self._part(rows, j)
        return out


def shared_projector(n_params: int, projection: Projection, groups: Sequence[ParameterGroup]) -> GroupProjector:
    """The attributor's own single projection (the matrix its cached features were projected with)."""
    return GroupProjector(tuple(groups), (projection_matrix(n_params, projection),), True)


#: Seed offset between the groups' own matrices of a ``per_group`` projection (above dattri's block offsets).
GROUP_SEED_STRIDE = 10_000_000


def per_group_projector(
    groups: Sequence[ParameterGroup], dim: int | None, seed: int = 0, ensemble_id: int = 0
) -> GroupProjector:
    """Each group projected on its own to ``min(size, dim)`` (a group no larger than ``dim``, or every group
    when ``dim`` is None, is kept unprojected), each with its own Gaussian matrix."""
    matrices = []
    for j, g in enumerate(groups):
        if dim is None or g.size <= dim:
            matrices.append(None)
        else:
            own = Projection(dim, seed + GROUP_SEED_STRIDE * (j + 1), ensemble_id)
            matrices.append(projection_matrix(g.size, own))
    return GroupProjector(tuple(groups), tuple(matrices), False)


def streamed_train_features(
    setting: Setting,
    state: dict[str, torch.Tensor],
    fn,
    scale: float,
    consume: Callable[[int, torch.Tensor], None],
    device: torch.device,
) -> None:
    """Hand the training gradients to ``consume(start_row, rows_on_cpu)`` chunk by chunk, never holding them all."""
    data = setting.data()

    def sink(start: int, rows: torch.Tensor) -> None:
        consume(start, rows.cpu())

    per_example_gradients(setting, state, data.x_train, data.y_train, fn, scale, sink=sink, device=device)


def streamed_dot_contributions(
    setting: Setting,
    state: dict[str, torch.Tensor],
    query_sets: Sequence[torch.Tensor],
    groups: Sequence[ParameterGroup],
    sign: float,
    device: torch.device,
) -> list[torch.Tensor]:
    """``sign · G_[:, j] Q_[:, j]ᵀ`` for several query sets in one pass over the training loss gradients.

    The training gradients are formed chunk by chunk and never kept (the MLP's would take 1.75 GB); each
    product is taken in float32 over one group's coordinates and stored in float64.
    """
    n_train = len(setting.data().x_train)
    outs = [torch.zeros(len(groups), n_train, len(q), dtype=torch.float64) for q in query_sets]
    together = torch.cat([q.float() for q in query_sets])
    widths = [len(q) for q in query_sets]

    def consume(start: int, rows: torch.Tensor) -> None:
        rows = rows.float()
        for j, g in enumerate(groups):
            product = (rows[:, g.start : g.stop] @ together[:, g.start : g.stop].T).double()
            for out, part in zip(outs, product.split(widths, dim=1)):
                out[j, start : start + len(rows)] = sign * part

    streamed_train_features(setting, state, setting.loss, 1.0, consume, device)
    return outs


def projected_contributions(
    eig: Eigendecomposition, train: torch.Tensor, parts: torch.Tensor, sign: float = 1.0
) -> SpectralContributions:
    """Per-group contributions from projected training features ``train`` ``(n, D)`` and the queries' per-group
    projected parts ``(M, q, D)`` (summing to the projected queries)."""
    left = eig.vectors.double() if eig.form == "dual" else train.double() @ eig.vectors.double()
    return SpectralContributions(left, eig.eigenvalues.double(), projected_rights(eig, train, parts), sign)


def _query_inputs(
    setting: Setting, state: dict[str, torch.Tensor], request: QuerySet, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels of a query set (labels: the true class, or the one ``state``'s model predicts)."""
    x, y = setting.data().queries(request.split)
    if request.index is not None:
        x, y = x[request.index], y[request.index]
    return x, (y if request.labels == "true" else predicted_labels(setting, state, x, device))


def _projected_parts(
    setting: Setting,
    state: dict[str, torch.Tensor],
    request: QuerySet,
    scale: float,
    projector: GroupProjector,
    device: torch.device,
) -> torch.Tensor:
    """The per-group projected target gradients ``(M, q, D)`` of a query set (the raw rows never all kept)."""
    x, y = _query_inputs(setting, state, request, device)
    chunks: list[torch.Tensor] = []

    def sink(_: int, rows: torch.Tensor) -> None:
        chunks.append(projector.by_group(rows.cpu()))

    per_example_gradients(setting, state, x, y, setting.target, scale, sink=sink, device=device)
    return torch.cat(chunks, dim=1)


def _raw_query_rows(
    setting: Setting,
    state: dict[str, torch.Tensor],
    spec: dict,
    request: QuerySet,
    cache: Cache,
    progress: bool,
    device: torch.device,
) -> torch.Tensor:
    """Raw target gradients of a query set: the split's cached rows (true labels), or computed (predicted)."""
    rows = _query_rows(setting, state, spec, request.split, request.labels, cache, progress, device)
    return rows if request.index is None else rows[request.index]


def setting_contributions(
    setting: Setting,
    attributor: str,
    params: Any = None,
    split: str = "val",
    config: GroupWeightConfig | None = None,
    cache: Cache | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
    query_index: torch.Tensor | None = None,
) -> GroupContributions:
    """Per-group contributions of ``attributor`` on ``setting``'s queries of ``split`` (at ``query_index``, or all).

    One query set of :func:`setting_contributions_many`; ``config.labels`` picks the query labels.
    """
    config = config or GroupWeightConfig()
    request = {split: QuerySet(split, config.labels, query_index)}
    return setting_contributions_many(setting, attributor, params, request, config, cache, progress, device)[split]


def setting_contributions_many(
    setting: Setting,
    attributor: str,
    params: Any,
    queries: Mapping[str, QuerySet],
    config: GroupWeightConfig | None = None,
    cache: Cache | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, GroupContributions]:
    """Per-group contributions of ``attributor`` for several query sets (name -> :class:`QuerySet`), sharing
    one pass over the training gradients.

    Grad-Dot and TracIn: ``-lr · G_[:, j] g_jᵀ`` summed over the selected checkpoints (dattri's TracIn, in
    this package's sign), the training gradients streamed and never stored. IFFIM: the spectral split of
    ``-G (F + λI)⁻¹ gᵀ`` at the attributed checkpoint from the cached features and eigendecomposition of
    :func:`dahp.attribution.attributors.scorer` (with ``params.proj_dim``: its projected features, and each
    query's gradient projected group by group with the same matrix). TRAK: see the module docstring. With
    ``config.projection == "per_group"`` (projected IFFIM, TRAK) each group is projected on its own instead
    (:func:`per_group_projector`, not cached). Of ``config`` only ``grouping``, ``projection`` and the bound
    ``k <= n_train`` matter here; the labels are each query set's.
    """

    params = make_params(attributor) if params is None and attributor in LEARNABLE else params
    _check_learnable(attributor, params)
    check_params(setting, params)
    config = config or GroupWeightConfig()
    config.check_n_train(len(setting.data().x_train))  # the fit will rank these; refuse k > n now
    for request in queries.values():
        if request.labels not in LABELS:
            raise InvalidParameterError("labels", request.labels, LABELS)
    groups = parameter_groups(setting.make_model(), config.grouping)
    device = resolve_device(device)
    cache = default_cache() if cache is None else cache
    if attributor in ("iffim", "trak"):
        return _spectral_contributions(setting, attributor, params, queries, config, groups, cache, progress, device)

    checkpoints = train_full(setting, 0, cache, progress, device=device)
    totals: dict[str, torch.Tensor] = {}
    for epoch in params.epochs(checkpoints.epochs):
        state, spec = full_data_state(setting, 0, epoch, cache, progress, device)
        rows = [_raw_query_rows(setting, state, spec, r, cache, progress, device) for r in queries.values()]
        parts = streamed_dot_contributions(setting, state, rows, groups, -float(setting.recipe.lr), device)
        for name, part in zip(queries, parts):
            totals[name] = part if name not in totals else totals[name] + part
    return {name: DotContributions(total) for name, total in totals.items()}


def _spectral_contributions(
    setting: Setting,
    attributor: str,
    params: Any,
    queries: Mapping[str, QuerySet],
    config: GroupWeightConfig,
    groups: list[ParameterGroup],
    cache: Cache,
    progress: bool,
    device: torch.device,
) -> dict[str, GroupContributions]:
    """IFFIM (one member, loss features, sign -1) or TRAK (its ensemble, margin features scaled by
    ``1/sqrt(#params)``, averaged and weighted by the mean ``1 - p_i``), per query set."""
    trak = attributor == "trak"
    epoch = params.training_epoch or setting.recipe.epochs
    kind = "trak" if trak else "loss"
    train_scale = feature_scale(kind, setting.n_params())
    query_scale = feature_scale("trak" if trak else "target", setting.n_params())
    attributor_scale = gram_scale(attributor, len(setting.data().x_train))
    sign = 1.0 if trak else -1.0
    proj_dim = params.proj_dim
    per_group = config.projection == "per_group" and proj_dim is not None
    parts: dict[str, list[GroupContributions]] = {name: [] for name in queries}
    row_weights = []
    for k in range(params.ensemble_size if trak else 1):
        state, spec = full_data_state(setting, k, epoch, cache, progress, device)
        kw = dict(seed=params.proj_seed, ensemble_id=k, cache=cache, progress=progress, device=device)
        eig_spec = {**spec, "kind": kind, "proj_dim": proj_dim, "proj_seed": params.proj_seed}
        if trak:
            eig_spec["ensemble_id"] = k
        if per_group:
            projector = per_group_projector(groups, proj_dim, params.proj_seed, k)
            chunks: list[torch.Tensor] = []
            fn = setting.target if trak else setting.loss
            streamed_train_features(
                setting, state, fn, train_scale, lambda _, rows: chunks.append(projector.features(rows)), device
            )
            train = torch.cat(chunks)
            eig = eigendecompose(train, attributor_scale, device=device)
        else:
            train = gradient_features(setting, state, spec, "train", kind, (proj_dim,), **kw)[proj_dim]
            eig = _cached_eigendecomposition(cache, eig_spec, train, attributor_scale, device)
            if proj_dim is not None:
                projection = Projection(proj_dim, params.proj_seed, k, projection_generator(device))
                projector = shared_projector(setting.n_params(), projection, groups)
        for name, request in queries.items():
            if proj_dim is None:
                if trak:
                    x, y = _query_inputs(setting, state, request, device)
                    rows = per_example_gradients(setting, state, x, y, setting.target, query_scale, device=device)
                else:
                    rows = _raw_query_rows(setting, state, spec, request, cache, progress, device)
                parts[name].append(spectral_contributions(eig, train, rows, groups, sign))
            else:
                by_group = _projected_parts(setting, state, request, query_scale, projector, device)
                parts[name].append(projected_contributions(eig, train, by_group, sign))
        if trak:
            row_weights.append(one_minus_correct_probability(setting, state, device))
    out: dict[str, GroupContributions] = {}
    for name, members in parts.items():
        if not trak:
            out[name] = members[0]
            continue
        mean = SummedContributions(tuple(members), (1.0 / len(members),) * len(members))
        out[name] = RowWeightedContributions(mean, torch.stack(row_weights).mean(0))
    return out


def _spectral_parts(contributions) -> list[SpectralContributions]:
    """The per-member spectral contributions of IFFIM (one) or TRAK (one per ensemble member)."""
    if isinstance(contributions, RowWeightedContributions):
        contributions = contributions.inner
    if isinstance(contributions, SummedContributions):
        return list(contributions.parts)
    return [contributions]


def weighted_members(members: Sequence[SpectralFactors], contributions, weights: torch.Tensor) -> list[SpectralFactors]:
    """The validation scorer's spectral factors with query side ``Σ_j w_j R_j`` (ξ of the weighted attributor).

    Checks that the contributions split exactly these factors (``Σ_j R_j = R`` per member).
    """
    parts = _spectral_parts(contributions)
    if len(parts) != len(members):
        raise InvalidParameterError("members", len(members), f"{len(parts)} (one per contribution part)")
    out = []
    for member, part in zip(members, parts):
        # TRAK's scorer projects in float32: agreement to float32 rounding of the largest entry
        gap = float((part.rights.sum(0) - member.right.double()).abs().max())
        if gap > 1e-5 * float(member.right.abs().max()):
            raise InvalidParameterError("contributions", "per-group rights", "a split of the scorer's own factors")
        right = torch.einsum("m,mrq->rq", weights.double(), part.rights)
        out.append(dataclasses.replace(member, right=right.to(member.right.dtype)))
    return out


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
