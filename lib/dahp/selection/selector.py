"""λ for your own model, over any ``dattri.task.AttributionTask``: with no retraining, or with a few.

Give the task (model, loss, target, one or more checkpoints), a loader of training points and a
loader of validation queries; get back every rule's pick (:mod:`dahp.selection.rules`, each with a one-line
diagnosis and its cost), the λ where ξ̄ crosses the threshold, the ξ̄ curve over the candidates,
Algorithm 1's grid pick, and -- when the training's recipe is given -- the training-recipe pick with
its ξ̄. λ is returned on the scale of the attributor asked about: IFFIM adds it to the empirical
Fisher of the *mean* training loss; TRAK to ``ΦᵀΦ`` summed over training points with gradients
divided by ``sqrt(#parameters)`` (dattri's ``TRAKAttributor``, whose ``regularization`` it can be
passed to directly).

Two modes. *No retraining* (the default): the rules that need only the trained model; the default
pick is :data:`dahp.selection.rules.DEFAULT_NO_RETRAINING` (``median_xi_recipe``: the median of the ξ̄ = 0.5
crossing, ξ̄'s saturation point and the training-recipe rule -- the retraining-free rule with the best
worst case on the robustness suite); the paper's rule stays available as ``rule="xi"``. *Small
budget*: pass ``retrain(train_indices, seed)``, which trains your model your way on a subset; the
selector calls it at most ``max_retrainings`` times (default 5) on random halves of the training set,
evaluates each retrained model on the validation queries and adds the budget rules: the grid λ with
the best validation-query LDS, the same choice inside ξ̄'s bracket, and inside the span of
``median_xi_recipe``'s three estimates; the default pick of this mode is
``f"{dahp.selection.rules.DEFAULT_BUDGET}_{max_retrainings}"``. TRAK's scores there leave out its per-training-point factor ``1 − p_i``;
IFFIM's are exact. With a recipe and TRAK, the training points' margins (the task's target function
on the training loader, once per checkpoint) feed ``recipe_gauss_newton``.

Gradients come from the task's own per-example gradient functions; projections from dattri's
projector, one ``ensemble_id`` per checkpoint, as dattri's TRAK draws them. Both, and the
eigendecomposition, run on ``device`` (:func:`dahp.core.device.resolve_device`): the task's flattened
parameters and every batch are moved there, as dattri's attributors do with ``device=`` (a model
with buffers must itself be on that device, as for dattri).

Book: "The selector on your own model".
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dahp.attribution.features import Projection, project, task_gradient_rows
from dahp.attribution.lds import lds
from dahp.attribution.scales import feature_scale, gram_scale, scale_description, selector_grid
from dahp.attribution.spectral import SpectralFactors, factorize
from dahp.core.config import InvalidParameterError
from dahp.core.device import resolve_device
from dahp.core.published import PUBLISHED_DEFAULTS
from dahp.selection import rules
from dahp.selection.algorithm import Selection, check_threshold, mean_xi, xi_selection
from dahp.selection.rules import RecipeFacts, RuleInput, RulePick

SELECTABLE = ("iffim", "trak")


@dataclasses.dataclass(frozen=True)
class SelectorResult:
    """What the selector found."""

    attributor: str
    regularization: float  #: the λ to use (the rule asked for)
    #: ``"xi"`` (the paper's crossing ξ̄ = threshold) or the name of a rule in ``picks``
    rule: str
    xi_pick: Selection  #: continuous crossing of ξ̄ = threshold
    grid_pick: Selection  #: Algorithm 1 over the candidates
    candidates: list[float]
    xi_bar: np.ndarray  #: ξ̄ at every candidate
    #: the recipe rule's λ (:func:`dahp.selection.rules.recipe_rule`) on this attributor's scale, when the recipe is known
    recipe_regularization: float | None
    recipe_xi_bar: float | None  #: ξ̄ at the recipe pick
    #: every rule's pick with its one-line diagnosis and cost (:mod:`dahp.selection.rules`)
    picks: tuple[RulePick, ...] = ()
    mode: str = "no_retraining"  #: ``"no_retraining"`` or ``"budget"`` (``retrain`` was given)
    trainings: int = 0  #: how many times ``retrain`` was called
    retrain_seconds: float = 0.0  #: wall time of those calls and of the retrained models' validation outputs

    def pick(self, rule: str) -> RulePick:
        """The pick of rule ``rule``."""
        for candidate in self.picks:
            if candidate.rule == rule:
                return candidate
        raise InvalidParameterError("rule", rule, [p.rule for p in self.picks])

    def summary(self, curve: bool = False) -> str:
        """The λ to use, on which scale, and the paper's pick beside it, in a few lines (what
        ``python -m dahp select`` prints); with ``curve``, ξ̄ at every candidate first.

        The first line is ``use λ = ...``: :attr:`regularization`, the pick of :attr:`rule` (by default
        :data:`dahp.selection.rules.DEFAULT_NO_RETRAINING`). Then the paper's pick: Algorithm 1 at
        ``ξ̄ = threshold`` on the candidates (:data:`dahp.selection.rules.PAPER_RULE` when the threshold
        is 0.5) and the continuous crossing (``xi_continuous``).
        """
        lines = []
        if curve:
            lines.append(f"{'λ':>12s}  ξ̄")
            for lam, value in zip(self.candidates, self.xi_bar):
                mark = "  <- Algorithm 1" if lam == self.grid_pick.regularization else ""
                lines.append(f"{lam:12.4g}  {value:.3f}{mark}")
        name = self.rule if self.rule != "xi" else f"xi (the ξ̄ = {self.xi_pick.threshold:g} crossing)"
        default = " (the package default without retraining)" if self.rule == rules.DEFAULT_NO_RETRAINING else ""
        lines.append(f"use λ = {self.regularization:.4g}  [{name}{default}]")
        chosen = next((p for p in self.picks if p.rule == self.rule), None)
        if chosen is not None:
            lines.append(f"  why: {chosen.diagnosis}")
        lines.append(f"  scale: {scale_description(self.attributor)}")
        threshold = self.grid_pick.threshold
        paper = rules.PAPER_RULE if threshold == rules.RULES[rules.PAPER_RULE].threshold else f"xi ξ̄ = {threshold:g}"
        lines.append(
            f"the paper's pick (ξ̄ = {threshold:g}): λ = {self.grid_pick.regularization:.4g} [{paper}, Algorithm 1 "
            f"on the candidates, ξ̄ = {self.grid_pick.xi_bar:.3f}]; continuous crossing λ = "
            f"{self.xi_pick.regularization:.4g} [xi_continuous]"
        )
        if self.recipe_regularization is not None:
            lines.append(f"recipe rule: λ = {self.recipe_regularization:.4g} [recipe] (ξ̄ = {self.recipe_xi_bar:.3f})")
        return "\n".join(lines)


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
    scale = feature_scale(attributor, n_params)
    members = []
    for k in range(len(task.get_checkpoints())):
        params, _ = task.get_param(ckpt_idx=k)
        params = params.to(device)
        train = task_gradient_rows(task.get_grad_loss_func(in_dims=(None, 0)), params, train_loader, scale, device)
        queries = task_gradient_rows(task.get_grad_target_func(in_dims=(None, 0)), params, val_loader, scale, device)
        if proj_dim is not None:
            projection = Projection(proj_dim, proj_seed, k)
            train, queries = project(train, projection, device), project(queries, projection, device)
        members.append(factorize(train, queries, scale=gram_scale(attributor, len(train)), device=device))
    return members


def _budget_rules(max_retrainings: int) -> dict[str, rules.Rule]:
    """The budget rules one budget of ``max_retrainings`` models pays for, by name (:func:`rules.budget_rules`)."""
    return {rule.name: rule for rule in rules.budget_rules(max_retrainings)}


def _check_arguments(
    attributor: str,
    rule: str,
    threshold: float,
    candidates: Sequence[float] | None,
    has_recipe: bool,
    retrain: Callable | None,
    max_retrainings: int,
    alpha: float,
    val_outputs: Callable | None,
    fitted: Mapping[str, Mapping[str, float]] | None,
) -> None:
    """Refuse bad arguments before any gradient is computed."""
    if attributor not in SELECTABLE:
        raise InvalidParameterError("attributor", attributor, SELECTABLE)
    check_threshold(threshold)
    if candidates is not None:
        grid = np.asarray(list(candidates), dtype=float)
        if grid.ndim != 1 or len(grid) < 2 or not np.all(np.isfinite(grid)) or not np.all(np.diff(grid) > 0):
            raise InvalidParameterError("candidates", candidates, "at least two finite, strictly ascending λ")
        if grid[0] < 0:
            raise InvalidParameterError("candidates", candidates, "λ >= 0")
    if retrain is not None and not callable(retrain):
        raise InvalidParameterError("retrain", retrain, "None or a function retrain(train_indices, seed) -> model")
    if not (isinstance(max_retrainings, int) and max_retrainings >= 2):
        raise InvalidParameterError("max_retrainings", max_retrainings, "an integer >= 2 (the LDS needs two models)")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise InvalidParameterError("alpha", alpha, "a number in the open interval (0, 1)")
    if val_outputs is not None and not callable(val_outputs):
        raise InvalidParameterError("val_outputs", val_outputs, "None or a function model -> (n_val,) outputs")
    if fitted is not None:
        unknown = sorted(set(fitted) - rules.FITTED)
        if unknown:
            raise InvalidParameterError("fitted", unknown, sorted(rules.FITTED))
    allowed = ["xi", *_free_rule_names(attributor, has_recipe, fitted)]
    if retrain is not None:
        allowed += list(_budget_rules(max_retrainings))
    if rule not in allowed:
        registered = rules.RULES.get(rule) or _budget_rules(max_retrainings).get(rule)
        if registered is not None and "recipe" in registered.needs and not has_recipe:
            raise InvalidParameterError("rule", rule, f"'xi', or {rule!r} together with lr and steps (or recipe=)")
        if registered is not None and registered.retrains and retrain is None:
            raise InvalidParameterError("rule", rule, "a budget rule only together with retrain=")
        raise InvalidParameterError("rule", rule, allowed)


def _free_rule_names(attributor: str, has_recipe: bool, fitted: Mapping | None) -> list[str]:
    """The retraining-free rules the selector runs (fitted rules only with their constants)."""
    names = []
    for name, rule in rules.RULES.items():
        if rule.retrains or (rule.fitted and not (fitted and name in fitted)):
            continue
        if "recipe" in rule.needs and not has_recipe:
            continue
        if attributor not in rule.attributors:
            continue
        names.append(name)
    return names


def _model_params(task, trained) -> tuple[torch.Tensor, Callable]:
    """Flat parameters of a retrained model and the flattened target function to evaluate them with."""
    from dattri.func.utils import flatten_params
    from dattri.task import AttributionTask

    if isinstance(trained, AttributionTask):
        params, _ = trained.get_param(ckpt_idx=len(trained.checkpoints) - 1)
        return params, trained.get_target_func()
    if isinstance(trained, nn.Module):
        named = {k: p for k, p in trained.named_parameters() if p.requires_grad}
    elif isinstance(trained, Mapping):
        wanted = [k for k, p in task.get_model().named_parameters() if p.requires_grad]
        missing = [k for k in wanted if k not in trained]
        if missing:
            raise InvalidParameterError("retrain(...) state dict", missing[:3], "every trainable parameter of the task")
        named = {k: trained[k] for k in wanted}
    else:
        raise InvalidParameterError(
            "retrain(...)", type(trained).__name__, "an nn.Module, its state dict or a dattri AttributionTask"
        )
    return flatten_params({k: v.detach() for k, v in named.items()}), task.get_target_func()


def _validation_outputs(task, trained, val_loader, val_outputs: Callable | None, device) -> torch.Tensor:
    """``(n_val,)`` outputs of a retrained model on the validation queries.

    By default the task's target function per query (vmapped over examples, as dattri's per-example
    gradients are); buffers such as batch-norm statistics are then the task model's -- pass
    ``val_outputs`` for a model whose buffers matter.
    """
    if val_outputs is not None:
        values = torch.as_tensor(val_outputs(trained)).detach().double().reshape(-1).cpu()
        return values
    params, target = _model_params(task, trained)
    params = params.to(device)
    per_example = torch.func.vmap(target, in_dims=(None, 0), randomness="different")
    rows = []
    with torch.no_grad():
        for batch in val_loader:
            batch = tuple(t.to(device) for t in batch) if isinstance(batch, (tuple, list)) else batch.to(device)
            rows.append(per_example(params, batch).detach().double().reshape(-1).cpu())
    return torch.cat(rows)


def train_margins(task, train_loader, device) -> np.ndarray:
    """``(checkpoints, n)`` the task's target (the correct-class margin) on every training point, per checkpoint."""
    target = torch.func.vmap(task.get_target_func(), in_dims=(None, 0), randomness="different")
    rows = []
    for k in range(len(task.get_checkpoints())):
        params, _ = task.get_param(ckpt_idx=k)
        params = params.to(device)
        values = []
        with torch.no_grad():
            for batch in train_loader:
                batch = tuple(t.to(device) for t in batch) if isinstance(batch, (tuple, list)) else batch.to(device)
                values.append(target(params, batch).detach().double().reshape(-1).cpu())
        rows.append(torch.cat(values).numpy())
    return np.stack(rows)


