"""λ for your own model: the ξ selection over any ``dattri.task.AttributionTask`` (no retraining).

Give the task (model, loss, target, one or more checkpoints), a loader of training points and a
loader of validation queries; get back the λ where ξ̄ crosses the threshold, the ξ̄ curve over the
candidates, Algorithm 1's grid pick, and -- when the learning rate and step count of the training
are given -- the training-recipe pick with its ξ̄. λ is returned on the scale of the attributor
asked about: IFFIM adds it to the empirical Fisher of the *mean* training loss; TRAK to ``ΦᵀΦ``
summed over training points with gradients divided by ``sqrt(#parameters)`` (dattri's
``TRAKAttributor``, whose ``regularization`` it can be passed to directly).

Gradients come from the task's own per-example gradient functions; projections from dattri's
projector, one ``ensemble_id`` per checkpoint, as dattri's TRAK draws them. Both, and the
eigendecomposition, run on ``device`` (:func:`dahp.device.resolve_device`): the task's flattened
parameters and every batch are moved there, as dattri's attributors do with ``device=`` (a model
with buffers must itself be on that device, as for dattri).

Book: "The selector on your own model".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from dahp.config import InvalidParameterError
from dahp.device import resolve_device
from dahp.features import Projection, project
from dahp.selection import Selection, mean_xi, recipe_lambda, xi_selection
from dahp.spectral import SpectralFactors, factorize

SELECTABLE = ("iffim", "trak")
RULES = ("xi", "recipe")


@dataclasses.dataclass(frozen=True)
class SelectorResult:
    """What the selector found."""

    attributor: str
    regularization: float  #: the λ to use (the rule asked for)
    rule: str  #: ``"xi"`` (the paper's, default) or ``"recipe"``
    xi_pick: Selection  #: continuous crossing of ξ̄ = threshold
    grid_pick: Selection  #: Algorithm 1 over the candidates
    candidates: list[float]
    xi_bar: np.ndarray  #: ξ̄ at every candidate
    recipe_regularization: float | None  #: 1 / (η_eff T) on this attributor's scale, when lr and steps are given
    recipe_xi_bar: float | None  #: ξ̄ at the recipe pick


def _batches_to_rows(grad_fn, params: torch.Tensor, loader, scale: float, device: torch.device) -> torch.Tensor:
    rows = []
    for batch in loader:
        batch = tuple(t.to(device) for t in batch) if isinstance(batch, (tuple, list)) else batch.to(device)
        rows.append(torch.nan_to_num(grad_fn(params, batch)).detach() * scale)
    return torch.cat(rows)


def task_factors(
    task,
    train_loader,
    val_loader,
    attributor: str,
    proj_dim: int | None = None,
    proj_seed: int = 0,
    device: str | torch.device | None = None,
) -> list[SpectralFactors]:
    """One spectral factorization per checkpoint of ``task`` (IFFIM: loss vs target gradients;
    TRAK: gradients of the task's loss function -- the margin, in dattri's TRAK convention -- and
    of its target, divided by ``sqrt(#parameters)``), computed on ``device``, returned on the CPU."""
    n_params = sum(p.numel() for p in task.get_model().parameters() if p.requires_grad)
    if proj_dim is not None and not (isinstance(proj_dim, int) and 1 <= proj_dim <= n_params):
        raise InvalidParameterError(
            "proj_dim", proj_dim, f"None or an integer in 1..{n_params} (the model's parameter count)"
        )
    device = resolve_device(device)
    scale = 1.0 / math.sqrt(n_params) if attributor == "trak" else 1.0
    members = []
    for k in range(len(task.get_checkpoints())):
        params, _ = task.get_param(ckpt_idx=k)
        params = params.to(device)
        train = _batches_to_rows(task.get_grad_loss_func(in_dims=(None, 0)), params, train_loader, scale, device)
        queries = _batches_to_rows(task.get_grad_target_func(in_dims=(None, 0)), params, val_loader, scale, device)
        if proj_dim is not None:
            projection = Projection(proj_dim, proj_seed, k)
            train, queries = project(train, projection, device), project(queries, projection, device)
        fisher_scale = 1.0 / len(train) if attributor == "iffim" else 1.0
        members.append(factorize(train, queries, scale=fisher_scale, device=device))
    return members


def select_regularization(
    task,
    train_loader,
    val_loader,
    attributor: str = "iffim",
    proj_dim: int | None = None,
    candidates: Sequence[float] | None = None,
    threshold: float = 0.5,
    rule: str = "xi",
    lr: float | None = None,
    steps: int | None = None,
    momentum: float = 0.0,
    proj_seed: int = 0,
    device: str | torch.device | None = None,
) -> SelectorResult:
    """Choose λ for IFFIM or TRAK on ``task`` from the trained model(s) alone.

    Args:
        task: a ``dattri.task.AttributionTask``; each of its checkpoints is one ensemble member.
        train_loader: the training points (not shuffled).
        val_loader: validation queries (not the queries you will evaluate on).
        attributor: ``"iffim"`` or ``"trak"``.
        proj_dim: random projection of the gradients (None: full gradients).
        candidates: λ grid for Algorithm 1 (default: 33 values, 4 per decade, over 12 decades
            ending 10× above the largest eigenvalue).
        threshold: the target ξ̄ (0.5 in the paper).
        rule: which pick to return as ``regularization``: ``"xi"`` or ``"recipe"``.
        lr, steps, momentum: the training's learning rate, number of optimizer steps and momentum,
            for the recipe rule (both picks are reported whenever these are given).
        device: where gradients, projections and the eigendecomposition run (default:
            :func:`dahp.device.resolve_device`); λ does not depend on it beyond rounding.
    """
    if attributor not in SELECTABLE:
        raise InvalidParameterError("attributor", attributor, SELECTABLE)
    if rule not in RULES:
        raise InvalidParameterError("rule", rule, RULES)
    if rule == "recipe" and (lr is None or steps is None):
        raise InvalidParameterError("rule", rule, "'xi', or 'recipe' together with lr and steps")
    device = resolve_device(device)
    members = task_factors(task, train_loader, val_loader, attributor, proj_dim, proj_seed, device)
    top = max(float(m.eigenvalues.max()) for m in members)
    grid = [float(v) for v in (candidates if candidates is not None else top * np.logspace(-11, 1, 33))]
    found = xi_selection(members, grid, threshold)
    recipe = recipe_xi = None
    if lr is not None and steps is not None:
        n_train = members[0].left.shape[0]
        n_params = sum(p.numel() for p in task.get_model().parameters() if p.requires_grad)
        recipe = recipe_lambda(attributor, lr, steps, momentum, n_train, n_params)
        recipe_xi = mean_xi(members, recipe)
    chosen = found.continuous.regularization if rule == "xi" else recipe
    return SelectorResult(
        attributor, chosen, rule, found.continuous, found.grid_pick, grid, found.xi_bar, recipe, recipe_xi
    )
