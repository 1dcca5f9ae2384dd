"""Training: the attributed full-data model (one checkpoint per epoch) and many models at once.

The paper studies the training epoch of the attributed checkpoint as a hyperparameter, so the
full-data model keeps every epoch (:func:`train_full`). The LDS needs dozens of models retrained on
random subsets and TRAK needs ensembles; those small models are trained together
(:func:`train_many`): their parameters and buffers are stacked along a leading model axis and one
optimizer step of all of them is a single ``torch.func.vmap`` of ``grad(functional_call(...))``,
followed by the recipe's update (SGD, Adam or AdamW, with the same arithmetic as ``torch.optim``)
at the scheduled learning rate (:func:`schedule_factor`, shared with the reference loop).

Both paths share :func:`epoch_orders`, so a model is determined by (setting, recipe, training
indices, seed) whichever path trains it: the batched path reproduces :func:`train_one`, the plain
``torch.optim`` loop, model for model (up to floating-point summation order), batch norm's running
statistics included, except for dropout masks, which the two paths draw from the global random
stream in different shapes.

Every function takes ``device=`` (:func:`dahp.core.device.resolve_device`); models are initialised on the
CPU (the same weights on every device) and what comes back is on the CPU.

Book: "Data attribution and the LDS" (how the retrained models are trained).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from dahp.core.cache import Cache, default_cache
from dahp.core.config import InvalidParameterError, TrainingRecipe
from dahp.core.device import one_thread_below, resolve_device
from dahp.core.progress import tqdm
from dahp.data.settings import Setting

StackedState = dict[str, torch.Tensor]  #: name -> tensor with a leading model axis
#: Upper bound (bytes) of the logits of all stacked models held at once by :func:`evaluate_many`.
EVAL_CHUNK_BYTES = 1 << 30
EpochCallback = Callable[[int, StackedState], None]


def epoch_orders(indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The training indices in the order one epoch visits them (a fresh seeded permutation)."""
    return indices[torch.randperm(len(indices), generator=generator)]


def order_generator(seed: int) -> torch.Generator:
    """The generator of a model's batch orders (separate from its initialisation stream)."""
    return torch.Generator().manual_seed(seed)


def _check_index_sets(index_sets: torch.Tensor, seeds: Sequence[int], n_train: int) -> None:
    if index_sets.ndim != 2:
        raise InvalidParameterError("index_sets.shape", tuple(index_sets.shape), "(n_models, subset_size)")
    if len(seeds) != index_sets.shape[0]:
        raise InvalidParameterError("len(seeds)", len(seeds), f"{index_sets.shape[0]} (one seed per index set)")
    if index_sets.numel() and not (0 <= int(index_sets.min()) and int(index_sets.max()) < n_train):
        raise InvalidParameterError("index_sets", "out of range", f"indices in [0, {n_train})")


def schedule_factor(recipe: TrainingRecipe, step: int, total_steps: int) -> float:
    """The multiple of ``recipe.lr`` used by the optimizer step that follows ``step`` steps already taken.

    ``step`` counts from 0, as ``torch.optim.lr_scheduler.LambdaLR`` does; both training paths call
    this one function, so their learning rates agree exactly.

    - ``constant``: 1.
    - ``linear``: ``step / w`` while ``step < w``, then ``(T - step) / (T - w)`` (at least 0), with
      ``w = warmup_steps`` and ``T = total_steps`` -- the arithmetic of transformers'
      ``get_linear_schedule_with_warmup`` (so the very first step has rate 0 when ``w > 0``).
    - ``noam``: ``min(s ** -0.5, s * w ** -1.5)`` with ``s = step + 1`` (the Transformer schedule,
      steps counted from 1, so the first step is not wasted at rate 0).
    - ``cosine``: ``step / w`` while ``step < w``, then ``(1 + cos(π (step - w) / (T - w))) / 2`` --
      the arithmetic of transformers' ``get_cosine_schedule_with_warmup`` (half a cosine, to 0 at T).
    """
    if recipe.schedule == "constant":
        return 1.0
    warmup = recipe.warmup_steps
    if recipe.schedule == "linear":
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    if recipe.schedule == "cosine":
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    counted = step + 1
    return min(counted**-0.5, counted * warmup**-1.5)


