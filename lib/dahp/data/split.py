"""One setting's fixed split of data into training points, validation queries and test queries.

Every dataset module returns a :class:`SplitData`; a loader that finds the user's files missing or
malformed raises :class:`MissingDataError` (naming the file, what is wrong and where the data comes from).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import torch

from dahp.core.config import InvalidParameterError


class MissingDataError(FileNotFoundError):
    """A setting needs data files the user has to supply; the message says which and where."""


@dataclasses.dataclass(frozen=True)
class SplitData:
    """Tensors of one setting's fixed split.

    Inputs are float32 for images and int64 token or event ids for sequence models; labels are int64.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_train(self) -> int:
        """Number of training points n."""
        return len(self.y_train)

    def queries(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of the ``"val"`` or ``"test"`` queries."""
        if split not in ("val", "test"):
            raise InvalidParameterError("split", split, ["val", "test"])
        return (self.x_val, self.y_val) if split == "val" else (self.x_test, self.y_test)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of every tensor of the split: part of every cache key built on this data."""
        digest = hashlib.sha256()
        for field in dataclasses.fields(self):
            tensor = getattr(self, field.name).contiguous()
            digest.update(f"{field.name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()[:16]


def as_model_input(x: torch.Tensor, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.Tensor:
    """``x`` on ``device``, cast to ``dtype`` when it holds numbers (images); token or event ids stay integers."""
    return x.to(device, dtype) if x.is_floating_point() else x.to(device)
