"""Every rule for choosing λ, behind one interface, each pick with its cost and a one-line diagnosis.

A rule (:class:`Rule`: its name, what it needs, how many retrained models it costs) maps a
:class:`RuleInput` (the ξ factors of the validation queries, the candidate grid, what the training
did, the published default and -- for the budget rules -- the validation-query LDS of the first
``M'`` retrained models) to a :class:`RulePick`. :data:`RULES` names them all, and its names are the
package's one vocabulary: the robustness study runs every rule on every problem, the Fig 2 / Fig 3
cases (:mod:`dahp.experiments.cases`) and :mod:`dahp.selection.selector` run the retraining-free ones
(:func:`retraining_free`) on a setting or a user's model. The paper's pick is :data:`PAPER_RULE`, the
package's default :data:`DEFAULT_NO_RETRAINING`.

λ is always on the scale of the attributor the factors belong to (IFFIM: the empirical Fisher of the
*mean* training loss; TRAK: ``ΦᵀΦ`` summed over training points with features divided by
``sqrt(#parameters)``; :mod:`dahp.attribution.scales` owns both and the factor between them).

Rule families:

- ``xi_grid_T`` -- Algorithm 1 with threshold ``T``; ``xi_continuous`` -- the bisection crossing of
  ξ̄ = 0.5 (:mod:`dahp.selection.algorithm`).
- ``xi_relative_0.5``, ``xi_saturation_0.9``, ``xi_max_slope`` -- rules read off the *shape* of the
  ξ̄ curve rather than a fixed level (see :func:`xi_relative`): ξ̄ does not start at 0 when λ → 0
  (its floor ``ξ̄₀`` is set by how the query weight spreads over the spectrum; TRAK with ``p ≪ n``
  has ``ξ̄₀ > 0.5``, which is why Algorithm 1 returns the grid's low end there), and it tends to 1
  as λ → ∞ where the scores only rescale (``B ≈ I/λ``) and the LDS stops changing. These rules
  measure λ along the transition between the two plateaus.
- ``recipe`` -- ``λ = λ_wd + 1 / Σ_t η_eff(t)`` (:func:`recipe_lambda_effective`);
  ``recipe_gauss_newton`` -- TRAK's, converted through the loss Hessian's weights ``p(1 − p)``;
  ``median_xi_recipe`` -- the median of the ξ̄ = 0.5 crossing, ξ̄'s saturation and the recipe.
- ``spectrum_qQ``, ``mean_eig_0.1``, ``published_default`` -- the zero-cost baselines.
- ``budget_val_lds_M`` -- the grid λ with the best validation-query LDS from ``M`` retrained models;
  ``budget_bracket_5`` -- ξ̄ brackets λ, then the LDS of 5 retrained models chooses inside;
  ``budget_span_5`` -- the same LDS chooses inside the span of ``median_xi_recipe``'s three estimates
  (designed after the suite's results were seen: :data:`DESIGNED_AFTER`).
- ``xi_fitted``, ``recipe_fitted`` -- one constant each, fitted by :func:`fit_rule` on other
  problems' curves (:data:`FITTED`); until fitted they use the documented defaults
  (:data:`FIT_DEFAULTS`).

Book: "When does the selector work?", "The selector on your own model".
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from dahp.attribution.names import SELECTABLE_ATTRIBUTORS
from dahp.attribution.scales import fine_grid, from_mean_loss, trace_per_parameter
from dahp.attribution.spectral import SpectralFactors
from dahp.core.config import SCHEDULES, InvalidParameterError, TrainingRecipe
from dahp.selection import adaptive
from dahp.selection.algorithm import (
    mean_eigenvalue_rule,
    mean_xi,
    select_continuous,
    select_on_grid,
    spectrum_quantile,
    xi_bar_curve,
)
from dahp.selection.recipe import RecipeFacts  # its home; also importable from here, as before
from dahp.training.train import schedule_factor

ATTRIBUTORS = SELECTABLE_ATTRIBUTORS  #: attributors whose λ scale the rules know


ValidationLDS = Callable[[int, Sequence[float]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class RuleInput:
    """Everything a rule may look at (never the test queries)."""

    attributor: str  #: ``"iffim"`` or ``"trak"``: the scale of λ
    members: list[SpectralFactors]  #: validation-query factors, one per ensemble member
    grid: list[float]  #: candidate λ, ascending
    recipe: RecipeFacts | None = None
    published_default: float | None = None  #: the attributor's published λ on its scale, if any
    #: ``(M', lambdas) -> mean validation-query LDS`` at each λ from the first ``M'`` retrained models
    validation_lds: ValidationLDS | None = None
    #: constants of fitted rules, ``rule name -> fit_rule(...)`` result (absent: :data:`FIT_DEFAULTS`)
    fitted: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    #: correct-class margins ``f_i`` of the training points under the full-data model(s), ``(n,)`` or
    #: ``(members, n)`` in the members' row order (``recipe_gauss_newton`` needs them; None: unknown)
    train_margins: np.ndarray | None = None
    #: ``(M', lambdas) -> (sums (len(lambdas), M', q), targets (M', q))`` of the first ``M'`` retrained
    #: models (:data:`dahp.selection.adaptive.ValidationSums`; the adaptive budget rule needs it)
    validation_sums: adaptive.ValidationSums | None = None

    def __post_init__(self) -> None:
        if self.attributor not in ATTRIBUTORS:
            raise InvalidParameterError("attributor", self.attributor, ATTRIBUTORS)
        if not self.members:
            raise InvalidParameterError("members", self.members, "at least one SpectralFactors")
        grid = np.asarray(self.grid, dtype=float)
        if grid.ndim != 1 or len(grid) < 2 or not np.all(np.isfinite(grid)) or grid.min() < 0:
            raise InvalidParameterError("grid", self.grid, "at least two finite λ >= 0")
        if not np.all(np.diff(grid) > 0):
            raise InvalidParameterError("grid", self.grid, "strictly ascending λ")
        if self.published_default is not None and not self.published_default >= 0:
            raise InvalidParameterError("published_default", self.published_default, "None or a number >= 0")
        if self.train_margins is not None:
            margins = np.asarray(self.train_margins, dtype=float)
            n = self.members[0].left.shape[0]
            if margins.shape not in ((n,), (len(self.members), n)) or not np.all(np.isfinite(margins)):
                raise InvalidParameterError(
                    "train_margins",
                    margins.shape,
                    f"None or finite margins of shape ({n},) or ({len(self.members)}, {n})",
                )


@dataclasses.dataclass(frozen=True)
class RulePick:
    """One rule's λ, why, and what it cost."""

    rule: str
    regularization: float
    diagnosis: str  #: what the rule saw and why it picked this λ, in one line
    trainings: int  #: retrained models the rule used (0 for retraining-free rules)
    seconds: float  #: the rule's own compute time (the shared factorization excluded)
    #: the expected validation LDS(pick) / LDS(best candidate) and its interval (set by the adaptive budget rule only)
    ratio: tuple[float, float, float] | None = None


