"""The label-free objective of learned parameter-group weights, and its fit (seed 002; spec:
learned-weights.md §4).

Given per-group contributions ``C`` (``(M, n_train, n_queries)``, formed by
:mod:`dahp.methods.learned_weights`), the weighted scores are ``Σ_j w_j C_j`` with ``w = M · softmax(θ)``
(mean 1: θ = 0 is the attributor itself). Each query's loss is minus the mean of its top-k weighted
scores over their norm; Adam fits θ on all queries at once. This module knows nothing of models or
gradients: only of the contribution tensor and of :class:`GroupWeightConfig`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any

import torch

from dahp.core.config import InvalidParameterError, option

#: How parameters are grouped: one group per tensor, or one per layer (the module owning it).
GROUPINGS = ("tensor", "layer")
#: Labels of the queries the weights are learned on: the true class, or the model's prediction.
LABELS = ("true", "predicted")
#: The objective's signal: the mean of the top-k scores (the paper's), or both tails (the reviewers' variant).
SIGNALS = ("top", "top_and_bottom")
#: How TRAK's (or projected IFFIM's) gradients are split by group: one projection shared by all groups (a group's
#: projected share then carries crosstalk from the others' training gradients), or each group projected on its own
#: (block-diagonal: a group's coordinates meet only its own training coordinates).
PROJECTIONS = ("shared", "per_group")


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
    projection: str = option(
        "shared",
        "TRAK / projected IFFIM: ``shared`` (one projection of all groups) or ``per_group`` (each group projected on "
        "its own to min(its size, proj_dim))",
    )
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
        if self.projection not in PROJECTIONS:
            raise InvalidParameterError("projection", self.projection, PROJECTIONS)

    def check_n_train(self, n_train: int) -> None:
        """``k`` cannot exceed the number of training points ranked per query."""
        if self.k > n_train:
            raise InvalidParameterError("k", self.k, f"an integer in 1..{n_train} (the number of training points)")

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form, written beside results."""
        return dataclasses.asdict(self)


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


class _FitObjective:
    """:func:`objective` for many evaluations over one fixed ``contributions``, at a fraction of the cost.

    The objective is linear in ``w`` once the top-k set is fixed (it is not differentiated):
    ``Σ_{i ∈ T_k} s_i = w · Σ_{i ∈ T_k} C[:, i, q]`` and ``‖s_q‖² = wᵀ G_q w`` with the per-query Gram
    ``G_q = C[:, :, q] C[:, :, q]ᵀ`` (``M × M``, formed once). So each step forms the scores without a
    graph (for the top-k indices only), gathers the ``k`` selected columns, and differentiates a
    function of ``M`` numbers per query instead of the whole ``(n_train, n_queries)`` score matrix.
    Same value and gradient as :func:`objective` up to rounding (tested).
    """

    def __init__(self, contributions: torch.Tensor, k: int, weight_penalty: float = 0.0, signal: str = "top"):
        if signal not in SIGNALS:
            raise InvalidParameterError("signal", signal, SIGNALS)
        # (M, n_queries, n_train), contiguous: the top-k runs along the last, contiguous axis
        self.by_query = contributions.permute(0, 2, 1).contiguous()
        self.gram = torch.einsum("mqn,lqn->qml", self.by_query, self.by_query)
        self.k, self.weight_penalty, self.signal = k, weight_penalty, signal

    def _tail_means(self, scores: torch.Tensor, largest: bool) -> torch.Tensor:
        """``(M, n_queries)``: each group's contribution averaged over the query's top (or bottom) k."""
        index = scores.topk(self.k, dim=1, largest=largest).indices  # (n_queries, k)
        m = self.by_query.shape[0]
        return self.by_query.gather(2, index.unsqueeze(0).expand(m, -1, -1)).mean(2)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        weights = relative_weights(theta)
        with torch.no_grad():
            scores = torch.einsum("m,mqn->qn", weights.detach(), self.by_query)
            tails = self._tail_means(scores, largest=True)
            if self.signal == "top_and_bottom":
                tails = (tails - self._tail_means(scores, largest=False)) / 2
        top = weights @ tails
        square = torch.einsum("m,qml,l->q", weights, self.gram, weights)
        # a query whose scores are all zero has L_q = 0 (the clamp keeps its gradient finite)
        norm = square.clamp_min(torch.finfo(square.dtype).tiny).sqrt()
        value = (-top / norm).mean()
        if self.weight_penalty:
            value = value + self.weight_penalty * torch.softmax(theta, dim=0).pow(2).sum()
        return value


@dataclasses.dataclass(frozen=True)
class WeightFit:
    """The learned logits, the weights (mean 1) and the objective before each step and after the last."""

    theta: torch.Tensor
    weights: torch.Tensor
    trace: list[float]
    seconds: float  #: wall time of the fit (the contributions already formed)
    #: step -> the weights after that many steps, for the steps asked for (the fitting trace's checkpoints)
    checkpoints: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)


def fit_weights(
    contributions: torch.Tensor, config: GroupWeightConfig | None = None, record_at: Iterable[int] = ()
) -> WeightFit:
    """Adam on θ over the validation contributions ``(M, n_train, n_queries)`` (full batch).

    ``record_at``: steps (0 .. ``config.steps``) after which the weights are also kept (:attr:`WeightFit.checkpoints`).
    """
    config = config or GroupWeightConfig()
    config.check_n_train(contributions.shape[1])
    record_at = sorted(set(record_at))
    for step in record_at:
        if not (isinstance(step, int) and 0 <= step <= config.steps):
            raise InvalidParameterError("record_at", step, f"integers in 0..{config.steps} (the fit's steps)")
    start = time.perf_counter()
    contributions = contributions.double()
    theta = torch.full((contributions.shape[0],), float(config.init), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=config.lr)
    fitted = _FitObjective(contributions, config.k, config.weight_penalty, config.signal)
    trace: list[float] = []
    checkpoints: dict[int, torch.Tensor] = {}
    for step in range(config.steps):
        if step in record_at:
            checkpoints[step] = relative_weights(theta.detach().clone())
        optimizer.zero_grad()
        value = fitted(theta)
        trace.append(float(value.detach()))
        value.backward()
        optimizer.step()
    with torch.no_grad():
        trace.append(float(fitted(theta)))
        theta = theta.detach().clone()
        if config.steps in record_at:
            checkpoints[config.steps] = relative_weights(theta)
        return WeightFit(theta, relative_weights(theta), trace, time.perf_counter() - start, checkpoints)
