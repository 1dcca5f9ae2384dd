"""An on-disk cache of expensive artifacts (checkpoints, retrained-model outputs, features).

An entry is keyed by a hash of a *spec*: a JSON-able dict of everything that determines it (the
setting, its data fingerprint, the recipe, seeds, ...), plus this cache's format version and the
versions of torch and dattri. Each entry is one file::

    MAGIC \\n header-JSON \\n payload

where the header holds the spec, the payload's length and its SHA-256, and the payload is a
``torch.save`` of tensors and plain containers (loaded with ``weights_only=True``). Writes go to a
temporary file in the same directory and are renamed into place, so a reader never sees half an
entry; a truncated, corrupt or mismatching entry is reported, deleted and recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

FORMAT_VERSION = 1
MAGIC = b"dahp-cache"
T = TypeVar("T")


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"format": str(FORMAT_VERSION), "torch": torch.__version__, "dattri": version("dattri")}


def canonical_json(spec: dict[str, Any]) -> str:
    """Deterministic JSON text of a spec (sorted keys, no whitespace)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)


class Cache:
    """A directory of keyed, checksummed entries, grouped by kind (one sub-directory each)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def key(self, kind: str, spec: dict[str, Any]) -> str:
        """Hex key of ``spec`` for entries of ``kind``."""
        full = {"kind": kind, "spec": spec, "versions": _versions()}
        return hashlib.sha256(canonical_json(full).encode()).hexdigest()[:24]

    def path(self, kind: str, spec: dict[str, Any]) -> Path:
        """Where the entry of ``spec`` lives (whether or not it exists)."""
        return self.root / kind / f"{self.key(kind, spec)}.pt"

    def load(self, kind: str, spec: dict[str, Any]) -> Any | None:
        """The stored payload, or ``None`` when missing; a damaged entry is deleted and ``None`` returned."""
        path = self.path(kind, spec)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return _decode(blob, canonical_json(spec))
        except (ValueError, RuntimeError, EOFError, OSError, json.JSONDecodeError, KeyError) as error:
            warnings.warn(f"discarding damaged cache entry {path}: {error}", stacklevel=2)
            path.unlink(missing_ok=True)
            return None

    def save(self, kind: str, spec: dict[str, Any], payload: Any) -> Path:
        """Store ``payload`` atomically (temporary file + rename) and return its path."""
        path = self.path(kind, spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = _encode(payload, canonical_json(spec))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def get_or_compute(self, kind: str, spec: dict[str, Any], compute: Callable[[], T]) -> T:
        """The cached payload of ``spec``, computing and storing it first if needed."""
        payload = self.load(kind, spec)
        if payload is None:
            payload = compute()
            self.save(kind, spec, payload)
        return payload


def _encode(payload: Any, spec_json: str) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = {"spec": spec_json, "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return MAGIC + b"\n" + json.dumps(header).encode() + b"\n" + body


def _decode(blob: bytes, spec_json: str) -> Any:
    magic, header_line, body = blob.split(b"\n", 2)
    if magic != MAGIC:
        raise ValueError("not a dahp cache entry")
    header = json.loads(header_line)
    if header["spec"] != spec_json:
        raise ValueError("entry was written for a different spec")
    if header["length"] != len(body) or header["sha256"] != hashlib.sha256(body).hexdigest():
        raise ValueError("payload is truncated or corrupt (length or checksum mismatch)")
    return torch.load(io.BytesIO(body), weights_only=True)


def default_cache() -> Cache:
    """The cache under ``$DAHP_CACHE_DIR``, else ``cache/`` inside the data directory."""
    from dahp.settings import data_dir

    env = os.environ.get("DAHP_CACHE_DIR")
    return Cache(Path(env) if env else data_dir() / "cache")