# ------------------------------------------------------------------------------------------------
# helpers


def _fmt(lam: float) -> str:
    return f"{lam:.3g}"


def _grid_position(lam: float, grid: Sequence[float]) -> str:
    """`` (below the grid)`` / `` (above the grid)`` / ``""``."""
    if lam < grid[0] * (1 - 1e-9):
        return " (below the grid)"
    if lam > grid[-1] * (1 + 1e-9):
        return " (above the grid)"
    return ""


def _xi_note(inp: RuleInput, lam: float) -> str:
    """``; ξ̄ = 0.83 there`` (ξ̄ at the pick, for rules that do not look at ξ)."""
    return f"; ξ̄ = {mean_xi(inp.members, lam):.2f} there" if lam > 0 else ""


def _timed(rule: str, compute: Callable[[], tuple[float, str]], trainings: int = 0) -> RulePick:
    started = time.perf_counter()
    lam, diagnosis = compute()
    return RulePick(rule, float(lam), diagnosis, trainings, time.perf_counter() - started)


def xi_floor(members: Sequence[SpectralFactors]) -> float:
    """``ξ̄₀``: ξ̄ in the limit λ → 0 (the pseudo-inverse on the non-null eigen-directions)."""
    return mean_xi(members, 0.0)


def _continuous_crossing(members: Sequence[SpectralFactors], level: float) -> tuple[float, str]:
    """The λ where ξ̄ = ``level`` (bisection), and a note when the level is not reached."""
    found = select_continuous(members, level)
    if found.xi_bar > level + 1e-3:
        return found.regularization, f"ξ̄ > {level:.3g} already at the search's low end"
    if found.xi_bar < level - 1e-3:
        return found.regularization, f"ξ̄ < {level:.3g} even at the search's high end"
    return found.regularization, ""


def _crossing_diagnosis(curve: np.ndarray, grid: Sequence[float], threshold: float, lam: float) -> str:
    """Where ξ̄ stands relative to ``threshold`` over the grid, in one line."""
    if curve.min() > threshold:
        where = "the grid's low end " if lam == grid[0] else "the candidate of lowest ξ̄ "
        return (
            f"ξ̄ > {threshold} over the whole grid (min {curve.min():.2f}): the curvature is well conditioned "
            f"relative to the grid; the pick is {where}{_fmt(lam)}"
        )
    if curve.max() < threshold:
        return (
            f"ξ̄ < {threshold} over the whole grid (max {curve.max():.2f}): every candidate is too small "
            f"for the spectrum; the pick is {'the grid' + chr(39) + 's high end' if lam == grid[-1] else 'the candidate of highest ξ̄'} {_fmt(lam)}"
        )
    k = int(np.argmax(curve >= threshold))
    return f"ξ̄ crosses {threshold} between {_fmt(grid[k - 1])} and {_fmt(grid[k])}; pick {_fmt(lam)}"


# ------------------------------------------------------------------------------------------------
# the ξ rules


def xi_grid(inp: RuleInput, threshold: float, name: str | None = None) -> RulePick:
    """Algorithm 1: the grid λ whose ξ̄ is closest to ``threshold``."""

    def compute() -> tuple[float, str]:
        curve = xi_bar_curve(inp.members, inp.grid)
        lam = select_on_grid(curve, inp.grid, threshold).regularization
        return lam, _crossing_diagnosis(curve, inp.grid, threshold, lam)

    return _timed(name or f"xi_grid_{threshold}", compute)


def xi_continuous(inp: RuleInput, threshold: float = 0.5) -> RulePick:
    """The crossing ξ̄ = ``threshold`` by bisection (no grid)."""

    def compute() -> tuple[float, str]:
        lam, note = _continuous_crossing(inp.members, threshold)
        text = note or f"ξ̄ crosses {threshold} at {_fmt(lam)}"
        return lam, text + _grid_position(lam, inp.grid)

    return _timed("xi_continuous", compute)


def xi_relative(inp: RuleInput, fraction: float, name: str) -> RulePick:
    """The λ where ξ̄ has covered ``fraction`` of its way from the floor ``ξ̄₀`` (λ → 0) to 1.

    Why: ξ measures how much the regularized inverse still reshapes the query's weight across the
    spectrum (Cauchy–Schwarz ratio of the moments ``Σ c_k (e_k+λ)^-m``); its floor at λ → 0 reflects
    the spread of the query weight over the *non-null* spectrum, not the attribution's quality, and is
    high when the curvature has few, similar eigenvalues (TRAK with ``p ≪ n``). A fixed level such as
    0.5 then lies below the floor and the rule degenerates to the search's low end; a level relative to
    the floor always lies on the transition. ``fraction = 0.9`` marks where ξ̄ saturates: above it the
    scores barely change direction with λ (``B ≈ I/λ``), so the LDS is on its large-λ plateau.
    """

    def compute() -> tuple[float, str]:
        floor = xi_floor(inp.members)
        level = floor + fraction * (1.0 - floor)
        lam, note = _continuous_crossing(inp.members, level)
        text = note or f"ξ̄ rises from {floor:.2f} (λ → 0) to 1; {fraction:.0%} of the way ({level:.2f}) at {_fmt(lam)}"
        return lam, text + _grid_position(lam, inp.grid)

    return _timed(name, compute)


