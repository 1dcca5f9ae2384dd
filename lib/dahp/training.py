"""Training: the attributed full-data model (one checkpoint per epoch) and many models at once.

The paper studies the training epoch of the attributed checkpoint as a hyperparameter, so the
full-data model keeps every epoch (:func:`train_full`). The LDS needs dozens of models retrained on
random subsets and TRAK needs ensembles; those small models are trained together
(:func:`train_many`): their parameters are stacked along a leading model axis and one SGD step of
all of them is a single ``torch.func.vmap`` of ``grad(functional_call(...))``.

Both paths share :func:`epoch_orders`, so a model is determined by (setting, recipe, training
indices, seed) whichever path trains it: the batched path reproduces :func:`train_one`, the plain
``torch.optim.SGD`` loop, model for model (up to floating-point summation order), except for
dropout masks, which the two paths draw from the global random stream in different shapes.

Book: "Data attribution and the LDS" (how the retrained models are trained).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from dahp.cache import Cache, default_cache
from dahp.config import InvalidParameterError, TrainingRecipe
from dahp.progress import tqdm
from dahp.settings import Setting

StackedState = dict[str, torch.Tensor]  #: name -> tensor with a leading model axis
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


def train_one(
    setting: Setting,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: torch.Tensor,
    seed: int,
    recipe: TrainingRecipe | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train one model with the ordinary ``torch.optim.SGD`` loop (the reference path).

    Args:
        x, y: the whole training set; ``indices`` selects the points this model sees.
        seed: determines the initial weights, the batch orders and the dropout masks.
        on_epoch_end: called as ``on_epoch_end(epoch, model)`` after epochs 1..E.
    """
    recipe = recipe or setting.recipe
    model = setting.init_model(seed)
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    generator = order_generator(seed)
    for epoch in range(1, recipe.epochs + 1):
        order = epoch_orders(indices, generator)
        for start in range(0, len(order), recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            optimizer.zero_grad()
            setting.loss(model(x[batch]), y[batch]).backward()
            optimizer.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    return model.eval()


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
) -> StackedState:
    """Train ``len(seeds)`` models at once; model ``k`` sees ``index_sets[k]`` and uses ``seeds[k]``.

    Every model runs the same number of steps, so all index sets have the same size. Models with
    buffers (batch norm) cannot update running statistics inside ``vmap``; they are trained one by
    one with :func:`train_one` and stacked.

    Args:
        index_sets: shape ``(n_models, subset_size)``, indices into ``x``.
        dropout_seed: seeds the global stream the stacked models draw dropout masks from.
        on_epoch_end: called as ``on_epoch_end(epoch, stacked_state)`` after epochs 1..E.
        progress: show a progress bar over epochs (a string is used as its label).

    Returns:
        The final state of every model, stacked: name -> ``(n_models, *shape)``.
    """
    recipe = recipe or setting.recipe
    _check_index_sets(index_sets, seeds, len(y))
    if any(True for _ in setting.make_model().buffers()):
        return _train_many_sequentially(setting, x, y, index_sets, seeds, recipe, on_epoch_end)
    models = [setting.init_model(seed) for seed in seeds]
    base = models[0].train()

    params = {name: p.detach().clone() for name, p in stack_states(models).items()}
    momentum_buffers: dict[str, torch.Tensor] = {}

    def batch_loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return setting.loss(functional_call(base, p, (xb,)), yb)

    batched_grad = vmap(grad(batch_loss), randomness="different")
    generators = [order_generator(seed) for seed in seeds]
    torch.manual_seed(dropout_seed)
    epochs = range(1, recipe.epochs + 1)
    label = progress if isinstance(progress, str) else f"training {len(seeds)} {setting.name} models"
    for epoch in tqdm(epochs, desc=label, disable=not progress, leave=False):
        orders = torch.stack([epoch_orders(ix, g) for ix, g in zip(index_sets, generators)])
        for start in range(0, orders.shape[1], recipe.batch_size):
            batch = orders[:, start : start + recipe.batch_size]
            grads = batched_grad(params, x[batch], y[batch])
            _sgd_step(params, grads, momentum_buffers, recipe)
        if on_epoch_end is not None:
            on_epoch_end(epoch, params)
    return params


def _sgd_step(params: StackedState, grads: StackedState, buffers: StackedState, recipe: TrainingRecipe) -> None:
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
    torch._foreach_add_(p_list, g_list, alpha=-recipe.lr)


def _train_many_sequentially(
    setting: Setting,
    x: torch.Tensor,
    y: torch.Tensor,
    index_sets: torch.Tensor,
    seeds: Sequence[int],
    recipe: TrainingRecipe,
    on_epoch_end: EpochCallback | None,
) -> StackedState:
    per_epoch: list[list[dict[str, torch.Tensor]]] = [[] for _ in range(recipe.epochs)]

    def keep(epoch: int, model: nn.Module) -> None:
        if on_epoch_end is not None:
            per_epoch[epoch - 1].append({k: v.detach().clone() for k, v in model.state_dict().items()})

    models = [train_one(setting, x, y, ix, seed, recipe, keep) for ix, seed in zip(index_sets, seeds)]
    if on_epoch_end is not None:
        for epoch, states in enumerate(per_epoch, start=1):
            on_epoch_end(epoch, {k: torch.stack([s[k] for s in states]) for k in states[0]})
    return stack_states(models)


@torch.no_grad()
def evaluate_many(
    setting: Setting,
    state: StackedState,
    x: torch.Tensor,
    y: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    chunk: int = 2048,
) -> torch.Tensor:
    """Apply ``fn(logits, y)`` (default: the setting's target) for every stacked model, in eval mode.

    Returns:
        Shape ``(n_models, len(x))``.
    """
    fn = fn or setting.target
    base = setting.make_model().eval()

    def one(s: StackedState, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return fn(functional_call(base, s, (xb,)), yb)

    parts = [
        vmap(one, in_dims=(0, None, None))(state, x[i : i + chunk], y[i : i + chunk]) for i in range(0, len(x), chunk)
    ]
    return torch.cat(parts, dim=1)


def accuracy_many(setting: Setting, state: StackedState, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of every stacked model on ``(x, y)``, shape ``(n_models,)``."""
    hits = evaluate_many(setting, state, x, y, fn=lambda logits, labels: (logits.argmax(-1) == labels).float())
    return hits.mean(dim=1)


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


def train_full(setting: Setting, seed: int = 0, cache: Cache | None = None, progress: bool = True) -> Checkpoints:
    """The full-data model of ``setting`` with a checkpoint after every epoch (cached)."""
    cache = default_cache() if cache is None else cache
    data = setting.data()
    spec = {**setting.spec(), "seed": seed}

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
        )
        return {name: torch.stack([s[name] for s in kept]) for name in kept[0]}

    states = cache.get_or_compute("checkpoints", spec, compute)
    return Checkpoints(setting=setting, seed=seed, states=states)