class _Retrainings:
    """Retrained models on random α-subsets, trained lazily and never more than ``budget``.

    Subset ``j`` is ``round(α n)`` training indices drawn without replacement from a generator seeded
    with ``seed``; its model gets seed ``seed + 1 + j``.
    """

    def __init__(self, retrain: Callable, n_train: int, budget: int, alpha: float, seed: int, outputs) -> None:
        self.retrain, self.budget, self.outputs = retrain, budget, outputs
        size = min(max(1, round(alpha * n_train)), n_train - 1)
        rng = np.random.default_rng(seed)
        self.subsets = np.stack([np.sort(rng.choice(n_train, size, replace=False)) for _ in range(budget)])
        self.seeds = [seed + 1 + j for j in range(budget)]
        self.targets: list[torch.Tensor] = []

    def first(self, models: int) -> tuple[np.ndarray, torch.Tensor]:
        """Subsets and validation outputs of the first ``models`` retrained models."""
        if not 2 <= models <= self.budget:
            raise InvalidParameterError("models", models, f"an integer in 2..{self.budget} (the retraining budget)")
        while len(self.targets) < models:
            j = len(self.targets)
            self.targets.append(self.outputs(self.retrain(self.subsets[j].copy(), self.seeds[j])))
        return self.subsets[:models], torch.stack(self.targets[:models])