def xi_max_slope(inp: RuleInput, per_decade: int = 8) -> RulePick:
    """The λ where ξ̄ rises fastest in log λ (the middle of its transition), on a fine log grid.

    Spans ``[1e-8, 1e4] ×`` the largest eigenvalue (the bisection's bracket), ``per_decade`` points
    per decade; the pick is the midpoint (in log λ) of the steepest step.
    """

    def compute() -> tuple[float, str]:
        top = max(float(m.eigenvalues.max()) for m in inp.members)
        fine = fine_grid(top, per_decade)
        curve = xi_bar_curve(inp.members, list(fine))
        k = int(np.nanargmax(np.diff(curve)))
        lam = math.sqrt(fine[k] * fine[k + 1])
        slope = (curve[k + 1] - curve[k]) * per_decade
        text = f"ξ̄ rises fastest ({slope:.2f} per decade) at {_fmt(lam)}, where it is {mean_xi(inp.members, lam):.2f}"
        return lam, text + _grid_position(lam, inp.grid)

    return _timed("xi_max_slope", compute)


# ------------------------------------------------------------------------------------------------
# the recipe rule


def schedule_sum(schedule: str, warmup_steps: int, steps: int) -> float:
    """``Σ_{s=0}^{T-1} factor(s)``: the learning-rate multiples summed over the training's ``T`` steps.

    Uses :func:`dahp.training.train.schedule_factor` (the factors the training itself applies), so a
    schedule added there is summed here the same way.
    """

    if schedule not in SCHEDULES:
        raise InvalidParameterError("schedule", schedule, SCHEDULES)
    if schedule == "constant":
        return float(steps)
    shape = dataclasses.replace(_SCHEDULE_PROBE, schedule=schedule, warmup_steps=warmup_steps)
    return float(sum(schedule_factor(shape, s, steps) for s in range(steps)))


_SCHEDULE_PROBE = TrainingRecipe(epochs=1, batch_size=1, lr=1.0, schedule="noam", warmup_steps=1)


def adam_second_moment(inp: RuleInput) -> float:
    """Adam's per-coordinate second moment ``v`` near the end of training, estimated from the factors.

    At the trained parameters the mean gradient is ≈ 0, so a minibatch gradient's per-coordinate
    second moment is the per-example one divided by the batch size: ``v ≈ tr(C) / (n_params · B)``
    with ``tr(C) = mean_i ‖g_i‖²`` the trace of the mean-loss Fisher (IFFIM: the sum of the members'
    eigenvalues; a norm-preserving random projection keeps it in expectation). TRAK's factors hold
    margin gradients divided by ``sqrt(#parameters)``: ``tr(ΦᵀΦ) / n = mean_i ‖∇f_i‖² / n_params``;
    the loss gradient is ``(1 − p_i) ∇f_i`` (exactly, for the correct-class margin), so this
    over-estimates ``v`` by ``1 / E(1 − p)²`` -- an approximation stated in the diagnosis.
    """
    facts = inp.recipe
    trace = float(np.mean([m.eigenvalues.clamp_min(0).sum().item() for m in inp.members]))
    per_coordinate = trace_per_parameter(inp.attributor, trace, facts.n_train, facts.n_params)
    return per_coordinate / facts.batch_size


def effective_step(inp: RuleInput) -> tuple[float, float, str]:
    """``(η_eff / η, λ_wd, how)``: the step size a steady gradient sees per unit of the schedule, the
    explicit ridge the weight decay adds on the mean-loss scale, and a phrase describing both.

    - SGD with heavy-ball momentum μ: a steady gradient moves ``η/(1 − μ)`` per step; L2 weight decay
      ``wd`` adds ``wd`` to the curvature of the objective: ``λ_wd = wd``.
    - Adam / AdamW: the update ``η m̂/(sqrt(v̂) + ε)`` is gradient descent preconditioned by
      ``1/(sqrt(v) + ε)``; bias-corrected ``m̂`` passes a steady gradient with gain 1 (no
      ``1/(1 − β₁)``). With the isotropic estimate of ``v`` (:func:`adam_second_moment`) the step is
      ``η/(sqrt(v) + ε)``. Adam's coupled L2 gives ``λ_wd = wd``; AdamW's decoupled decay
      ``θ ← θ − η wd θ`` is, in that metric, an L2 penalty ``wd (sqrt(v) + ε)`` on the mean loss.
    """
    facts = inp.recipe
    if facts.optimizer == "sgd":
        gain = 1.0 / (1.0 - facts.momentum)
        how = f"SGD, momentum {facts.momentum:g}: η_eff = η/(1−μ)" if facts.momentum else "SGD: η_eff = η"
        return gain, facts.weight_decay, how
    root = math.sqrt(adam_second_moment(inp)) + facts.eps
    wd = facts.weight_decay * (root if facts.optimizer == "adamw" else 1.0)
    approx = " (TRAK: margin gradients stand in for loss gradients)" if inp.attributor == "trak" else ""
    return 1.0 / root, wd, f"{facts.optimizer}: η_eff = η/(√v + ε), √v ≈ {root:.3g}{approx}"


def recipe_lambda_effective(inp: RuleInput) -> tuple[float, str]:
    """``λ = λ_wd + 1 / Σ_t η_eff(t)`` on the attributor's scale, and how it was worked out.

    Gradient descent stopped after steps summing to ``S = Σ_t η_eff(t)`` shrinks an eigen-direction of
    curvature ``e`` by ``1 − exp(−S e)``, which matches ridge ``e/(e + λ)`` at ``λ ≈ 1/S``; a
    schedule enters through the sum of its factors (:func:`schedule_sum`), not ``η T``. TRAK's λ is
    ``n / #parameters`` times the mean-loss λ (:func:`dahp.attribution.scales.from_mean_loss`). With SGD at
    a constant rate and no weight decay this is ``(1 − μ) / (η T)``. The package's only recipe rule.
    """
    facts = inp.recipe
    gain, wd, how = effective_step(inp)
    total = facts.lr * gain * schedule_sum(facts.schedule, facts.warmup_steps, facts.steps)
    unit = from_mean_loss(inp.attributor, 1.0, facts.n_train, facts.n_params)  # the scale factor
    lam = (wd + 1.0 / total) * unit
    schedule = "" if facts.schedule == "constant" else f", {facts.schedule} schedule"
    decay = f", + weight decay {_fmt(wd * unit)}" if wd else ""
    return lam, f"{how}{schedule}: Σ η_eff = {total:.3g} over {facts.steps} steps, λ = 1/Σ{decay}"


