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
selector calls it at most ``max_retrainings`` times (default 8) on random halves of the training set,
evaluates each retrained model on the validation queries; the default pick of this mode is
``f"{dahp.selection.rules.DEFAULT_BUDGET}_{max_retrainings}"``, the adaptive search of
:mod:`dahp.selection.adaptive` (3 models first, one more at a time while its pick is uncertain); the
other budget rules (the plain search ``budget_val_lds_M`` among them) are then reported on the models it
trained, at no further retraining. TRAK's scores there leave out its per-training-point factor ``1 − p_i``;
IFFIM's are exact. With a recipe and TRAK, the training points' margins (the task's target function
on the training loader, once per checkpoint) feed ``recipe_gauss_newton``.

Every argument is checked before any gradient is computed (a shuffled loader is refused wherever rows
are paired across passes, and a ``retrain`` that cannot be called as ``retrain(train_indices, seed)``
is refused up front). The result prints as one line; :meth:`SelectorResult.summary` says which λ to
use, why and how sure, and :meth:`SelectorResult.to_frame` lists every rule with its cost and, for the
budget rules, the validation-query LDS at its pick ± its standard error.

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
import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, SequentialSampler

from dahp.attribution.features import Projection, project, task_gradient_rows
from dahp.attribution.lds import lds, subset_sums
from dahp.attribution.names import SELECTABLE_ATTRIBUTORS
from dahp.attribution.scales import feature_scale, gram_scale, scale_description, selector_grid
from dahp.attribution.spectral import SpectralFactors, factorize
from dahp.core.config import InvalidParameterError
from dahp.core.device import resolve_device
from dahp.core.progress import tqdm
from dahp.core.published import PUBLISHED_DEFAULTS
from dahp.selection import adaptive, rules
from dahp.selection.algorithm import Selection, check_threshold, mean_xi, xi_bar_curve, xi_selection
from dahp.selection.recipe import RecipeFacts, check_recipe_field
from dahp.selection.rules import RuleInput, RulePick

SELECTABLE = SELECTABLE_ATTRIBUTORS  #: the attributors whose λ the selector chooses
#: The retraining-free "don't know" flag (:func:`dont_know`) fires when the independent estimate (the
#: training recipe) lies more than this many decades outside the bracket the two ξ̄ estimates make (the
#: ξ̄ = 0.5 crossing and ξ̄'s saturation): one step of the default grid (four candidates per decade).
#: Chosen on the development families of the robustness suite only (the small suite: it then fired on
#: 5 of 21 cases, among them both below 0.85 of the best); the sealed families were not looked at.
DONT_KNOW_DECADES = 0.25
#: Retrained models the adaptive budget search used on average on the development families of the
#: robustness suite (default profile, measured before the sealed families were looked at); what the
#: "don't know" flag recommends.
BUDGET_TYPICAL_TRAININGS = 5


def outside_bracket_decades(inp: RuleInput) -> float | None:
    """How far, in decades, the recipe's estimate lies outside the span of the two ξ̄ estimates (0 inside);
    None without a recipe (the third estimate is then ξ̄'s own steepest point, not an independent one)."""
    if inp.recipe is None:
        return None
    picks = list(rules.median_parts(inp).values())  # the crossing, the saturation, the recipe's estimate
    if any(p.regularization <= 0 for p in picks):
        return None
    crossing, saturation, recipe = (math.log10(p.regularization) for p in picks)
    low, high = min(crossing, saturation), max(crossing, saturation)
    return max(low - recipe, recipe - high, 0.0)