def select_regularization(
    task,
    train_loader,
    val_loader,
    attributor: str = "iffim",
    proj_dim: int | None = None,
    candidates: Sequence[float] | None = None,
    threshold: float = 0.5,
    rule: str | None = None,
    lr: float | None = None,
    steps: int | None = None,
    momentum: float = 0.0,
    proj_seed: int = 0,
    device: str | torch.device | None = None,
    *,
    recipe: RecipeFacts | None = None,
    retrain: Callable[[np.ndarray, int], object] | None = None,
    max_retrainings: int = 5,
    alpha: float = 0.5,
    retrain_seed: int = 0,
    val_outputs: Callable[[object], torch.Tensor] | None = None,
    fitted: Mapping[str, Mapping[str, float]] | None = None,
) -> SelectorResult:
    """Choose λ for IFFIM or TRAK on ``task``: from the trained model(s) alone, or with a few retrainings.

    Every rule of :mod:`dahp.selection.rules` that can run is reported in ``picks`` with its diagnosis and
    cost; ``regularization`` is the pick of ``rule``.

    Args:
        task: a ``dattri.task.AttributionTask``; each of its checkpoints is one ensemble member.
        train_loader: the training points (not shuffled).
        val_loader: validation queries (not the queries you will evaluate on).
        attributor: ``"iffim"`` or ``"trak"``.
        proj_dim: random projection of the gradients (None: full gradients).
        candidates: λ grid for Algorithm 1 and the budget rules (default: 33 values, 4 per decade,
            over 12 decades ending 10× above the largest eigenvalue).
        threshold: the target ξ̄ of ``xi_pick`` / ``grid_pick`` (0.5 in the paper).
        rule: whose pick ``regularization`` is: ``"xi"`` (the paper's rule: the continuous crossing at
            ``threshold``), ``"recipe"`` or any rule in ``picks``. Default:
            :data:`dahp.selection.rules.DEFAULT_NO_RETRAINING` (``"median_xi_recipe"``) without ``retrain``,
            ``f"{dahp.selection.rules.DEFAULT_BUDGET}_{max_retrainings}"`` with it.
        lr, steps, momentum: the training's learning rate, number of optimizer steps and momentum
            (plain SGD), for the recipe rule; ``recipe`` gives the full facts instead (Adam,
            schedules, weight decay: :class:`dahp.selection.rules.RecipeFacts`).
        device: where gradients, projections and the eigendecomposition run (default:
            :func:`dahp.core.device.resolve_device`); λ does not depend on it beyond rounding.
        retrain: budget mode: ``retrain(train_indices, seed)`` trains your model, your way, on the
            training points at ``train_indices`` (positions in ``train_loader``'s order) and returns
            the model (``nn.Module``), its state dict or an ``AttributionTask``. Called at most
            ``max_retrainings`` times, on random subsets of ``round(alpha · n)`` points.
        max_retrainings: the retraining budget (>= 2; default 5).
        alpha: the subset fraction of the retrainings (0.5, as the LDS).
        retrain_seed: seeds the subsets (and, plus ``1 + j``, the ``j``-th retraining's seed).
        val_outputs: ``val_outputs(model) -> (n_val,)`` outputs of a retrained model on the
            validation queries, in ``val_loader``'s order (default: the task's target function).
        fitted: constants for the fitted rules (``rule name -> dahp.selection.rules.fit_rule(...)``).
    """
    has_recipe = recipe is not None or (lr is not None and steps is not None)
    if rule is None and retrain is not None and isinstance(max_retrainings, int):
        rule = rules.default_budget_rule(max_retrainings).name
    elif rule is None and retrain is not None:
        rule = rules.DEFAULT_BUDGET  # refused below, with the bad max_retrainings
    elif rule is None:
        rule = rules.DEFAULT_NO_RETRAINING
    _check_arguments(
        attributor, rule, threshold, candidates, has_recipe, retrain, max_retrainings, alpha, val_outputs, fitted
    )
    if recipe is not None and not isinstance(recipe, RecipeFacts):
        raise InvalidParameterError("recipe", recipe, "None or a dahp.selection.rules.RecipeFacts")
    size = len(train_loader.dataset) if hasattr(getattr(train_loader, "dataset", None), "__len__") else None
    if recipe is not None and size is not None and recipe.n_train != size:
        raise InvalidParameterError("recipe.n_train", recipe.n_train, f"the training loader's size {size}")
    device = resolve_device(device)
    members = task_factors(task, train_loader, val_loader, attributor, proj_dim, proj_seed, device)
    top = max(float(m.eigenvalues.max()) for m in members)
    grid = [float(v) for v in candidates] if candidates is not None else selector_grid(top)
    found = xi_selection(members, grid, threshold)
    n_train = members[0].left.shape[0]
    n_params = sum(p.numel() for p in task.get_model().parameters() if p.requires_grad)
    if recipe is None and has_recipe:
        recipe = RecipeFacts.sgd(lr, steps, n_train, n_params, momentum)

    retrainings = None
    validation_lds = None
    retrain_seconds = 0.0
    if retrain is not None:
        outputs = functools.partial(
            _validation_outputs, task, val_loader=val_loader, val_outputs=val_outputs, device=device
        )
        retrainings = _Retrainings(retrain, n_train, max_retrainings, alpha, retrain_seed, outputs)
        sign = -1.0 if attributor == "iffim" else 1.0  # IFFIM scores -gᵀ(F+λI)⁻¹Gᵢ with loss gradients Gᵢ

        def validation_lds(models: int, lambdas: Sequence[float]) -> np.ndarray:
            subsets, targets = retrainings.first(models)
            scores = [sign * sum(m.scores(lam) for m in members) / len(members) for lam in lambdas]
            return np.array([lds(s, targets, subsets).mean for s in scores])

        # the whole budget up front: the default pick uses all of it, and the rules' own seconds then
        # exclude the retraining, which is reported once (retrain_seconds)
        started = time.perf_counter()
        retrainings.first(max_retrainings)
        retrain_seconds = time.perf_counter() - started

    margins = train_margins(task, train_loader, device) if attributor == "trak" and recipe is not None else None
    inp = RuleInput(
        attributor, members, grid, recipe, PUBLISHED_DEFAULTS[attributor], validation_lds, dict(fitted or {}), margins
    )
    chosen_rules = [rules.RULES[name] for name in _free_rule_names(attributor, recipe is not None, fitted)]
    if retrain is not None:
        chosen_rules += list(_budget_rules(max_retrainings).values())
    picks = [rule_(inp) for rule_ in chosen_rules]
    by_name = {p.rule: p for p in picks}
    recipe_pick = by_name.get("recipe")
    recipe_lam = recipe_pick.regularization if recipe_pick else None
    recipe_xi = mean_xi(members, recipe_lam) if recipe_pick else None
    chosen = found.continuous.regularization if rule == "xi" else by_name[rule].regularization
    return SelectorResult(
        attributor,
        chosen,
        rule,
        found.continuous,
        found.grid_pick,
        grid,
        found.xi_bar,
        recipe_lam,
        recipe_xi,
        tuple(picks),
        "budget" if retrain is not None else "no_retraining",
        len(retrainings.targets) if retrainings is not None else 0,
        retrain_seconds,
    )