def recipe_rule(inp: RuleInput) -> RulePick:
    """The training-recipe rule (see :func:`recipe_lambda_effective`)."""
    _require(inp, "recipe", inp.recipe is not None, "RecipeFacts of the full-data training")

    def compute() -> tuple[float, str]:
        lam, text = recipe_lambda_effective(inp)
        return lam, f"{text} = {_fmt(lam)}{_grid_position(lam, inp.grid)}{_xi_note(inp, lam)}"

    return _timed("recipe", compute)


def gauss_newton_weight(inp: RuleInput) -> float:
    """``w = Σ_i p_i(1 − p_i) ‖φ_i‖² / Σ_i ‖φ_i‖²``: the loss Hessian's weight on TRAK's features.

    ``p_i = σ(f_i)`` is the correct-class probability (the margin is ``log(p/(1 − p))``) and ``‖φ_i‖²``
    the diagonal of TRAK's kernel; averaged over the members, each with its own margins.
    """
    margins = np.asarray(inp.train_margins, dtype=float)
    weights = []
    for k, member in enumerate(inp.members):
        f = margins[k] if margins.ndim == 2 else margins
        p = 1.0 / (1.0 + np.exp(-np.clip(f, -700, 700)))
        left = member.left.numpy()
        norms = (left**2 * member.eigenvalues.numpy()).sum(1) if member.form == "dual" else (left**2).sum(1)
        weights.append(float((p * (1 - p) * norms).sum() / norms.sum()))
    return float(np.mean(weights))


def recipe_gauss_newton(inp: RuleInput) -> RulePick:
    """TRAK's recipe rule with the Gauss–Newton conversion: ``λ = λ_recipe / w`` (:func:`gauss_newton_weight`).

    Early stopping acts as ridge on the *loss* Hessian, ``H ≈ (1/n) Σ p_i(1 − p_i) ∇f_i ∇f_iᵀ`` (for the
    cross-entropy, ``d²L/df² = p(1 − p)`` along the margin ``f``); TRAK's kernel ``ΦᵀΦ`` weighs every
    margin gradient alike, ``ΦᵀΦ ≈ n / (#params · w) · H``. :func:`dahp.attribution.scales.from_mean_loss`
    converts by ``n / #params`` only, which leaves λ too small by ``1/w`` -- large when the training
    points are fitted confidently. IFFIM's curvature is already of loss gradients, and TRAK's margins
    may be unknown: then the rule is the plain recipe rule, and its diagnosis says so.
    """
    _require(inp, "recipe", inp.recipe is not None, "RecipeFacts of the full-data training")

    def compute() -> tuple[float, str]:
        lam, text = recipe_lambda_effective(inp)
        if inp.attributor != "trak" or inp.train_margins is None:
            why = "IFFIM's Fisher is of loss gradients" if inp.attributor != "trak" else "training margins unknown"
            return lam, f"no conversion ({why}): the recipe rule, {text} = {_fmt(lam)}{_xi_note(inp, lam)}"
        weight = gauss_newton_weight(inp)
        lam = lam / weight
        return lam, f"{text} = {_fmt(lam * weight)}, / mean p(1−p) {weight:.3g} = {_fmt(lam)}{_xi_note(inp, lam)}"

    return _timed("recipe_gauss_newton", compute)


# ------------------------------------------------------------------------------------------------
# a hedge of independent estimates


def median_part_names(inp: RuleInput) -> tuple[str, str, str]:
    """The names of the three retraining-free rules :func:`median_xi_recipe` takes the median of.

    The ξ̄ = 0.5 crossing, ξ̄'s saturation point and the recipe rule (``recipe_gauss_newton`` for TRAK
    with the training margins known; ``xi_max_slope`` standing in without a recipe).
    """
    if inp.recipe is not None and inp.attributor == "trak" and inp.train_margins is not None:
        third = "recipe_gauss_newton"
    elif inp.recipe is not None:
        third = "recipe"
    else:
        third = "xi_max_slope"
    return ("xi_continuous", "xi_saturation_0.9", third)


def median_parts(inp: RuleInput) -> dict[str, RulePick]:
    """The picks of the three rules :func:`median_xi_recipe` takes the median of, by rule name
    (:func:`median_part_names`)."""
    return {name: RULES[name](inp) for name in median_part_names(inp)}


def agreement_decades(picks: Iterable[RulePick]) -> float:
    """How many decades separate the smallest and the largest λ of ``picks`` (``inf`` when one is 0)."""
    values = [p.regularization for p in picks]
    if min(values) <= 0:
        return math.inf
    return math.log10(max(values) / min(values))


def _by_log(parts: Mapping[str, RulePick]) -> list[str]:
    """Rule names of ``parts`` ordered by their λ (λ = 0 first)."""
    return sorted(parts, key=lambda name: math.log(max(parts[name].regularization, 1e-300)))


def median_xi_recipe(inp: RuleInput) -> RulePick:
    """The median, in log λ, of three retraining-free estimates that err in different directions.

    Theorem 4.3 says the LDS rises while ξ < ω; ω at the LDS peak is unknown without retraining
    (it lies in (0, 1) and varies from problem to problem), so the ξ̄ curve bounds the peak only
    from both sides: the crossing ξ̄ = 0.5 (``xi_continuous``, too small whenever ω > 0.5 at the
    peak) and the saturation point (``xi_saturation_0.9``, past which the LDS is flat, too large when
    the peak is sharp). The recipe rule is an independent estimate from the training dynamics (early
    stopping as ridge; for TRAK with the training margins known, ``recipe_gauss_newton``); without a
    recipe, ξ̄'s steepest point (``xi_max_slope``) stands in (:func:`median_parts`). The median
    of three is right whenever two of them are, and never outside the span of the ξ bounds.
    """

    def compute() -> tuple[float, str]:
        parts = median_parts(inp)
        order = _by_log(parts)
        listed = ", ".join(f"{name} {_fmt(parts[name].regularization)}" for name in order)
        lam = parts[order[1]].regularization
        return lam, f"median of {listed}: {order[1]}'s {_fmt(lam)}{_grid_position(lam, inp.grid)}"

    return _timed("median_xi_recipe", compute)


