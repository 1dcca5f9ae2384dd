"""Per-example gradient features, projected or not, computed once and cached (spec: "Notation").

- training-loss gradients ``G`` (rows ``∇θ L(z_i, θ)``) and query-target gradients ``g`` for the
  influence functions (IFFIM, IF explicit);
- margin gradients of training points and queries, scaled by ``1/sqrt(#parameters)``, for TRAK
  (dattri's convention), with the weights ``1 - p_i`` of the training points.

Gradients are taken with ``torch.func`` (``vmap(grad(...))``) in eval mode, flattened in the order
of ``model.named_parameters()`` (dattri's order). Projections use dattri's own CPU projector
(``dattri.func.projection.random_project``, Gaussian, ``proj_seed``, one ``ensemble_id`` per
ensemble member). That projector draws its matrix in blocks of 100 columns from seeds that do not
depend on the projection dimension, so the unnormalised projection to ``k`` dimensions is the
first ``k`` columns of the one to ``K > k`` (both at least 100): a sweep over projection dimensions
projects once, at the largest, and slices (:func:`project_nested`; tested against dattri).

Device: gradients and projections run on ``device`` (:func:`dahp.core.device.resolve_device`); what is
returned (and cached) is on the CPU. The projection matrix is the same on every device: dattri's
CUDA projector (``proj_type="normal"`` on a CUDA device, or ``"sjlt"``) draws *another* matrix
(one block from a CUDA generator), which would change every projected number with the device, so
on a CUDA device the blocks of dattri's CPU projector are drawn from the CPU generator exactly as
dattri draws them, moved to the device and multiplied there (:func:`project`; tested against
dattri on the CPU). That costs one CPU draw of the whole ``(#parameters, p)`` matrix per chunk of
gradients, which dominates on a GPU for large models (ResNet-9: ~3.6 s per block of 100 columns on
16 cores). ``projector="device"`` (or ``$DAHP_PROJECTOR=device``) draws the same blocks, from the
same seeds, from the computing device's own generator instead: identical to dattri's on the CPU,
another (equally Gaussian) matrix on CUDA, drawn in milliseconds. The generator's device type is
then part of the projection's cache key (:attr:`Projection.generator`), so features drawn by
different generators are never mixed; with the default it is left out, and no key changes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call, grad, vmap

from dahp.attribution.scales import feature_scale
from dahp.core.cache import Cache, default_cache
from dahp.core.config import InvalidParameterError
from dahp.core.device import resolve_device
from dahp.core.progress import tqdm
from dahp.data.settings import Setting, as_model_input
from dahp.data.targets import correct_class_probability

#: Block width of dattri's CPU projector; nesting holds for dimensions at least this large.
PROJECTOR_BLOCK = 100
#: Upper bound (bytes) of one chunk of raw per-example gradients held in memory: the rows handed
#: to the projector at once (each projector call redraws its whole Gaussian matrix, so fewer,
#: larger chunks are faster).
GRADIENT_CHUNK_BYTES = 1 << 30
#: Upper bound (bytes) of the gradients one ``vmap`` call forms; a chunk is filled by several
#: such calls, written in place, so vmap's intermediates stay a few times this size instead of a
#: few times the chunk's.
VMAP_CHUNK_BYTES = 1 << 27

TargetFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Projection:
    """A random projection of gradient features (dattri's Gaussian projector on the CPU)."""

    dim: int  #: projected dimension p
    seed: int = 0  #: dattri's ``proj_seed``
    ensemble_id: int = 0  #: dattri's ``ensemble_id`` (TRAK: the index of the ensemble member)
    #: device type whose generator draws the matrix: ``"cpu"`` (dattri's matrix, on every device) or
    #: the computing device's (``projector="device"``, see the module docstring)
    generator: str = "cpu"

    def as_dict(self) -> dict:
        """Plain-dict form for cache keys (the default generator is left out: keys from before it existed hold)."""
        found = dataclasses.asdict(self)
        if self.generator == "cpu":
            del found["generator"]
        return found


#: How the projection matrix is drawn: dattri's CPU matrix everywhere, or the computing device's generator.
PROJECTORS = ("dattri", "device")
PROJECTOR_ENV = "DAHP_PROJECTOR"


def projection_generator(device: str | torch.device | None = None, projector: str | None = None) -> str:
    """The :attr:`Projection.generator` for work on ``device``: ``"cpu"`` for ``projector="dattri"``
    (the default; also ``$DAHP_PROJECTOR``), the device's type for ``"device"``."""
    projector = projector if projector is not None else os.environ.get(PROJECTOR_ENV, "dattri")
    if projector not in PROJECTORS:
        raise InvalidParameterError("projector", projector, PROJECTORS)
    return "cpu" if projector == "dattri" else resolve_device(device).type


def parameter_names(setting: Setting) -> list[str]:
    """Names of the trainable parameters, in ``named_parameters()`` order (dattri's flattening)."""
    return [name for name, p in setting.make_model().named_parameters() if p.requires_grad]


def check_proj_dim(setting: Setting, proj_dim: int | None) -> None:
    """A projection dimension must be a positive integer no larger than the parameter count."""
    if proj_dim is None:
        return
    n_params = setting.n_params()
    if not (isinstance(proj_dim, int) and 1 <= proj_dim <= n_params):
        raise InvalidParameterError(
            "proj_dim",
            proj_dim,
            f"None (no projection) or an integer in 1..{n_params} (the parameter count of {setting.name})",
        )


def per_example_gradients(
    setting: Setting,
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    fn: TargetFn,
    scale: float = 1.0,
    progress: bool | str = False,
    sink: Callable[[int, torch.Tensor], None] | None = None,
    keep: bool | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor | None:
    """Rows ``scale * ∇θ fn(model(x_i), y_i)`` for every example, flattened (shape ``(N, d)``).

    With ``sink``, chunks (at most :data:`GRADIENT_CHUNK_BYTES` each) are handed to
    ``sink(start_row, chunk)`` as they are filled. ``keep`` (default: when there is no sink) gathers
    every row into the returned tensor; without it only one chunk of rows exists at a time (a
    buffer that the next chunk overwrites: a sink that keeps rows must copy them) and ``None`` is
    returned.

    The gradients are formed on ``device``; the returned rows are on the CPU. A sink gets each
    chunk on ``device`` (on the CPU: the returned rows themselves, when kept).
    """
    device = resolve_device(device)
    model = setting.make_model().eval().to(device)
    names = parameter_names(setting)
    params = {k: v.to(device) for k, v in state.items() if k in names}
    buffers = {k: v.to(device) for k, v in state.items() if k not in names}
    dtype = next(iter(params.values())).dtype

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return fn(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0)).sum()

    per_example = vmap(grad(one), in_dims=(None, 0, 0))
    d = sum(params[n].numel() for n in names)
    row_bytes = d * torch.empty((), dtype=dtype).element_size()
    chunk = max(1, min(len(x), GRADIENT_CHUNK_BYTES // row_bytes))
    step = max(1, min(chunk, VMAP_CHUNK_BYTES // row_bytes))
    keep = sink is None if keep is None else keep
    out = torch.empty(len(x), d, dtype=dtype) if keep else None
    # on the CPU the kept rows are filled in place; elsewhere a chunk is filled on the device first
    in_place = out is not None and device.type == "cpu"
    scratch = None
    starts = range(0, len(x), chunk)
    label = progress if isinstance(progress, str) else "per-example gradients"
    for start in tqdm(starts, desc=label, disable=not progress or len(starts) < 2, leave=False):
        stop = min(start + chunk, len(x))
        if in_place:
            rows = out[start:stop]
        else:
            scratch = torch.empty(chunk, d, dtype=dtype, device=device) if scratch is None else scratch
            rows = scratch[: stop - start]
        for first in range(start, stop, step):
            last = min(first + step, stop)
            grads = per_example(params, as_model_input(x[first:last], dtype, device), y[first:last].to(device))
            column = 0
            for name in names:
                block = grads.pop(name).reshape(last - first, -1)
                target = rows[first - start : last - start, column : column + block.shape[1]]
                if scale != 1.0:
                    torch.mul(block, scale, out=target)
                else:
                    target.copy_(block)
                column += block.shape[1]
                del block
        if out is not None and not in_place:
            out[start:stop].copy_(rows)
        if sink is not None:
            sink(start, rows)
    return out


def project(features: torch.Tensor, projection: Projection, device: str | torch.device | None = None) -> torch.Tensor:
    """dattri's CPU random projection of ``features`` (rows) to ``projection.dim`` dimensions.

    On the CPU this is dattri's projector itself; on another device the same matrix, block by
    block (:func:`project_on_device`). The result is on ``device``.
    """
    device = resolve_device(device)
    if device.type != "cpu" or projection.generator != "cpu":
        return project_on_device(features, projection, device)
    from dattri.func.projection import random_project

    features = features.cpu()
    projector = random_project(
        features,
        features.shape[0],
        proj_dim=projection.dim,
        proj_max_batch_size=32,
        proj_seed=projection.seed,
        proj_type="normal",
        device="cpu",
    )
    return projector(features, ensemble_id=projection.ensemble_id)


def projection_block(
    n_features: int,
    projection: Projection,
    block: int,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Block ``block`` (columns ``100 block ..``) of the Gaussian projection matrix, unnormalised, on ``device``.

    dattri's ``BasicProjector`` seeds a CPU generator with ``seed + 1000 block + 100000 ensemble_id``
    and fills a ``(n_features, min(dim, 100))`` matrix with standard normals; so does this, with the
    generator of ``projection.generator`` (which must then be ``device``'s type unless it is the CPU's).
    """
    device = torch.device(device)
    if projection.generator not in ("cpu", device.type):
        raise InvalidParameterError(
            "projection.generator", projection.generator, f"'cpu' or the computing device's type ({device.type!r})"
        )
    where = torch.device("cpu") if projection.generator == "cpu" else device
    width = min(projection.dim, PROJECTOR_BLOCK)
    generator = torch.Generator(device=where).manual_seed(
        projection.seed + 1000 * block + 100000 * projection.ensemble_id
    )
    return torch.empty(n_features, width, dtype=dtype, device=where).normal_(generator=generator).to(device)


def project_on_device(features: torch.Tensor, projection: Projection, device: str | torch.device) -> torch.Tensor:
    """:func:`project` computed on ``device``: the matrix drawn block by block, applied there.

    With the default generator the blocks come from the CPU generator (:func:`projection_block`), so
    the numbers equal dattri's CPU projection up to the rounding of the products, on any device.
    """
    device = torch.device(device)
    dtype = features.dtype
    features = features.to(device)
    width = min(projection.dim, PROJECTOR_BLOCK)
    sketch = torch.empty(features.shape[0], projection.dim, dtype=dtype, device=device)
    for block in range(math.ceil(projection.dim / width)):
        first, last = block * width, min((block + 1) * width, projection.dim)
        matrix = projection_block(features.shape[1], projection, block, dtype, device)
        sketch[:, first:last] = features @ matrix[:, : last - first]
    return sketch / math.sqrt(projection.dim)


def project_nested(
    features: torch.Tensor,
    dims: Sequence[int],
    seed: int = 0,
    ensemble_id: int = 0,
    device: str | torch.device | None = None,
    generator: str = "cpu",
) -> dict[int, torch.Tensor]:
    """Projections of ``features`` to every dimension in ``dims`` from one projection at the largest.

    Equal to :func:`project` at each dimension (dattri normalises by ``sqrt(dim)``, undone and redone
    here). Dimensions below the projector's block width are projected on their own. Computed on
    ``device``; the results are there too.
    """
    device = resolve_device(device)
    nested = sorted({d for d in dims if d >= PROJECTOR_BLOCK})
    out: dict[int, torch.Tensor] = {}
    if nested:
        top = nested[-1]
        full = project(features, Projection(top, seed, ensemble_id, generator), device)
        for dim in nested:
            out[dim] = full[:, :dim] * math.sqrt(top / dim) if dim != top else full
    for dim in dims:
        if dim not in out:
            out[dim] = project(features, Projection(dim, seed, ensemble_id, generator), device)
    return out


def _gradient_rows(
    setting: Setting,
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    fn: TargetFn,
    scale: float,
    proj_dims: Sequence[int | None],
    seed: int,
    ensemble_id: int,
    progress: bool | str,
    device: torch.device,
    generator: str = "cpu",
) -> dict[int | None, torch.Tensor]:
    """Gradients, unprojected (key ``None``) and/or projected to each dimension, chunk by chunk.

    Raw gradients, when asked for, are written straight into their ``(N, d)`` result; otherwise only
    one chunk of them is in memory at a time. Computed on ``device``, returned on the CPU.
    """
    dims = [d for d in proj_dims if d is not None]
    parts: dict[int, list[torch.Tensor]] = {d: [] for d in dims}

    def sink(_: int, rows: torch.Tensor) -> None:
        for dim, projected in project_nested(rows, dims, seed, ensemble_id, device, generator).items():
            parts[dim].append(projected.cpu())

    raw = per_example_gradients(
        setting, state, x, y, fn, scale, progress, sink=sink if dims else None, keep=None in proj_dims, device=device
    )
    found: dict[int | None, torch.Tensor] = {d: torch.cat(chunks) for d, chunks in parts.items()}
    if None in proj_dims:
        found[None] = raw
    return {d: found[d] for d in proj_dims}


def to_device(batch, device: torch.device):
    """A loader's batch (a tensor, or a tuple or list of tensors) moved to ``device``."""
    return tuple(t.to(device) for t in batch) if isinstance(batch, (tuple, list)) else batch.to(device)


def task_gradient_rows(
    grad_fn: Callable, params: torch.Tensor, loader, scale: float = 1.0, device: str | torch.device | None = None
) -> torch.Tensor:
    """Rows ``scale * ∇θ`` of a dattri ``AttributionTask``'s per-example gradient function over a loader.

    ``grad_fn`` is ``task.get_grad_loss_func(in_dims=(None, 0))`` or ``task.get_grad_target_func(...)``
    and ``params`` the task's flat parameters; every batch is moved to ``device``, where the rows stay
    (NaN gradients, e.g. of a saturated loss, become 0 as dattri's attributors make them). ``scale`` is
    :func:`dahp.attribution.scales.feature_scale` of the attributor: the rows of a :class:`Setting` come
    from :func:`gradient_features` at the same scale.
    """
    device = resolve_device(device)
    rows = [torch.nan_to_num(grad_fn(params, to_device(batch, device))).detach() * scale for batch in loader]
    return torch.cat(rows)


FEATURE_KINDS = ("loss", "target", "trak")


def gradient_features(
    setting: Setting,
    state: dict[str, torch.Tensor],
    state_spec: dict,
    split: str,
    kind: str,
    proj_dims: Sequence[int | None] = (None,),
    seed: int = 0,
    ensemble_id: int = 0,
    cache: Cache | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    projector: str | None = None,
) -> dict[int | None, torch.Tensor]:
    """Cached gradient features of one split, for each requested projection dimension.

    Args:
        state: the model state the gradients are taken at; ``state_spec`` says what determines it.
        split: ``"train"``, ``"val"`` or ``"test"``.
        kind: ``"loss"`` (training loss), ``"target"`` (the margin) or ``"trak"`` (the margin,
            scaled by ``1/sqrt(#parameters)`` as dattri's TRAK does).
        proj_dims: ``None`` for raw gradients and/or projection dimensions.
        device: where gradients and projections are computed (not part of the cache key: the
            numbers do not depend on it beyond rounding).
        projector: ``"dattri"`` or ``"device"`` (default ``$DAHP_PROJECTOR``, else ``"dattri"``): see
            :func:`projection_generator`; a generator other than the CPU's is in the cache key.

    Returns:
        dimension -> ``(N, p)`` float tensor, on the CPU.
    """
    if kind not in FEATURE_KINDS:
        raise InvalidParameterError("kind", kind, FEATURE_KINDS)
    for dim in proj_dims:
        check_proj_dim(setting, dim)
    device = resolve_device(device)
    generator = projection_generator(device, projector)
    cache = default_cache() if cache is None else cache
    data = setting.data()
    x, y = (data.x_train, data.y_train) if split == "train" else data.queries(split)
    fn = setting.loss if kind == "loss" else setting.target
    scale = feature_scale(kind, setting.n_params())

    def spec(dim: int | None) -> dict:
        projection = None if dim is None else Projection(dim, seed, ensemble_id, generator).as_dict()
        return {**state_spec, "split": split, "kind": kind, "projection": projection}

    found = {dim: cache.load("features", spec(dim)) for dim in proj_dims}
    missing = [dim for dim, value in found.items() if value is None]
    if missing:
        label = f"{kind} gradients of {setting.name} {split}" if progress else False
        computed = _gradient_rows(setting, state, x, y, fn, scale, missing, seed, ensemble_id, label, device, generator)
        for dim, value in computed.items():
            cache.save("features", spec(dim), value)
            found[dim] = value
    return found


@torch.no_grad()
def one_minus_correct_probability(
    setting: Setting, state: dict[str, torch.Tensor], device: str | torch.device | None = None
) -> torch.Tensor:
    """TRAK's weights ``1 - p_i`` of the training points under ``state``, shape ``(n_train,)``, on the CPU
    (the forward pass runs on ``device``)."""
    device = resolve_device(device)
    dtype = next(iter(state.values())).dtype
    model = setting.make_model().to(dtype).eval().to(device)
    model.load_state_dict(state)
    data = setting.data()
    logits = model(as_model_input(data.x_train, dtype, device))
    return (1.0 - correct_class_probability(logits, data.y_train.to(device))).cpu()