def dont_know(inp: RuleInput, threshold: float = 0.5) -> str | None:
    """One line saying the retraining-free pick is not to be trusted, or None when nothing says so.

    The default takes the median of three estimates (:func:`dahp.selection.rules.median_parts`): two read
    the ξ̄ curve and bracket the LDS peak from both sides, the third comes from the training recipe. The
    median is trustworthy when the independent estimate falls inside the ξ̄ bracket; the flag fires when
    it lies more than :data:`DONT_KNOW_DECADES` outside it, or when ξ̄ over the candidates never crosses
    ``threshold``, and recommends the budget mode with the number of retrainings the suite says it takes.
    """
    reasons = []
    curve = np.asarray(xi_bar_curve(inp.members, inp.grid), dtype=float)
    if not (curve.min() <= threshold <= curve.max()):
        reasons.append(f"ξ̄ never crosses {threshold:g} over the candidates")
    outside = outside_bracket_decades(inp)
    if outside is not None and outside > DONT_KNOW_DECADES:
        reasons.append(
            f"the training recipe's estimate lies {outside:.2f} decades outside the ξ̄ estimates' bracket "
            f"(> {DONT_KNOW_DECADES:g})"
        )
    if not reasons:
        return None
    return (
        f"don't know: {' and '.join(reasons)}; use the budget mode (retrain=, at most "
        f"{adaptive.MAX_MODELS} retrainings, about {BUDGET_TYPICAL_TRAININGS} on average on the suite)"
    )


#: The documented signature of ``retrain``: ``retrain(train_indices, seed)``.
RETRAIN_SIGNATURE = "retrain(train_indices, seed) -> model"


@dataclasses.dataclass(frozen=True, repr=False)
class SelectorResult:
    """What the selector found: ``print(result)`` gives one line, :meth:`summary` a few, :meth:`to_frame`
    every rule as a table."""

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
    #: the rules :data:`dahp.selection.rules.DEFAULT_NO_RETRAINING` takes the median of
    #: (:func:`dahp.selection.rules.median_part_names`), whose spread says how sure the retraining-free pick is
    estimates: tuple[str, ...] = ()
    #: for each budget rule, ``rule -> (mean, standard error)`` of the validation-query LDS at the rule's
    #: pick, from the retrained models it used (the standard error over the validation queries)
    validation_lds: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    #: the retraining-free "don't know" flag (:func:`dont_know`): one line, or None when the estimates
    #: agree and ξ̄ crosses the threshold
    dont_know: str | None = None

    def __repr__(self) -> str:
        mode = f"budget, {self.trainings} retrainings" if self.mode == "budget" else "no retraining"
        return (
            f"SelectorResult(λ={self.regularization:.4g} [{self.rule}], {self.attributor} scale, "
            f"{len(self.candidates)} candidates, {len(self.picks)} rules, {mode}; .summary(), .to_frame())"
        )

    def agreement_decades(self) -> float | None:
        """Decades between the smallest and the largest of the retraining-free estimates
        (:attr:`estimates`); None when they are unknown."""
        if not self.estimates:
            return None
        return rules.agreement_decades(self.pick(name) for name in self.estimates)

    def confidence(self) -> str:
        """How sure the pick is, in one line: in budget mode the validation-query LDS at the pick ± its
        standard error; otherwise the span of the retraining-free estimates, whether the training recipe's
        estimate supports the ξ̄ bracket (the "don't know" flag, :func:`dont_know`), and whether ξ̄ reaches
        the threshold at all."""
        if self.rule in self.validation_lds:
            mean, se = self.validation_lds[self.rule]
            chosen = self.pick(self.rule)
            ratio = ""
            if chosen.ratio is not None:
                ratio = (
                    f"; expected {chosen.ratio[0]:.2f} [{chosen.ratio[1]:.2f}, {chosen.ratio[2]:.2f}] of the best "
                    "candidate's (bootstrap over retrained models and validation queries)"
                )
            return (
                f"confidence: validation-query LDS at the pick {mean:.3f} ± {se:.3f} (standard error over the "
                f"validation queries, {chosen.trainings} retrained models){ratio}"
            )
        notes = []
        if abs(self.xi_pick.xi_bar - self.xi_pick.threshold) > 1e-3:
            notes.append(f"ξ̄ never reaches {self.xi_pick.threshold:g} in the search range")
        spread = self.agreement_decades()
        if spread is not None:
            listed = ", ".join(f"{n} {self.pick(n).regularization:.3g}" for n in self.estimates)
            notes.append(f"the three estimates span {spread:.2f} decades ({listed})")
            if self.dont_know is not None:
                notes.append("uncertain: " + self.dont_know.removeprefix("don't know: "))
            elif self.recipe_regularization is not None:
                notes.append(
                    f"supported: the training recipe's estimate lies within {DONT_KNOW_DECADES:g} decades of the "
                    "bracket the two ξ̄ estimates make"
                )
            else:
                notes.append("no independent estimate (state the training recipe: lr=, steps=, or recipe=)")
        if not notes:
            return "confidence: not assessed (no retraining-free estimates for this rule)"
        return "confidence: " + "; ".join(notes)

    def to_frame(self) -> pd.DataFrame:
        """Every rule's pick, one row each: ``rule``, ``regularization`` (λ), ``diagnosis``,
        ``trainings``, ``seconds``, ``validation_lds`` and ``validation_lds_se`` (budget rules; NaN for
        the others) and ``chosen`` (the rule of :attr:`regularization`)."""
        rows = []
        for p in self.picks:
            mean, se = self.validation_lds.get(p.rule, (math.nan, math.nan))
            rows.append(
                {
                    "rule": p.rule,
                    "regularization": p.regularization,
                    "diagnosis": p.diagnosis,
                    "trainings": p.trainings,
                    "seconds": p.seconds,
                    "validation_lds": mean,
                    "validation_lds_se": se,
                    "chosen": p.rule == self.rule,
                }
            )
        columns = [
            "rule",
            "regularization",
            "diagnosis",
            "trainings",
            "seconds",
            "validation_lds",
            "validation_lds_se",
            "chosen",
        ]
        return pd.DataFrame(rows, columns=columns)

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
        :data:`dahp.selection.rules.DEFAULT_NO_RETRAINING`), then why (the rule's diagnosis), on which
        scale and how confident (:meth:`confidence`). Then the paper's pick: Algorithm 1 at
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
        lines.append(f"  {self.confidence()}")
        if self.dont_know is not None and self.mode == "no_retraining":
            lines.append(f"  {self.dont_know}")
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
    bar: tqdm | None = None,
) -> list[SpectralFactors]:
    """One spectral factorization per checkpoint of ``task`` (IFFIM: loss vs target gradients;
    TRAK: gradients of the task's loss function -- the margin, in dattri's TRAK convention -- and
    of its target, divided by ``sqrt(#parameters)``), computed on ``device``, returned on the CPU.
    ``bar`` advances by one per gradient batch."""
    _check_proj_dim(proj_dim, _trainable(task))
    n_params = _trainable(task)
    device = resolve_device(device)
    scale = feature_scale(attributor, n_params)
    members = []
    for k in range(len(task.get_checkpoints())):
        params, _ = task.get_param(ckpt_idx=k)
        params = params.to(device)
        train = task_gradient_rows(
            task.get_grad_loss_func(in_dims=(None, 0)), params, _counted(train_loader, bar), scale, device
        )
        queries = task_gradient_rows(
            task.get_grad_target_func(in_dims=(None, 0)), params, _counted(val_loader, bar), scale, device
        )
        if proj_dim is not None:
            projection = Projection(proj_dim, proj_seed, k)
            train, queries = project(train, projection, device), project(queries, projection, device)
        members.append(factorize(train, queries, scale=gram_scale(attributor, len(train)), device=device))
    return members