# ------------------------------------------------------------------------------------------------
# zero-cost baselines


def spectrum_rule(inp: RuleInput, quantile: float) -> RulePick:
    """The eigenvalue at ``quantile`` of the non-zero spectrum."""

    def compute() -> tuple[float, str]:
        lam = spectrum_quantile(inp.members, quantile)
        return lam, f"the {quantile:.0%} quantile of the non-zero spectrum: {_fmt(lam)}{_xi_note(inp, lam)}"

    return _timed(f"spectrum_q{quantile}", compute)


def mean_eig_rule(inp: RuleInput, factor: float = 0.1) -> RulePick:
    """``factor ×`` the mean eigenvalue (trace / dimension)."""

    def compute() -> tuple[float, str]:
        lam = mean_eigenvalue_rule(inp.members, factor)
        return lam, f"{factor:g} × the mean eigenvalue (trace/d): {_fmt(lam)}{_xi_note(inp, lam)}"

    return _timed(f"mean_eig_{factor}", compute)


def published_default_rule(inp: RuleInput) -> RulePick:
    """The attributor's published default λ."""
    _require(inp, "published_default", inp.published_default is not None, "the attributor's published λ")

    def compute() -> tuple[float, str]:
        lam = float(inp.published_default)
        note = " (no regularization: the pseudo-inverse)" if lam == 0 else _xi_note(inp, lam)
        return lam, f"the published default {_fmt(lam)}{note}"

    return _timed("published_default", compute)


# ------------------------------------------------------------------------------------------------
# rules that spend retrainings


def _require(inp: RuleInput, field: str, ok: bool, what: str) -> None:
    if not ok:
        raise InvalidParameterError(field, getattr(inp, field), what)


def _best_on(lds: np.ndarray, lambdas: Sequence[float], grid: Sequence[float], models: int) -> tuple[float, str]:
    if not np.any(np.isfinite(lds)):
        return float(lambdas[0]), f"validation LDS undefined at every λ with {models} models; pick the low end"
    k = int(np.nanargmax(lds))
    edge = ""
    if lambdas[k] == grid[0] or lambdas[k] == grid[-1]:
        edge = "; at the grid's edge: the optimum may lie outside it"
    text = f"validation LDS of {models} retrained models peaks at {_fmt(lambdas[k])} ({lds[k]:.3f}){edge}"
    return float(lambdas[k]), text


def budget_val_lds(inp: RuleInput, models: int) -> RulePick:
    """The grid λ whose validation-query LDS, from the first ``models`` retrained models, is best."""
    _require(inp, "validation_lds", inp.validation_lds is not None, "a validation-LDS function (retrained models)")

    def compute() -> tuple[float, str]:
        values = np.asarray(inp.validation_lds(models, list(inp.grid)), dtype=float)
        return _best_on(values, inp.grid, inp.grid, models)

    return _timed(f"budget_val_lds_{models}", compute, trainings=models)


#: ξ̄ levels (relative to the floor, see :func:`xi_relative`) that bound ``budget_bracket``'s search.
BRACKET = (0.25, 0.95)


def bracket(inp: RuleInput, relative: tuple[float, float] = BRACKET) -> tuple[list[float], str]:
    """The grid λ from where ξ̄ has covered ``relative[0]`` of its rise to where it has covered
    ``relative[1]`` (at least three candidates, widened on the grid when fewer).

    Why: below the lower bound ξ is small, so ξ < ω for any query whose retraining effect agrees with
    its gradient at all, and by Theorem 4.3 the LDS still rises; above the upper bound ξ̄ has
    saturated and the scores only rescale, so the LDS is flat. The best λ lies in between.
    """
    curve = xi_bar_curve(inp.members, inp.grid)
    floor = xi_floor(inp.members)
    low_level, high_level = (floor + r * (1 - floor) for r in relative)
    inside = np.flatnonzero((curve >= low_level) & (curve <= high_level))
    if len(inside):
        lo, hi = int(inside[0]), int(inside[-1])
    else:  # the transition falls between two grid points (or beyond the grid)
        lo = hi = int(np.argmin(np.abs(curve - (low_level + high_level) / 2)))
    while hi - lo < 2 and (lo > 0 or hi < len(inp.grid) - 1):
        lo, hi = max(0, lo - 1), min(len(inp.grid) - 1, hi + 1)
    chosen = list(inp.grid[lo : hi + 1])
    return chosen, f"ξ̄ brackets λ in [{_fmt(chosen[0])}, {_fmt(chosen[-1])}] ({len(chosen)} candidates)"


def budget_bracket(inp: RuleInput, models: int) -> RulePick:
    """ξ̄ brackets λ (:func:`bracket`), then the validation LDS of ``models`` retrained models chooses."""
    return _budget_within(inp, models, "budget_bracket", bracket)


def _budget_within(
    inp: RuleInput, models: int, name: str, candidates: Callable[[RuleInput], tuple[list[float], str]]
) -> RulePick:
    """The validation LDS of ``models`` retrained models chooses among ``candidates(inp)``."""
    _require(inp, "validation_lds", inp.validation_lds is not None, "a validation-LDS function (retrained models)")

    def compute() -> tuple[float, str]:
        chosen, text = candidates(inp)
        values = np.asarray(inp.validation_lds(models, chosen), dtype=float)
        lam, best = _best_on(values, chosen, inp.grid, models)
        return lam, f"{text}; {best}"

    return _timed(f"{name}_{models}", compute, trainings=models)


#: Decades by which :func:`span` widens the range of the three estimates on each side.
SPAN_MARGIN_DECADES = 0.5


