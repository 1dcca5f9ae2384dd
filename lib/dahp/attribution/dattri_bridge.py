"""dattri's own attributors on our settings: the tasks, loaders and λ mapping in one place.

Used to run the attributors with no closed form in λ (IF CG, IF LiSSA, LoGra, TracIn and its
variants), and by the tests to check our spectral scores against dattri at the same λ.
Scores are returned in this package's sign convention (positive: including the training point
raises the query's margin); dattri's influence functions return the opposite sign.

Device: every attributor gets dattri's ``device=`` (the task's model is moved there; dattri moves
each batch), and the scores come back on the CPU. A Gaussian projection stays on dattri's CPU
projector whatever the device (dattri moves the gradients to it): its CUDA projector draws a
different matrix, so the scores would change with the device (see :mod:`dahp.attribution.features`). The
identity "projection" (no projection) runs on the device. One exception is dattri's own: LoGra
builds its per-layer projections inside dattri on its ``device``, so on a CUDA device they are
drawn by dattri's CUDA projector -- another random projection of the same kind, not the CPU's
numbers to rounding (LoGra's scores are not cached, so no cache entry mixes the two).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import tempfile
from typing import Any

import torch
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from dahp.attribution.spectral import Sweepable, check_regularization
from dahp.core.device import resolve_device
from dahp.data.settings import Setting, as_model_input
from dahp.data.targets import correct_class_probability
from dahp.training.train import train_full

QUERY_BATCH = 500
LISSA_QUERY_BATCH = 20
#: LiSSA samples its training batches from torch's global generator; the solve runs with the generator
#: seeded to this (and restored after), so a LiSSA score does not depend on what ran before it in the
#: process (a cold build trains models first, a warm one does not: the samples, and the table, differed).
LISSA_SAMPLE_SEED = 0
#: Training points whose per-example gradients the influence functions form at once (the curvature
#: still sees every training point in one batch). 500 rows of mnist_mlp's gradients are 220 MB;
#: the whole training set at once (4,000 rows, 1.75 GB, plus vmap's intermediates) peaked at 7 GB.
TRAIN_REP_BATCH = 500


def _reshape(setting: Setting, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sample_shape = setting.data().x_train.shape[1:]
    # dattri's LiSSA collate casts labels to float; dattri adds a leading axis to some batches
    return x.reshape(-1, *sample_shape), y.reshape(-1).long()


def task(
    setting: Setting,
    states: list[dict[str, torch.Tensor]],
    train_fn: str = "loss",
    device: str | torch.device = "cpu",
):
    """A ``dattri.task.AttributionTask`` over ``states`` (one per checkpoint / ensemble member).

    ``train_fn`` is the function whose gradients represent training points: ``"loss"`` (the mean
    cross-entropy, for the influence functions and TracIn) or ``"target"`` (the margin, for TRAK).
    The target of the queries is always the margin. The model lives on ``device``, which must be
    the ``device=`` of the dattri attributor given the task (dattri's own default is the CPU);
    dattri loads each checkpoint into it there.
    """
    from dattri.task import AttributionTask

    model = setting.make_model().to(next(iter(states[0].values())).dtype).to(device)

    def loss_func(params: dict, data: tuple) -> torch.Tensor:
        x, y = _reshape(setting, *data)
        return setting.loss(functional_call(model, params, (x,)), y)

    def target_func(params: dict, data: tuple) -> torch.Tensor:
        x, y = _reshape(setting, *data)
        return setting.target(functional_call(model, params, (x,)), y).sum()

    return AttributionTask(
        loss_func=loss_func if train_fn == "loss" else target_func,
        model=model,
        checkpoints=[copy.deepcopy(s) for s in states],
        target_func=target_func,
    )


def correct_probability_func(setting: Setting, model: torch.nn.Module):
    """TRAK's ``correct_probability_func(params, (x, y))`` for one example."""

    def prob(params: dict, data: tuple) -> torch.Tensor:
        x, y = _reshape(setting, *data)
        return correct_class_probability(functional_call(model, params, (x,)), y)

    return prob


def loaders(
    setting: Setting,
    split: str,
    dtype: torch.dtype = torch.float32,
    train_batch: int | None = None,
    train_index: torch.Tensor | None = None,
    query_index: torch.Tensor | None = None,
    query_batch: int | None = None,
):
    """Unshuffled ``(train_loader, query_loader)`` (optionally restricted to index subsets)."""
    data = setting.data()
    x_train, y_train = as_model_input(data.x_train, dtype), data.y_train
    x_query, y_query = data.queries(split)
    x_query = as_model_input(x_query, dtype)
    if train_index is not None:
        x_train, y_train = x_train[train_index], y_train[train_index]
    if query_index is not None:
        x_query, y_query = x_query[query_index], y_query[query_index]
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=train_batch or len(y_train), shuffle=False)
    query = DataLoader(
        TensorDataset(x_query, y_query), batch_size=min(query_batch or QUERY_BATCH, len(y_query)), shuffle=False
    )
    return train, query