def _make_optimizer(parameters: Iterable[nn.Parameter], recipe: TrainingRecipe) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer the recipe names (the reference the batched path reproduces)."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    adam = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
    # weight_decay passed explicitly: AdamW's own default (1e-2) must not sneak in
    return adam(parameters, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.weight_decay)


def train_one(
    setting: Setting,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: torch.Tensor,
    seed: int,
    recipe: TrainingRecipe | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    *,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Train one model with the ordinary ``torch.optim`` loop (the reference path).

    Args:
        x, y: the whole training set; ``indices`` selects the points this model sees.
        seed: determines the initial weights, the batch orders and the dropout masks.
        on_epoch_end: called as ``on_epoch_end(epoch, model)`` after epochs 1..E (the model is on
            ``device``).
        device: where to train (:func:`dahp.core.device.resolve_device`); the model comes back on the CPU.
    """
    recipe = recipe or setting.recipe
    device = resolve_device(device)
    model = setting.init_model(seed).to(device)  # initialised on the CPU: the same weights on every device
    model.train()
    x, y = x.to(device), y.to(device)
    optimizer = _make_optimizer(model.parameters(), recipe)
    total_steps = recipe.epochs * recipe.steps_per_epoch(len(indices))
    scheduler = None
    if recipe.schedule != "constant":  # the constant path stays the plain optimizer loop
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: schedule_factor(recipe, step, total_steps)
        )
    generator = order_generator(seed)
    with one_thread_below(sum(p.numel() for p in model.parameters()), device):  # as train_many
        for epoch in range(1, recipe.epochs + 1):
            order = epoch_orders(indices, generator).to(device)
            for start in range(0, len(order), recipe.batch_size):
                batch = order[start : start + recipe.batch_size]
                optimizer.zero_grad()
                setting.loss(model(x[batch]), y[batch]).backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            if on_epoch_end is not None:
                on_epoch_end(epoch, model)
    return model.cpu().eval()


def dropout_stream(setting: Setting, device: torch.device) -> dict[str, str]:
    """What a model's dropout masks are drawn from, for cache keys: ``{}`` on the CPU or without dropout.

    The CPU and CUDA generators draw different masks from one seed, so a model with dropout trained
    on CUDA is another (statistically equivalent) model than the one trained on the CPU; the key
    says which stream, and CPU keys stay what they always were.
    """
    if device.type == "cpu" or not any(
        isinstance(m, nn.modules.dropout._DropoutNd) for m in setting.make_model().modules()
    ):
        return {}
    return {"dropout_stream": device.type}


def stack_states(models: Sequence[nn.Module]) -> StackedState:
    """Stack the state dicts of identically shaped models along a new leading axis."""
    states = [m.state_dict() for m in models]
    return {name: torch.stack([s[name].detach() for s in states]) for name in states[0]}


def train_many(
    setting: Setting,
    x: torch.Tensor,
    y: torch.Tensor,
    index_sets: torch.Tensor,
    seeds: Sequence[int],
    *,
    dropout_seed: int = 0,
    recipe: TrainingRecipe | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool | str = False,
    device: str | torch.device | None = None,
) -> StackedState:
    """Train ``len(seeds)`` models at once; model ``k`` sees ``index_sets[k]`` and uses ``seeds[k]``.

    Every model runs the same number of steps, so all index sets have the same size. Parameters
    and buffers are stacked along a leading model axis. Models with batch norm train batched too:
    each model's running statistics are its own slice of the stacked buffers, which batch norm
    updates in place inside ``vmap(grad(...))`` (legal because the buffers carry the model axis).

    Args:
        index_sets: shape ``(n_models, subset_size)``, indices into ``x``.
        dropout_seed: seeds the global stream the stacked models draw dropout masks from.
        on_epoch_end: called as ``on_epoch_end(epoch, stacked_state)`` after epochs 1..E, with the
            state on the CPU.
        progress: show a progress bar over epochs (a string is used as its label).
        device: where to train (:func:`dahp.core.device.resolve_device`).

    Returns:
        The final state of every model (parameters and buffers, in ``state_dict`` order), stacked on
        the CPU: name -> ``(n_models, *shape)``.
    """
    recipe = recipe or setting.recipe
    _check_index_sets(index_sets, seeds, len(y))
    device = resolve_device(device)
    models = [setting.init_model(seed) for seed in seeds]  # on the CPU: the same weights on every device
    names = list(models[0].state_dict())
    stacked_params, stacked_buffers = stack_module_state(models)
    params = {n: p.detach().to(device) for n, p in stacked_params.items()}  # plain tensors, updated in place
    buffers = {n: b.to(device) for n, b in stacked_buffers.items()}
    base = models[0].to(device).train()  # its own tensors are never used: functional_call swaps all in
    x, y = x.to(device), y.to(device)

    def batch_loss(p: StackedState, b: StackedState, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return setting.loss(functional_call(base, (p, b), (xb,)), yb)

    batched_grad = vmap(grad(batch_loss), randomness="different")
    optimizer = _StackedOptimizer(recipe, recipe.epochs * recipe.steps_per_epoch(index_sets.shape[1]))
    generators = [order_generator(seed) for seed in seeds]
    torch.manual_seed(dropout_seed)
    epochs = range(1, recipe.epochs + 1)
    label = progress if isinstance(progress, str) else f"training {len(seeds)} {setting.name} models"
    n_parameters = sum(p.numel() for p in models[0].parameters())
    with one_thread_below(n_parameters, device):
        for epoch in tqdm(epochs, desc=label, disable=not progress, leave=False):
            orders = torch.stack([epoch_orders(ix, g) for ix, g in zip(index_sets, generators)]).to(device)
            for start in range(0, orders.shape[1], recipe.batch_size):
                batch = orders[:, start : start + recipe.batch_size]
                optimizer.step(params, batched_grad(params, buffers, x[batch], y[batch]))
            if on_epoch_end is not None:
                on_epoch_end(epoch, _on_cpu({**params, **buffers}, names))
    return _on_cpu({**params, **buffers}, names)


def _on_cpu(state: StackedState, names: Sequence[str]) -> StackedState:
    """The stacked state on the CPU, in ``state_dict`` order (copies when the state is elsewhere)."""
    return {name: state[name].detach().cpu() for name in names}


class _StackedOptimizer:
    """The recipe's optimizer and schedule applied to stacked parameters (all models step together)."""

    def __init__(self, recipe: TrainingRecipe, total_steps: int) -> None:
        self.recipe = recipe
        self.total_steps = total_steps
        self.steps_taken = 0
        self.state: dict[str, StackedState] = {}

    def step(self, params: StackedState, grads: StackedState) -> None:
        """One optimizer step of every model, in place, at the scheduled learning rate."""
        recipe = self.recipe
        # the same product LambdaLR forms (base lr times factor); exactly recipe.lr when constant
        lr = recipe.lr * schedule_factor(recipe, self.steps_taken, self.total_steps)
        self.steps_taken += 1
        if recipe.optimizer == "sgd":
            _sgd_step(params, grads, self.state.setdefault("momentum_buffer", {}), recipe, lr)
        else:
            _adam_step(params, grads, self.state, recipe, lr, self.steps_taken)


def _sgd_step(
    params: StackedState, grads: StackedState, buffers: StackedState, recipe: TrainingRecipe, lr: float
) -> None:
    """One step of ``torch.optim.SGD`` (dampening 0, no Nesterov) on stacked parameters, in place.

    The same arithmetic as torch's own multi-tensor SGD, so the two paths agree to rounding.
    """
    names = list(params)
    p_list, g_list = [params[n] for n in names], [grads[n] for n in names]
    if recipe.weight_decay:
        g_list = torch._foreach_add(g_list, p_list, alpha=recipe.weight_decay)
    if recipe.momentum:
        if buffers:
            b_list = [buffers[n] for n in names]
            torch._foreach_mul_(b_list, recipe.momentum)
            torch._foreach_add_(b_list, g_list)
        else:
            b_list = [g.clone() for g in g_list]
            buffers.update(zip(names, b_list))
        g_list = b_list
    torch._foreach_add_(p_list, g_list, alpha=-lr)


def _adam_step(
    params: StackedState,
    grads: StackedState,
    state: dict[str, StackedState],
    recipe: TrainingRecipe,
    lr: float,
    step: int,
) -> None:
    """Step ``step`` (counted from 1) of ``torch.optim.Adam`` / ``AdamW`` on stacked parameters, in place.

    The arithmetic of torch's multi-tensor Adam (no amsgrad): L2 added to the gradient for Adam,
    decoupled decay ``p *= 1 - lr * weight_decay`` for AdamW, bias-corrected moments.
    """
    names = list(params)
    if not state:
        state["exp_avg"] = {n: torch.zeros_like(params[n]) for n in names}
        state["exp_avg_sq"] = {n: torch.zeros_like(params[n]) for n in names}
    p_list, g_list = [params[n] for n in names], [grads[n] for n in names]
    m_list, v_list = [state["exp_avg"][n] for n in names], [state["exp_avg_sq"][n] for n in names]
    beta1, beta2 = recipe.betas
    if recipe.weight_decay:
        if recipe.optimizer == "adamw":
            torch._foreach_mul_(p_list, 1 - lr * recipe.weight_decay)
        else:
            g_list = torch._foreach_add(g_list, p_list, alpha=recipe.weight_decay)
    torch._foreach_lerp_(m_list, g_list, 1 - beta1)
    torch._foreach_mul_(v_list, beta2)
    torch._foreach_addcmul_(v_list, g_list, g_list, 1 - beta2)
    bias_correction1 = 1 - beta1 ** float(step)
    bias_correction2 = 1 - beta2 ** float(step)
    step_size = (lr / bias_correction1) * -1
    denom = torch._foreach_sqrt(v_list)
    torch._foreach_div_(denom, bias_correction2**0.5)
    torch._foreach_add_(denom, recipe.eps)
    torch._foreach_addcdiv_(p_list, m_list, denom, step_size)


@torch.no_grad()
def evaluate_many(
    setting: Setting,
    state: StackedState,
    x: torch.Tensor,
    y: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    chunk: int | None = None,
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Apply ``fn(logits, y)`` (default: the setting's target) for every stacked model, in eval mode.

    ``state`` holds parameters and buffers (batch norm evaluates with each model's own running
    statistics). ``chunk`` examples go through all models at once; by default as many as keep the
    models' logits within :data:`EVAL_CHUNK_BYTES` (at most 2,048): a language model's logits over a
    512-token block and GPT-2's vocabulary are 100 MB per example and model. Each example's value does
    not depend on the chunk.

    Returns:
        Shape ``(n_models, len(x))``, on the CPU.
    """
    fn = fn or setting.target
    device = resolve_device(device)
    base = setting.make_model().to(device).eval()
    state = {name: t.to(device) for name, t in state.items()}

    def one(s: StackedState, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return fn(functional_call(base, s, (xb,)), yb)

    if chunk is None:
        n_models = next(iter(state.values())).shape[0]
        first = {name: t[0] for name, t in state.items()}
        probe = functional_call(base, first, (x[:1].to(device),))
        logits_bytes = probe.element_size() * probe.numel()
        chunk = max(1, min(2048, EVAL_CHUNK_BYTES // max(1, n_models * logits_bytes)))

    parts = [
        vmap(one, in_dims=(0, None, None))(state, x[i : i + chunk].to(device), y[i : i + chunk].to(device)).cpu()
        for i in range(0, len(x), chunk)
    ]
    return torch.cat(parts, dim=1)


def accuracy_many(
    setting: Setting,
    state: StackedState,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Accuracy of every stacked model on ``(x, y)``, shape ``(n_models,)``, on the CPU."""
    return evaluate_many(setting, state, x, y, fn=setting.correct, device=device).mean(dim=1)


# --------------------------------------------------------------------------------------------
# The attributed model: trained on all training points, one checkpoint per epoch


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Per-epoch checkpoints of the full-data model of a setting."""

    setting: Setting
    seed: int
    states: StackedState  #: name -> ``(epochs, *shape)``; row ``e - 1`` is the state after epoch ``e``

    @property
    def epochs(self) -> int:
        """Number of trained epochs (checkpoints are numbered 1..epochs)."""
        return next(iter(self.states.values())).shape[0]

    def state(self, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """State dict after ``epoch`` (default: the last epoch)."""
        epoch = self.epochs if epoch is None else epoch
        check_epoch(self.setting, epoch, self.epochs)
        return {name: t[epoch - 1].clone() for name, t in self.states.items()}

    def model(self, epoch: int | None = None) -> nn.Module:
        """The model after ``epoch`` (default: the last), in eval mode."""
        model = self.setting.make_model()
        model.load_state_dict(self.state(epoch))
        return model.eval()


def check_epoch(setting: Setting, epoch: int, trained_epochs: int | None = None) -> None:
    """Raise before compute when ``epoch`` is not one of the trained checkpoints 1..E."""
    trained_epochs = setting.recipe.epochs if trained_epochs is None else trained_epochs
    if not (isinstance(epoch, int) and 1 <= epoch <= trained_epochs):
        raise InvalidParameterError(
            "epoch", epoch, f"an integer in 1..{trained_epochs} (the trained epochs of {setting.name})"
        )


def train_full(
    setting: Setting,
    seed: int = 0,
    cache: Cache | None = None,
    progress: bool = True,
    *,
    device: str | torch.device | None = None,
) -> Checkpoints:
    """The full-data model of ``setting`` with a checkpoint after every epoch (cached on the CPU; the
    device is not part of the key)."""
    cache = default_cache() if cache is None else cache
    device = resolve_device(device)  # a bad name fails here, before the data are loaded
    data = setting.data()
    spec = {**setting.spec(), "seed": seed, **dropout_stream(setting, device)}

    def compute() -> StackedState:
        kept: list[StackedState] = []
        all_points = torch.arange(data.n_train).unsqueeze(0)
        train_many(
            setting,
            data.x_train,
            data.y_train,
            all_points,
            [seed],
            dropout_seed=seed,
            on_epoch_end=lambda epoch, state: kept.append({k: v[0].clone() for k, v in state.items()}),
            progress=f"training the full-data {setting.name} model" if progress else False,
            device=device,
        )
        return {name: torch.stack([s[name] for s in kept]) for name in kept[0]}

    states = cache.get_or_compute("checkpoints", spec, compute)
    return Checkpoints(setting=setting, seed=seed, states=states)


def _has_dropout(setting: Setting) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in setting.make_model().modules())


def train_full_many(
    setting: Setting,
    seeds: Sequence[int],
    cache: Cache | None = None,
    progress: bool = True,
    *,
    device: str | torch.device | None = None,
) -> list[Checkpoints]:
    """:func:`train_full` for several seeds, the ones not yet cached trained together in one batch.

    Each model is cached under :func:`train_full`'s own key, with the same content: on the CPU a model
    without dropout comes out of a batched :func:`train_many` bit for bit as it does alone (the
    per-model slices of vmap's batched products are the same products; tested), several times faster
    for the small models of the robustness suite, where one model's steps are mostly overhead. A
    model with dropout (one dropout stream per call) or on another device trains one seed at a time.
    """
    cache = default_cache() if cache is None else cache
    device = resolve_device(device)
    seeds = list(seeds)
    data = setting.data()
    specs = {seed: {**setting.spec(), "seed": seed, **dropout_stream(setting, device)} for seed in seeds}
    missing = [seed for seed in dict.fromkeys(seeds) if cache.load("checkpoints", specs[seed]) is None]
    if len(missing) > 1 and device.type == "cpu" and not _has_dropout(setting):
        kept: list[StackedState] = []
        all_points = torch.arange(data.n_train).unsqueeze(0).repeat(len(missing), 1)
        train_many(
            setting,
            data.x_train,
            data.y_train,
            all_points,
            missing,
            on_epoch_end=lambda epoch, state: kept.append({k: v.clone() for k, v in state.items()}),
            progress=f"training {len(missing)} full-data {setting.name} models" if progress else False,
            device=device,
        )
        for k, seed in enumerate(missing):
            cache.save("checkpoints", specs[seed], {name: torch.stack([s[name][k] for s in kept]) for name in kept[0]})
    return [train_full(setting, seed, cache, progress, device=device) for seed in seeds]