def span(inp: RuleInput, margin: float = SPAN_MARGIN_DECADES) -> tuple[list[float], str]:
    """The grid λ between the smallest and the largest of :func:`median_parts`' three estimates,
    widened by ``margin`` decades on each side (when no grid λ falls inside: the grid λ nearest to the
    median estimate).

    Why: each of the three estimates errs in its own direction (see :func:`median_xi_recipe`), so the
    best λ lies between them or close by. Where they agree, the span is narrow and a noisy validation
    LDS from a few retrained models cannot pull the pick far; where they disagree, it is wide and the
    retrained models decide what the retraining-free estimates could not.
    """
    parts = median_parts(inp)
    order = _by_log(parts)
    low = parts[order[0]].regularization * 10.0**-margin
    high = parts[order[-1]].regularization * 10.0**margin
    grid = np.asarray(inp.grid, dtype=float)
    inside = np.flatnonzero((grid >= low * (1 - 1e-9)) & (grid <= high * (1 + 1e-9)))
    if len(inside) == 0:
        middle = math.log(max(parts[order[1]].regularization, 1e-300))
        inside = np.array([int(np.argmin(np.abs(np.log(np.maximum(grid, 1e-300)) - middle)))])
    chosen = [float(v) for v in grid[inside]]
    listed = ", ".join(f"{name} {_fmt(parts[name].regularization)}" for name in order)
    text = f"{listed}; ±{margin:g} decade span [{_fmt(chosen[0])}, {_fmt(chosen[-1])}] ({len(chosen)} candidates)"
    return chosen, text


def budget_span(inp: RuleInput, models: int) -> RulePick:
    """The validation LDS of ``models`` retrained models chooses among the grid λ inside :func:`span`.

    Designed *after* the robustness suite's results were seen (:data:`DESIGNED_AFTER`): ``budget_bracket``
    failed where ξ̄'s bracket excluded the peak, ``budget_val_lds_5`` where five models' noisy LDS
    picked a far-off λ; this rule searches only where the retraining-free estimates disagree.
    """
    return _budget_within(inp, models, "budget_span", span)


def budget_smooth(inp: RuleInput, models: int) -> RulePick:
    """The adaptive budget search (:func:`dahp.selection.adaptive.adaptive_search`): the validation LDS
    of at most ``models`` retrained models over the whole grid, smoothed in log λ, with
    :func:`median_parts`' estimates as a soft prior; designed on the development families only."""
    _require(inp, "validation_sums", inp.validation_sums is not None, "a validation-sums function (retrained models)")
    started = time.perf_counter()
    estimates = [p.regularization for p in median_parts(inp).values()]
    found = adaptive.adaptive_search(inp.validation_sums, inp.grid, estimates, max_models=models)
    low, high = found.ratio_interval
    text = (
        f"smoothed validation LDS of {found.models} retrained models (at most {models}) peaks at "
        f"{_fmt(found.regularization)}{_grid_position(found.regularization, inp.grid)}; expected LDS "
        f"{found.ratio:.2f} [{low:.2f}, {high:.2f}] of the best candidate's"
    )
    seconds = time.perf_counter() - started
    return RulePick(
        f"budget_smooth_{models}", found.regularization, text, found.models, seconds, (found.ratio, low, high)
    )


# ------------------------------------------------------------------------------------------------
# fitted rules

#: Constants of the fitted rules before any fit (Algorithm 1's own threshold, the recipe unchanged).
FIT_DEFAULTS: dict[str, dict[str, float]] = {"xi_fitted": {"threshold": 0.5}, "recipe_fitted": {"factor": 1.0}}
_THRESHOLD_CANDIDATES = np.round(np.arange(0.05, 0.96, 0.01), 2)
_FACTOR_CANDIDATES = 10.0 ** np.arange(-3, 3.01, 0.125)


def _params(inp: RuleInput, name: str) -> dict[str, float]:
    return {**FIT_DEFAULTS[name], **dict(inp.fitted.get(name, {}))}


def xi_fitted(inp: RuleInput) -> RulePick:
    """Algorithm 1 at a threshold fitted on other problems (:func:`fit_rule`)."""
    threshold = _params(inp, "xi_fitted")["threshold"]
    pick = xi_grid(inp, threshold, "xi_fitted")
    return dataclasses.replace(pick, diagnosis=f"fitted threshold {threshold:.2f}: {pick.diagnosis}")


def recipe_fitted(inp: RuleInput) -> RulePick:
    """The recipe rule times a factor fitted on other problems (:func:`fit_rule`)."""
    params = _params(inp, "recipe_fitted")
    factor = params.get(f"factor_{inp.attributor}", params["factor"])
    pick = recipe_rule(inp)
    lam = pick.regularization * factor
    return dataclasses.replace(
        pick, rule="recipe_fitted", regularization=lam, diagnosis=f"fitted factor {factor:.3g} × {pick.diagnosis}"
    )


def _relative_lds(row: Mapping, lam: float) -> float:
    """LDS / best of a fitting row at ``lam`` (linear interpolation in log λ, clamped to the grid)."""
    grid, lds = np.asarray(row["grid"], dtype=float), np.asarray(row["lds"], dtype=float)
    positive = grid > 0
    value = np.interp(math.log(max(lam, grid[positive][0])), np.log(grid[positive]), lds[positive])
    return float(value / np.nanmax(lds))


def fit_rule(name: str, problems_rows: Iterable[Mapping]) -> dict[str, float]:
    """The constants of fitted rule ``name`` that maximise the worst LDS / best over ``problems_rows``
    (ties: the better mean), to be passed back as ``RuleInput.fitted[name]``.

    Each row describes one problem of the fitting half: ``grid`` (ascending λ), ``lds`` (the LDS at
    each grid λ that the fit aims at -- use validation queries, never the test queries of the
    problems the rule is reported on), ``xi_bar`` (ξ̄ at each grid λ, for ``xi_fitted``) and
    ``recipe`` (the recipe rule's λ, for ``recipe_fitted``) and optionally ``attributor``:
    ``recipe_fitted`` then fits one factor per attributor as well (``factor_iffim``, ``factor_trak``;
    ``factor`` over all rows serves an attributor not seen).
    """
    if name not in FITTED:
        raise InvalidParameterError("name", name, sorted(FITTED))
    rows = list(problems_rows)
    key = "xi_bar" if name == "xi_fitted" else "recipe"
    for k, row in enumerate(rows):
        missing = [f for f in ("grid", "lds", key) if row.get(f) is None]
        if missing:
            raise InvalidParameterError(f"problems_rows[{k}]", sorted(row), f"a mapping with {', '.join(missing)}")
        if len(row["grid"]) != len(row["lds"]) or len(row["grid"]) < 2:
            raise InvalidParameterError(f"problems_rows[{k}].lds", len(row["lds"]), "one LDS per grid λ (>= 2)")
    if not rows:
        raise InvalidParameterError("problems_rows", rows, "at least one problem")

    def score(values: list[float]) -> tuple[float, float]:
        return (min(values), float(np.mean(values)))

    if name == "xi_fitted":

        def relative(row: Mapping, t: float) -> float:
            return _relative_lds(row, select_on_grid(row["xi_bar"], row["grid"], float(t)).regularization)

        best = max(_THRESHOLD_CANDIDATES, key=lambda t: score([relative(r, t) for r in rows]))
        return {"threshold": float(best)}

    def factor(subset: list[Mapping]) -> float:
        return float(max(_FACTOR_CANDIDATES, key=lambda c: score([_relative_lds(r, c * r["recipe"]) for r in subset])))

    # the recipe's λ is converted to each attributor's scale by a fixed formula; its error differs
    # per attributor (TRAK's margin gradients are not loss gradients), so each gets its own factor
    params = {"factor": factor(rows)}
    for attributor in sorted({r["attributor"] for r in rows if r.get("attributor")}):
        params[f"factor_{attributor}"] = factor([r for r in rows if r.get("attributor") == attributor])
    return params