def run(
    setting: Setting,
    attributor: str,
    params: Any,
    split: str,
    cache=None,
    query_index: torch.Tensor | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``(n_train, n_queries)`` scores of dattri's attributor for ``params`` on ``setting``
    (only the queries in ``query_index`` when given: the iterative attributors cost per query),
    computed on ``device`` and returned on the CPU."""
    device = resolve_device(device)
    # dattri draws its own progress bars; inside notebooks and grids they only add noise
    with contextlib.redirect_stderr(io.StringIO()):
        return _run(setting, attributor, params, split, cache, query_index, device).cpu()


def _run(
    setting: Setting,
    attributor: str,
    params: Any,
    split: str,
    cache,
    query_index: torch.Tensor | None,
    device: torch.device,
):

    checkpoints = train_full(setting, 0, cache, progress=False, device=device)
    epoch = getattr(params, "training_epoch", None) or setting.recipe.epochs
    if attributor in ("tracin", "grad_dot", "grad_cos"):
        return _tracin(setting, checkpoints, params, split, query_index, device)
    state = checkpoints.state(epoch)
    if attributor == "if_cg":
        from dattri.algorithm import IFAttributorCG

        attr = IFAttributorCG(
            task(setting, [state], device=device),
            max_iter=params.max_iteration,
            regularization=params.regularization,
            device=str(device),
        )
        return -_attribute_inner_product(attr, setting, split, query_index=query_index)
    if attributor == "if_lissa":
        from dattri.algorithm import IFAttributorLiSSA

        attr = IFAttributorLiSSA(
            task(setting, [state], device=device),
            batch_size=params.batch_size,
            recursion_depth=params.recursion_depth,
            damping=params.regularization,
            scaling=params.scaling,
            device=str(device),
        )
        # LiSSA vmaps its whole recursion over the query batch: small batches bound the memory. Its
        # solve gives the same bits without autograd recording, which held 5 GB at depth 100.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(LISSA_SAMPLE_SEED)
            return -_attribute_inner_product(
                attr, setting, split, query_index=query_index, query_batch=LISSA_QUERY_BATCH, solve_grad=False
            )
    if attributor == "logra":
        return _logra(setting, state, params, split, query_index, device)
    raise ValueError(f"dattri_bridge.run has no route for attributor {attributor!r}")


def _attribute_inner_product(
    attr,
    setting: Setting,
    split: str,
    dtype: torch.dtype = torch.float32,
    query_index: torch.Tensor | None = None,
    query_batch: int | None = None,
    solve_grad: bool = True,
) -> torch.Tensor:
    """``attr.cache(full training set)`` then the scores of ``attr.attribute``, in bounded memory.

    The curvature (the Hessian behind CG, LiSSA's sampled batches, the explicit Hessian) is built
    from one loader holding the whole training set, as before: dattri sums one inverse-Hessian
    product per batch of that loader, so batching it would change the scores. Only the training
    points' gradients -- whose inner products with the transformed queries are the scores, one
    row per point -- are formed ``TRAIN_REP_BATCH`` points at a time (see :func:`_inner_products`,
    also for ``solve_grad``).
    """
    full, query = loaders(setting, split, dtype, query_index=query_index, query_batch=query_batch)
    attr.cache(full)
    train, _ = loaders(setting, split, dtype, train_batch=TRAIN_REP_BATCH)
    return _inner_products(attr, train, query, solve_grad)


@torch.no_grad()
def _inner_products(attr, train: DataLoader, query: DataLoader, solve_grad: bool = True) -> torch.Tensor:
    """What dattri 0.3.0's ``BaseInnerProductAttributor.attribute(train, query)`` returns for a
    one-checkpoint task, with the training gradients formed one batch of ``train`` at a time.

    ``attribute`` would transform the queries (one IHVP solve per query batch) again for every
    training batch; here each query batch is transformed once, in dattri's order and with the same
    draws from torch's global generator before it (so LiSSA samples the same training batches), and
    every training batch is multiplied with the transformed queries. The output is float32, as
    dattri's.

    The task's flattened parameters require grad, so in grad mode every per-example gradient and
    every Hessian-vector product of a solve also records an autograd graph back to them, only to
    be dropped by a ``detach()`` (``torch.func``'s own transforms work the same under
    ``no_grad``). The training gradients are formed under ``no_grad`` (the same values, bit for
    bit). The query solve keeps grad mode when ``solve_grad``, as dattri runs it: CG's float32
    iterations amplify the last-bit differences of the kernels that do not record (up to 3e-3 of
    the largest score of mnist_mlp at λ=1e-2, a few 1e-4 in LDS), so CG keeps dattri's bits and
    pays for the graph while it solves (4 GB for 10 iterations over 20 queries of mnist_mlp, freed
    after). LiSSA's solve gives the same bits without it.
    """
    if len(attr.task.get_checkpoints()) != 1:
        raise ValueError("_inner_products handles one checkpoint (dattri averages several itself)")

    def as_batch(batch) -> tuple[torch.Tensor, ...]:
        # dattri hands each batch to its representation functions with a leading singleton axis
        return tuple(tensor.to(attr.device).unsqueeze(0) for tensor in batch)

    # Opening a DataLoader's iterator draws its base seed from torch's global generator, which LiSSA
    # then samples its batches from: open the training loader first, as dattri's attribute() does.
    train_batches = iter(train)
    transformed = []
    for batch in query:
        with torch.set_grad_enabled(solve_grad):
            rep = attr.generate_test_rep(ckpt_idx=0, data=as_batch(batch))
            transformed.append(attr.transform_test_rep(ckpt_idx=0, test_rep=rep).detach())
    scores = torch.zeros(len(train.sampler), sum(len(t) for t in transformed), device=attr.device)
    row = 0
    for batch in train_batches:
        rep = attr.generate_train_rep(ckpt_idx=0, data=as_batch(batch))
        rep = attr.transform_train_rep(ckpt_idx=0, train_rep=rep).detach()
        col = 0
        for test in transformed:
            scores[row : row + len(rep), col : col + len(test)] = rep @ test.T
            col += len(test)
        row += len(rep)
        del rep  # the next batch's gradients replace these, not join them
    return scores


def _tracin(
    setting: Setting,
    checkpoints,
    params: Any,
    split: str,
    query_index: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    from dattri.algorithm import TracInAttributor

    epochs = params.epochs(checkpoints.epochs)
    states = [checkpoints.state(e) for e in epochs]
    weights = torch.full((len(states),), float(setting.recipe.lr))
    attr = TracInAttributor(
        task(setting, states, device=device),
        weight_list=weights,
        normalized_grad=params.normalization,
        projector_kwargs=projector_kwargs(setting, params.proj_dim, params.proj_seed, device),
        device=str(device),
    )
    train, query = loaders(setting, split, train_batch=500, query_index=query_index)
    # dattri sums lr · ∇L(z_i)·∇f(z'); a step on z_i moves f by -lr · ∇f·∇L(z_i): opposite sign.
    return -attr.attribute(train, query).detach()


def projector_kwargs(
    setting: Setting, proj_dim: int | None, proj_seed: int = 0, device: str | torch.device | None = None
) -> dict:
    """A complete, fresh projector dict (dattri 0.3.0 merges partial dicts into a shared default).

    ``proj_dim=None`` means no projection (dattri's identity projector, on ``device``). A Gaussian
    projection is dattri's CPU projector on every device: its matrix, unlike the CUDA projector's,
    does not depend on the device (see the module docstring).
    """
    if proj_dim is None:
        return {
            "proj_dim": setting.n_params(),
            "proj_max_batch_size": 32,
            "proj_seed": proj_seed,
            "device": str(resolve_device(device)),
            "proj_type": "identity",
        }
    return {
        "proj_dim": proj_dim,
        "proj_max_batch_size": 32,
        "proj_seed": proj_seed,
        "device": "cpu",
        "proj_type": "normal",
    }


def run_trak(
    setting: Setting,
    states: list[dict[str, torch.Tensor]],
    proj_dim: int,
    regularization: float,
    split: str,
    proj_seed: int = 0,
    train_index: torch.Tensor | None = None,
    query_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ``cache`` + ``attribute`` of dattri's ``TRAKAttributor`` (the reference for our spectral TRAK).

    Always on the CPU: it is the tests' reference, and dattri's TRAK mixes the CPU projector's
    output with tensors on its own device.
    """
    from dattri.algorithm import TRAKAttributor

    attribution_task = task(setting, states, train_fn="target", device="cpu")
    attr = TRAKAttributor(
        attribution_task,
        correct_probability_func(setting, attribution_task.get_model()),
        projector_kwargs=projector_kwargs(setting, proj_dim, proj_seed, "cpu"),
        regularization=regularization,
    )
    train, query = loaders(
        setting, split, _dtype(states[0]), train_batch=500, train_index=train_index, query_index=query_index
    )
    attr.cache(train)
    return attr.attribute(query).detach()


def _dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    return next(iter(state.values())).dtype


# --------------------------------------------------------------------------------------------
# LoGra

#: Examples per batch of LoGra's gradient passes (training points and queries) where a setting needs
#: fewer than :data:`LOGRA_BATCH`. GPT-2 holds the activations of every 512-token block of a batch
#: for its backward pass: one LoGra gradient pass of a GPT-2-small-sized model in float32 peaked
#: 1.25 GB higher with two blocks than with one (CPU, eager attention), so 500 blocks would need
#: some 600 GB. dattri's GPT-2 LoGra script uses batches of 4 (about 5 GB), and so does this package.
LOGRA_BATCH_BY_SETTING = {"wikitext2_gpt2": 4}
#: Examples per LoGra batch otherwise (the image settings).
LOGRA_BATCH = 500


def logra_batch_size(setting: Setting) -> int:
    """Examples per batch of LoGra's gradient passes on ``setting``.

    Only the memory depends on it, never the scores: dattri's compressor multiplies each batch's
    per-example gradients of the batch-mean loss by the batch size (the last, smaller batch by its
    own size), so every example is represented by the gradient of its own loss (tested).
    """
    return LOGRA_BATCH_BY_SETTING.get(setting.name, LOGRA_BATCH)


@dataclasses.dataclass
class _LossOutput:
    """What :class:`LossReportingModel` returns given labels (the Hugging Face convention)."""

    loss: torch.Tensor
    logits: torch.Tensor


class LossReportingModel(torch.nn.Module):
    """``model(inputs, labels)`` returns ``.loss = loss(model(inputs), labels)``: the setting's own loss.

    dattri's LoGra differentiates ``model(**batch).loss`` for a dict batch on the query side (for a
    tuple batch it would take ``cross_entropy(model(x), y)``, which is not a language model's loss)
    and the task's ``loss_func`` on the training side; with this model and dict batches both sides
    differentiate the setting's loss.

    The wrapped model's children are this module's children, under the same names and in the same
    order, and the wrapped model itself is not registered: dattri sees exactly the named modules of
    the bare model -- the same hooked layers, and the same projections, whose seeds dattri derives
    from each layer's position in ``named_modules()`` -- and the bare model's state dicts load as they are.
    """

    def __init__(self, model: torch.nn.Module, loss) -> None:
        own = [name for name, _ in model.named_parameters(recurse=False)] + [
            name for name, _ in model.named_buffers(recurse=False)
        ]
        if own:
            raise ValueError(f"LossReportingModel needs a model whose tensors live in its children; it holds {own}")
        super().__init__()
        object.__setattr__(self, "inner", model)  # reachable, not registered (see the class docstring)
        for name, child in model.named_children():
            self.add_module(name, child)
        self.loss = loss

    def train(self, mode: bool = True) -> LossReportingModel:
        self.inner.training = mode
        return super().train(mode)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None):
        """The model's output for ``inputs``; given ``labels``, an object with ``.loss`` and ``.logits``."""
        outputs = self.inner(inputs)
        return outputs if labels is None else _LossOutput(loss=self.loss(outputs, labels), logits=outputs)


class _Examples(torch.utils.data.Dataset):
    """Examples as dicts ``{"inputs", "labels"}``, which dattri's LoGra hands to ``model(**batch)``."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"inputs": self.inputs[i], "labels": self.labels[i]}


def logra_task(setting: Setting, state: dict[str, torch.Tensor], device: str | torch.device = "cpu"):
    """A one-checkpoint ``AttributionTask`` for dattri's LoGra: a :class:`LossReportingModel` on
    ``device`` whose loss (the setting's) is what both sides of LoGra differentiate."""
    from dattri.task import AttributionTask

    model = LossReportingModel(setting.make_model().to(_dtype(state)), setting.loss).to(device)

    def loss_func(model: torch.nn.Module, batch: dict, device: str | None = None) -> torch.Tensor:
        # dattri calls LoGra's training loss unflattened, as loss(module, batch, device)
        return model(**{k: v.to(device or "cpu") for k, v in batch.items()}).loss

    return AttributionTask(loss_func=loss_func, model=model, checkpoints=[copy.deepcopy(state)])


def logra_loaders(
    setting: Setting,
    split: str,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    query_index: torch.Tensor | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Unshuffled ``(train, query)`` loaders of dict batches, ``batch_size`` examples each."""
    train, query = loaders(setting, split, dtype, train_batch=1, query_index=query_index, query_batch=1)
    return tuple(
        DataLoader(_Examples(*loader.dataset.tensors), batch_size=batch_size, shuffle=False)
        for loader in (train, query)
    )


class LoGraScorer(Sweepable):
    """dattri's LoGra on one checkpoint at any λ, from one pass of gradients.

    The first call runs dattri's ``cache`` (the projected per-example gradients of every hooked
    layer, then the damped eFIM inverses and the training points' inverse-FIM products at that λ);
    a later λ forms the inverses and the products again from the stored gradients
    (``compute_preconditioners`` and ``compute_ifvp``, what ``cache`` runs) and reuses the queries'
    projected gradients. Each λ gives what a fresh attributor with ``damping=λ`` gives (tested).
    ``hessian="Identity"`` drops the curvature (the scores are projected gradient inner products,
    the same at every λ). Scores are on the CPU. The gradient pass runs at the first call, so a grid's
    time for its first λ of each projection dimension includes it.

    dattri's LoGra differentiates the loss on both sides, so it attributes the query's loss: its
    positive score (the query's loss falls) has the sign of this package's (the target rises).
    """

    def __init__(
        self,
        setting: Setting,
        state: dict[str, torch.Tensor],
        proj_dim: int,
        split: str = "test",
        query_index: torch.Tensor | None = None,
        device: str | torch.device | None = None,
        hessian: str = "eFIM",
        batch_size: int | None = None,
    ) -> None:
        from dattri.algorithm import LoGraAttributor

        self.device = resolve_device(device)
        self.hessian = hessian
        # dattri writes a batch_metadata.json into its cache_dir (the working directory by default)
        self._scratch = tempfile.TemporaryDirectory(prefix="dahp-logra-")
        self._attr = LoGraAttributor(
            logra_task(setting, state, self.device),
            hessian=hessian,
            proj_dim=proj_dim,
            offload="none",
            cache_dir=self._scratch.name,
            device=str(self.device),
        )
        self._train, self._query = logra_loaders(
            setting, split, batch_size or logra_batch_size(setting), _dtype(state), query_index
        )
        self._memoize_query_gradients()
        self._cached = False

    def _memoize_query_gradients(self) -> None:
        """The queries' projected gradients do not depend on λ: dattri's ``attribute`` forms them once."""
        compute, memo = self._attr._compute_test_gradients, {}

        def once(loader: DataLoader):
            if memo.get("loader") is not loader:
                memo.update(loader=loader, value=compute(loader))
            return memo["value"]

        self._attr._compute_test_gradients = once

    def scores(self, regularization: float) -> torch.Tensor:
        """``(n_train, n_queries)`` LoGra scores at relative damping λ (dattri's ``damping``)."""
        check_regularization(regularization)
        with contextlib.redirect_stderr(io.StringIO()):  # dattri's progress bars
            self._attr.damping = float(regularization)
            if not self._cached:
                self._attr.cache(self._train)
                self._cached = True
            elif self.hessian == "eFIM":
                self._attr.compute_preconditioners(damping=float(regularization))
                self._attr.compute_ifvp()
            return self._attr.attribute(self._train, self._query).detach().cpu()


def _logra(
    setting: Setting,
    state: dict[str, torch.Tensor],
    params: Any,
    split: str,
    query_index: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    return LoGraScorer(setting, state, params.proj_dim, split, query_index, device).scores(params.regularization)