def _trainable(task) -> int:
    """The number of trainable parameters of ``task``'s model."""
    return sum(p.numel() for p in task.get_model().parameters() if p.requires_grad)


def _check_proj_dim(proj_dim: int | None, n_params: int) -> None:
    if proj_dim is not None and not (_is_int(proj_dim) and 1 <= proj_dim <= n_params):
        raise InvalidParameterError(
            "proj_dim", proj_dim, f"None or an integer in 1..{n_params} (the model's parameter count)"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _counted(loader: Iterable, bar: tqdm | None) -> Iterator:
    """The batches of ``loader``, advancing ``bar`` by one after each."""
    for batch in loader:
        yield batch
        if bar is not None:
            bar.update(1)


def _batches(loader) -> int | None:
    """How many batches ``loader`` yields, when it says."""
    try:
        return len(loader)
    except TypeError:
        return None


def _random_order(loader) -> str | None:
    """The sampler that makes ``loader`` yield its points in another order on every pass (None when the
    order is fixed: a torch ``DataLoader`` with a ``SequentialSampler``, an ``IterableDataset`` --
    whose order is the dataset's own --, or anything that is not a ``DataLoader``)."""
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    batches = loader.batch_sampler
    if batches is not None and not isinstance(batches, BatchSampler):
        return type(batches).__name__  # a custom batch sampler: its order is not known to be fixed
    sampler = batches.sampler if batches is not None else loader.sampler
    return None if isinstance(sampler, SequentialSampler) else type(sampler).__name__


def _binds(fn: Callable, arguments: int) -> bool:
    """Whether ``fn`` accepts ``arguments`` positional arguments (True when its signature is unknown)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and some C extensions have none
        return True
    try:
        signature.bind(*([None] * arguments))
    except TypeError:
        return False
    return True


def _budget_rules(max_retrainings: int) -> dict[str, rules.Rule]:
    """The budget rules one budget of ``max_retrainings`` models pays for, by name (:func:`rules.budget_rules`)."""
    return {rule.name: rule for rule in rules.budget_rules(max_retrainings)}


def _check_arguments(
    task,
    train_loader,
    val_loader,
    attributor: str,
    rule: str,
    threshold: float,
    candidates: Sequence[float] | None,
    proj_dim: int | None,
    proj_seed: int,
    sgd: tuple[float | None, int | None, float],
    recipe: RecipeFacts | None,
    retrain: Callable | None,
    max_retrainings: int,
    alpha: float,
    retrain_seed: int,
    val_outputs: Callable | None,
    fitted: Mapping[str, Mapping[str, float]] | None,
    progress: bool,
) -> None:
    """Refuse bad arguments before any gradient is computed (one :class:`InvalidParameterError` each)."""
    if attributor not in SELECTABLE:
        raise InvalidParameterError("attributor", attributor, SELECTABLE)
    missing = [name for name in ("get_model", "get_param", "get_checkpoints") if not hasattr(task, name)]
    if missing:
        raise InvalidParameterError("task", type(task).__name__, "a dattri.task.AttributionTask")
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
        if not hasattr(loader, "__iter__"):
            raise InvalidParameterError(name, type(loader).__name__, "an iterable of batches (a torch DataLoader)")
    check_threshold(threshold)
    if candidates is not None:
        grid = np.asarray(list(candidates), dtype=float)
        if grid.ndim != 1 or len(grid) < 2 or not np.all(np.isfinite(grid)) or not np.all(np.diff(grid) > 0):
            raise InvalidParameterError("candidates", candidates, "at least two finite, strictly ascending λ")
        if grid[0] < 0:
            raise InvalidParameterError("candidates", candidates, "λ >= 0")
    _check_proj_dim(proj_dim, _trainable(task))
    if not _is_int(proj_seed) or proj_seed < 0:
        raise InvalidParameterError("proj_seed", proj_seed, "an integer >= 0")
    if not isinstance(progress, bool):
        raise InvalidParameterError("progress", progress, "True or False")
    lr, steps, momentum = sgd
    if recipe is not None and not isinstance(recipe, RecipeFacts):
        raise InvalidParameterError("recipe", recipe, "None or a dahp.selection.recipe.RecipeFacts")
    if recipe is not None and (lr is not None or steps is not None or momentum != 0.0):
        raise InvalidParameterError("lr/steps/momentum", (lr, steps, momentum), "left out when recipe= is given")
    if (lr is None) != (steps is None):
        name, value = ("steps", steps) if steps is None else ("lr", lr)
        raise InvalidParameterError(name, value, "given together with the other of lr and steps (or recipe=)")
    if lr is not None:
        for name, value in (("lr", lr), ("steps", steps), ("momentum", momentum)):
            check_recipe_field(name, value)
    elif momentum != 0.0:
        raise InvalidParameterError("momentum", momentum, "0, or any value in [0, 1) together with lr and steps")
    if retrain is not None and not (callable(retrain) and _binds(retrain, 2)):
        raise InvalidParameterError("retrain", retrain, f"None or a function {RETRAIN_SIGNATURE}")
    if not (_is_int(max_retrainings) and max_retrainings >= 2):
        raise InvalidParameterError("max_retrainings", max_retrainings, "an integer >= 2 (the LDS needs two models)")
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 < alpha < 1):
        raise InvalidParameterError("alpha", alpha, "a number in the open interval (0, 1)")
    if not _is_int(retrain_seed) or retrain_seed < 0:
        raise InvalidParameterError("retrain_seed", retrain_seed, "an integer >= 0")
    if val_outputs is not None and not (callable(val_outputs) and _binds(val_outputs, 1)):
        raise InvalidParameterError("val_outputs", val_outputs, "None or a function model -> (n_val,) outputs")
    if fitted is not None:
        unknown = sorted(set(fitted) - rules.FITTED)
        if unknown:
            raise InvalidParameterError("fitted", unknown, sorted(rules.FITTED))
    has_recipe = recipe is not None or lr is not None
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
    size = len(train_loader.dataset) if hasattr(getattr(train_loader, "dataset", None), "__len__") else None
    if recipe is not None and size is not None and recipe.n_train != size:
        raise InvalidParameterError("recipe.n_train", recipe.n_train, f"the training loader's size {size}")
    if recipe is not None and recipe.n_params != _trainable(task):
        n_params = _trainable(task)
        raise InvalidParameterError("recipe.n_params", recipe.n_params, f"the model's trainable parameters {n_params}")
    _check_order(train_loader, val_loader, retrain is not None, attributor == "trak" and has_recipe)


def _check_order(train_loader, val_loader, retraining: bool, margins: bool) -> None:
    """Refuse a loader that reorders its points on every pass where the selector pairs rows across
    passes; warn where it does not.

    Budget mode pairs the training rows with ``retrain``'s indices (positions in the training loader's
    order) and the query rows with the retrained models' validation outputs, each read in another pass;
    TRAK with a recipe pairs the training rows with their margins, read in another pass. Without
    those, every rule reads only the Gram matrix and the query projections, which do not depend on the
    order, so a shuffled loader gives the same λ.
    """
    for name, loader, paired in (
        ("train_loader", train_loader, retraining or margins),
        ("val_loader", val_loader, retraining),
    ):
        sampler = _random_order(loader)
        if sampler is None:
            continue
        if name == "val_loader":
            why = "the retrained models' validation outputs are paired with the queries by order"
        elif retraining:
            why = "retrain= gets positions in the loader's order"
        else:
            why = "TRAK's training margins are paired with the gradient rows by order"
        if paired:
            raise InvalidParameterError(
                name, f"a DataLoader with {sampler}", f"a loader in a fixed order (shuffle=False): {why}"
            )
        warnings.warn(
            f"{name} is shuffled ({sampler}): harmless here, but budget mode (retrain=) would refuse it",
            stacklevel=4,  # the caller of select_regularization
        )


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


def train_margins(task, train_loader, device, bar: tqdm | None = None) -> np.ndarray:
    """``(checkpoints, n)`` the task's target (the correct-class margin) on every training point, per
    checkpoint (``bar`` advances by one per batch)."""
    target = torch.func.vmap(task.get_target_func(), in_dims=(None, 0), randomness="different")
    rows = []
    for k in range(len(task.get_checkpoints())):
        params, _ = task.get_param(ckpt_idx=k)
        params = params.to(device)
        values = []
        with torch.no_grad():
            for batch in _counted(train_loader, bar):
                batch = tuple(t.to(device) for t in batch) if isinstance(batch, (tuple, list)) else batch.to(device)
                values.append(target(params, batch).detach().double().reshape(-1).cpu())
        rows.append(torch.cat(values).numpy())
    return np.stack(rows)


class _Retrainings:
    """Retrained models on random α-subsets, trained lazily and never more than ``budget``.

    Subset ``j`` is ``round(α n)`` training indices drawn without replacement from a generator seeded
    with ``seed``; its model gets seed ``seed + 1 + j``.
    """

    def __init__(
        self, retrain: Callable, n_train: int, budget: int, alpha: float, seed: int, outputs, progress: bool = False
    ) -> None:
        self.retrain, self.budget, self.outputs, self.progress = retrain, budget, outputs, progress
        size = min(max(1, round(alpha * n_train)), n_train - 1)
        rng = np.random.default_rng(seed)
        self.subsets = np.stack([np.sort(rng.choice(n_train, size, replace=False)) for _ in range(budget)])
        self.seeds = [seed + 1 + j for j in range(budget)]
        self.targets: list[torch.Tensor] = []
        self.seconds = 0.0  #: wall time of the retrainings and their validation outputs

    def first(self, models: int) -> tuple[np.ndarray, torch.Tensor]:
        """Subsets and validation outputs of the first ``models`` retrained models."""
        if not 2 <= models <= self.budget:
            raise InvalidParameterError("models", models, f"an integer in 2..{self.budget} (the retraining budget)")
        missing = models - len(self.targets)
        started = time.perf_counter()
        with tqdm(total=missing, desc="retraining", unit="model", disable=not self.progress or missing < 1) as bar:
            while len(self.targets) < models:
                j = len(self.targets)
                self.targets.append(self.outputs(self.retrain(self.subsets[j].copy(), self.seeds[j])))
                bar.update(1)
        self.seconds += time.perf_counter() - started
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
    max_retrainings: int = adaptive.MAX_MODELS,
    alpha: float = 0.5,
    retrain_seed: int = 0,
    val_outputs: Callable[[object], torch.Tensor] | None = None,
    fitted: Mapping[str, Mapping[str, float]] | None = None,
    progress: bool = True,
) -> SelectorResult:
    """Choose λ for IFFIM or TRAK on ``task``: from the trained model(s) alone, or with a few retrainings.

    Every rule of :mod:`dahp.selection.rules` that can run is reported in ``picks`` with its diagnosis and
    cost; ``regularization`` is the pick of ``rule``.

    Args:
        task: a ``dattri.task.AttributionTask``; each of its checkpoints is one ensemble member.
        train_loader: the training points, in a fixed order (a shuffled DataLoader is refused in budget
            mode and for TRAK with a recipe, where rows are paired across passes, and warned about otherwise).
        val_loader: validation queries (not the queries you will evaluate on), in a fixed order in budget mode.
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
            schedules, weight decay: :class:`dahp.selection.recipe.RecipeFacts`, e.g.
            ``RecipeFacts.adam(...)`` or ``RecipeFacts.from_optimizer(optimizer, steps, ...)``).
        device: where gradients, projections and the eigendecomposition run (default:
            :func:`dahp.core.device.resolve_device`); λ does not depend on it beyond rounding.
        retrain: budget mode: ``retrain(train_indices, seed)`` trains your model, your way, on the
            training points at ``train_indices`` (positions in ``train_loader``'s order) and returns
            the model (``nn.Module``), its state dict or an ``AttributionTask``. Called at most
            ``max_retrainings`` times, on random subsets of ``round(alpha · n)`` points; the default
            rule calls it 4 to ``max_retrainings`` times, as its pick's uncertainty asks.
        max_retrainings: the retraining budget (>= 2; default 8).
        alpha: the subset fraction of the retrainings (0.5, as the LDS).
        retrain_seed: seeds the subsets (and, plus ``1 + j``, the ``j``-th retraining's seed).
        val_outputs: ``val_outputs(model) -> (n_val,)`` outputs of a retrained model on the
            validation queries, in ``val_loader``'s order (default: the task's target function).
        fitted: constants for the fitted rules (``rule name -> dahp.selection.rules.fit_rule(...)``).
        progress: progress bars over the gradient batches and the retrainings.

    Every argument is checked before any gradient is computed; a bad one raises one
    :class:`~dahp.core.config.InvalidParameterError` naming it.
    """
    has_recipe = recipe is not None or (lr is not None and steps is not None)
    if rule is None and retrain is not None and _is_int(max_retrainings) and max_retrainings >= 2:
        rule = rules.default_budget_rule(max_retrainings).name
    elif rule is None and retrain is not None:
        rule = rules.DEFAULT_BUDGET  # refused below, with the bad max_retrainings
    elif rule is None:
        rule = rules.DEFAULT_NO_RETRAINING
    _check_arguments(
        task,
        train_loader,
        val_loader,
        attributor,
        rule,
        threshold,
        candidates,
        proj_dim,
        proj_seed,
        (lr, steps, momentum),
        recipe,
        retrain,
        max_retrainings,
        alpha,
        retrain_seed,
        val_outputs,
        fitted,
        progress,
    )
    device = resolve_device(device)
    with_margins = attributor == "trak" and has_recipe
    passes = [_batches(train_loader), _batches(val_loader)] + ([_batches(train_loader)] if with_margins else [])
    total = None if None in passes else sum(passes) * len(task.get_checkpoints())
    with tqdm(total=total, desc="gradients", unit="batch", disable=not progress) as bar:
        members = task_factors(task, train_loader, val_loader, attributor, proj_dim, proj_seed, device, bar)
        margins = train_margins(task, train_loader, device, bar) if with_margins else None
    top = max(float(m.eigenvalues.max()) for m in members)
    grid = [float(v) for v in candidates] if candidates is not None else selector_grid(top)
    found = xi_selection(members, grid, threshold)
    n_train = members[0].left.shape[0]
    n_params = _trainable(task)
    if recipe is None and has_recipe:
        recipe = RecipeFacts.sgd(lr, steps, n_train, n_params, momentum)

    retrainings = None
    validation_lds = None
    retrain_seconds = 0.0
    measured: dict[tuple[int, float], tuple[float, float]] = {}  # (models, λ) -> validation LDS mean, SE
    if retrain is not None:
        outputs = functools.partial(
            _validation_outputs, task, val_loader=val_loader, val_outputs=val_outputs, device=device
        )
        retrainings = _Retrainings(retrain, n_train, max_retrainings, alpha, retrain_seed, outputs, progress)
        sign = -1.0 if attributor == "iffim" else 1.0  # IFFIM scores -gᵀ(F+λI)⁻¹Gᵢ with loss gradients Gᵢ

        def scores(lam: float) -> np.ndarray:
            return sign * sum(m.scores(lam) for m in members) / len(members)

        def validation_lds(models: int, lambdas: Sequence[float]) -> np.ndarray:
            subsets, targets = retrainings.first(models)
            means = []
            for lam in lambdas:
                result = lds(scores(lam), targets, subsets)
                measured[(models, float(lam))] = (result.mean, result.sem)
                means.append(result.mean)
            return np.array(means)

        def validation_sums(models: int, lambdas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
            subsets, targets = retrainings.first(models)
            sums = np.stack([subset_sums(scores(lam), subsets) for lam in lambdas])
            return sums, targets.double().reshape(models, -1).numpy()

    inp = RuleInput(
        attributor,
        members,
        grid,
        recipe,
        PUBLISHED_DEFAULTS[attributor],
        validation_lds if retrain is not None else None,
        dict(fitted or {}),
        margins,
        validation_sums if retrain is not None else None,
    )
    chosen_rules = [rules.RULES[name] for name in _free_rule_names(attributor, recipe is not None, fitted)]
    picks = [rule_(inp) for rule_ in chosen_rules]
    if retrain is not None:
        # the adaptive rule first: it decides how many models to train; the fixed-size budget rules are
        # then reported on the models already trained (and the rule asked for, at its own size)
        smooth = rules.default_budget_rule(max_retrainings)
        first = smooth(inp)
        spent = max(2, len(retrainings.targets))
        extra = {r.name: r for r in rules.budget_rules(spent) if r.family != smooth.family}
        asked = _budget_rules(max_retrainings).get(rule)
        if asked is not None and asked.family != smooth.family:
            extra[asked.name] = asked
        picks += [first, *(r(inp) for r in extra.values())]
        for p in picks:
            if p.trainings and (p.trainings, p.regularization) not in measured:
                validation_lds(p.trainings, [p.regularization])
        retrain_seconds = retrainings.seconds
    by_name = {p.rule: p for p in picks}
    recipe_pick = by_name.get("recipe")
    recipe_lam = recipe_pick.regularization if recipe_pick else None
    recipe_xi = mean_xi(members, recipe_lam) if recipe_pick else None
    chosen = found.continuous.regularization if rule == "xi" else by_name[rule].regularization
    at_pick = {
        p.rule: measured[(p.trainings, p.regularization)] for p in picks if (p.trainings, p.regularization) in measured
    }
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
        rules.median_part_names(inp),
        at_pick,
        dont_know(inp, threshold),
    )