# ------------------------------------------------------------------------------------------------
# the registry

#: What a rule may need beyond the trained model: the training's :class:`RecipeFacts`, the attributor's
#: published λ, retrained models (``RuleInput.validation_lds``) or their per-model subset sums
#: (``RuleInput.validation_sums``, the adaptive budget rule).
NEEDS = ("recipe", "published_default", "retrained_models", "retrained_sums")
_NEEDS_FIELD = {
    "recipe": "recipe",
    "published_default": "published_default",
    "retrained_models": "validation_lds",
    "retrained_sums": "validation_sums",
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One way of choosing λ: its name (the one vocabulary of the package), how it computes its pick and
    what it costs.

    ``needs`` says which optional parts of a :class:`RuleInput` the rule cannot run without
    (:data:`NEEDS`), ``attributors`` for which attributors it is meant; ``trainings`` how many retrained models it uses; ``threshold`` the ξ̄ level of the
    fixed-level ξ rules; ``designed_after`` marks rules designed after the robustness suite's results
    were seen (their suite numbers are not held out); ``fitted`` rules take constants from
    :func:`fit_rule`. A rule is called like a function: ``rule(inp) -> RulePick``.
    """

    name: str
    compute: Callable[[RuleInput], RulePick]
    needs: frozenset[str] = frozenset()
    trainings: int = 0
    designed_after: bool = False
    fitted: bool = False
    threshold: float | None = None
    description: str = ""
    #: the rule's family: rules that differ only in a parameter share it (``"xi_grid"``, ``"spectrum"``,
    #: ``"budget_span"`` ...); default: the name
    family: str = ""
    #: the attributors the rule means something for (it still computes on the others when called)
    attributors: frozenset[str] = frozenset(ATTRIBUTORS)

    def __post_init__(self) -> None:
        if not self.family:
            object.__setattr__(self, "family", self.name)
        unknown = sorted(set(self.needs) - set(NEEDS))
        if unknown:
            raise InvalidParameterError("needs", unknown, NEEDS)
        if ("retrained_models" in self.needs) != (self.trainings > 0):
            raise InvalidParameterError("trainings", self.trainings, "> 0 exactly when the rule needs retrained models")

    def __call__(self, inp: RuleInput) -> RulePick:
        return self.compute(inp)

    @property
    def retrains(self) -> bool:
        """Whether the rule spends retrained models."""
        return self.trainings > 0

    def applicable(self, inp: RuleInput) -> bool:
        """Whether ``inp`` holds everything the rule needs (:attr:`needs`) and is of one of its :attr:`attributors`."""
        return inp.attributor in self.attributors and all(
            getattr(inp, _NEEDS_FIELD[need]) is not None for need in self.needs
        )


def _xi_grid_rule(threshold: float) -> Rule:
    return Rule(
        f"xi_grid_{threshold}",
        functools.partial(xi_grid, threshold=threshold),
        threshold=threshold,
        description=f"Algorithm 1: the grid λ whose ξ̄ is closest to {threshold}",
        family="xi_grid",
    )


def _budget_rule(
    family: str,
    compute: Callable[..., RulePick],
    models: int,
    description: str,
    needs: frozenset[str] = frozenset({"retrained_models"}),
    **fields,
) -> Rule:
    """A retraining rule of ``family`` that spends ``models`` retrained models (named ``f"{family}_{models}"``)."""
    return Rule(
        f"{family}_{models}",
        functools.partial(compute, models=models),
        needs,
        trainings=models,
        description=description,
        family=family,
        **fields,
    )


def budget_val_lds_rule(models: int) -> Rule:
    """``budget_val_lds_M``: the grid λ with the best validation LDS of ``models`` retrained models."""
    return _budget_rule(
        "budget_val_lds",
        budget_val_lds,
        models,
        f"the grid λ with the best validation-query LDS of {models} retrained models",
    )


def budget_bracket_rule(models: int) -> Rule:
    """``budget_bracket_M``: ξ̄ brackets λ, the validation LDS of ``models`` retrained models chooses inside."""
    return _budget_rule(
        "budget_bracket",
        budget_bracket,
        models,
        f"ξ̄ brackets λ, then the validation LDS of {models} retrained models chooses",
    )


def budget_span_rule(models: int) -> Rule:
    """``budget_span_M``: the validation LDS of ``models`` retrained models chooses inside :func:`span`
    (designed after the suite's results were seen)."""
    return _budget_rule(
        "budget_span",
        budget_span,
        models,
        f"the validation LDS of {models} retrained models chooses inside median_xi_recipe's span",
        designed_after=True,
    )


def budget_smooth_rule(models: int = adaptive.MAX_MODELS) -> Rule:
    """``budget_smooth_M``: the adaptive search with at most ``models`` retrained models (the pick says
    how many it used)."""
    return _budget_rule(
        "budget_smooth",
        budget_smooth,
        models,
        f"validation LDS over the whole grid smoothed in log λ, estimates as a soft prior, 3 to {models} models",
        # the per-model subset sums, not just the validation LDS: it bootstraps and adds models one at a time
        needs=frozenset({"retrained_models", "retrained_sums"}),
    )


BUDGET_SIZES = (2, 5, 10)  #: the M' of the ``budget_val_lds_M`` rules in :data:`RULES`

_RECIPE = frozenset({"recipe"})
_REGISTERED = [
    *(_xi_grid_rule(t) for t in (0.4, 0.5, 0.6)),
    Rule("xi_continuous", xi_continuous, threshold=0.5, description="the ξ̄ = 0.5 crossing by bisection (no grid)"),
    Rule(
        "xi_relative_0.5",
        functools.partial(xi_relative, fraction=0.5, name="xi_relative_0.5"),
        description="ξ̄ half-way from its floor ξ̄₀ to 1",
    ),
    Rule(
        "xi_saturation_0.9",
        functools.partial(xi_relative, fraction=0.9, name="xi_saturation_0.9"),
        description="ξ̄ 90% of the way from its floor to 1 (where it saturates)",
    ),
    Rule("xi_max_slope", xi_max_slope, description="where ξ̄ rises fastest in log λ"),
    Rule("recipe", recipe_rule, _RECIPE, description="λ = λ_wd + 1/Σ_t η_eff(t): early stopping as ridge"),
    Rule(
        "recipe_gauss_newton",
        recipe_gauss_newton,
        _RECIPE,
        description="the recipe rule converted to TRAK's kernel through the loss Hessian's weights p(1−p)",
        # IFFIM's Fisher is already of loss gradients: there the rule is the recipe rule under another name
        attributors=frozenset({"trak"}),
    ),
    Rule(
        "median_xi_recipe",
        median_xi_recipe,
        description="the median of the ξ̄ = 0.5 crossing, ξ̄'s saturation and the recipe rule",
    ),
    *(
        Rule(
            f"spectrum_q{q}",
            functools.partial(spectrum_rule, quantile=q),
            description=f"the {q:.0%} quantile of the non-zero spectrum",
            family="spectrum",
        )
        for q in (0.1, 0.25, 0.5, 0.75, 0.9)
    ),
    Rule("mean_eig_0.1", mean_eig_rule, description="0.1 × the mean eigenvalue (trace / dimension)"),
    Rule(
        "published_default",
        published_default_rule,
        frozenset({"published_default"}),
        description="the attributor's published default λ",
    ),
    *(budget_val_lds_rule(m) for m in BUDGET_SIZES),
    budget_bracket_rule(5),
    budget_span_rule(5),
    budget_smooth_rule(adaptive.MAX_MODELS),
    Rule("xi_fitted", xi_fitted, fitted=True, description="Algorithm 1 at a threshold fitted on other problems"),
    Rule(
        "recipe_fitted",
        recipe_fitted,
        _RECIPE,
        fitted=True,
        description="the recipe rule times a factor fitted on other problems",
    ),
]

#: Every rule of the package by name, the one vocabulary that the selector, the robustness study and the
#: Fig 2 / Fig 3 cases share.
RULES: dict[str, Rule] = {rule.name: rule for rule in _REGISTERED}

#: The paper's rule: Algorithm 1 at ξ̄ = 0.5 on the candidate grid (Fig 2 / Fig 3's pick).
PAPER_RULE = "xi_grid_0.5"
#: The selector's default pick without retraining, the retraining-free rule with the best worst case
#: over the robustness suite's default run (issue 13: worst 0.886 of the best LDS, against 0.635 for
#: the paper's crossing ξ̄ = 0.5, which stays available as ``rule="xi"``).
DEFAULT_NO_RETRAINING = "median_xi_recipe"
#: The family of the selector's default pick with a retraining budget of at most M models
#: (:func:`default_budget_rule`): the adaptive search (issue 21), which replaced ``budget_span`` --
#: designed after the suite's results were seen, and worse in the worst case than the plain search it
#: was meant to improve. The plain search stays registered as the baseline (``budget_val_lds_M``).
DEFAULT_BUDGET = "budget_smooth"


def default_budget_rule(models: int) -> Rule:
    """The selector's default rule with a budget of at most ``models`` retrained models (``budget_smooth_M``)."""
    return budget_smooth_rule(models)


def budget_rules(models: int) -> list[Rule]:
    """The budget rules one budget of ``models`` retrained models pays for: the registered
    ``budget_val_lds`` sizes below it (they reuse the same models), then every budget family at ``models``."""
    return [
        *(budget_val_lds_rule(m) for m in BUDGET_SIZES if m < models),
        budget_val_lds_rule(models),
        budget_bracket_rule(models),
        budget_span_rule(models),
        budget_smooth_rule(models),
    ]


#: Rules designed after the robustness suite's results were seen, so their suite numbers are not held out.
DESIGNED_AFTER = frozenset(name for name, rule in RULES.items() if rule.designed_after)
#: Rules whose constants are fitted on data (:func:`fit_rule`).
FITTED: frozenset[str] = frozenset(name for name, rule in RULES.items() if rule.fitted)
#: Rules that retrain (the others need only the trained model).
RETRAINING = frozenset(name for name, rule in RULES.items() if rule.retrains)


def applicable(name: str, inp: RuleInput) -> bool:
    """Whether rule ``name`` can run on ``inp`` (the recipe, default or retrained models it needs are there)."""
    if name not in RULES:
        raise InvalidParameterError("name", name, sorted(RULES))
    return RULES[name].applicable(inp)


def retraining_free(inp: RuleInput) -> list[str]:
    """The registered rules that need no retrained model and can run on ``inp``, fitted rules only with
    their constants in ``inp.fitted`` (in :data:`RULES` order)."""
    return [
        name
        for name, rule in RULES.items()
        if not rule.retrains and rule.applicable(inp) and (not rule.fitted or name in inp.fitted)
    ]


def all_picks(inp: RuleInput, rules: Iterable[str] | None = None) -> list[RulePick]:
    """Every rule's pick, in :data:`RULES` order (or the order given); with ``rules=None``, rules that
    cannot run on ``inp`` (:func:`applicable`) are left out, while a named rule that cannot run raises."""
    if rules is None:
        names = [name for name, rule in RULES.items() if rule.applicable(inp)]
    else:
        names = list(rules)
        unknown = [name for name in names if name not in RULES]
        if unknown:
            raise InvalidParameterError("rules", unknown, sorted(RULES))
    return [RULES[name](inp) for name in names]
