"""An on-disk cache of expensive artifacts (checkpoints, retrained-model outputs, features).

An entry is keyed by a hash of a *spec*: a JSON-able dict of everything that determines it (the
setting, its data fingerprint, the recipe, seeds, ...), plus this cache's format version, the
versions of torch and dattri, and the *code versions* of its kind and of every kind upstream of it
(see below). Each entry is one file::

    MAGIC \\n header-JSON \\n payload

where the header holds the spec, the payload's length and its SHA-256, and the payload is a
``torch.save`` of tensors and plain containers (loaded with ``weights_only=True``). Writes go to a
temporary file in the same directory and are renamed into place, so a reader never sees half an
entry; a truncated, corrupt or mismatching entry is reported, deleted and recomputed.

Code versions
-------------
Every kind of entry has an integer in :data:`CODE_VERSIONS`, bumped by hand when a change to the
code alters what the kind's producer computes; old entries then stop matching and are recomputed
(no ``make clean-cache`` needed). A kind's key also carries the versions of the kinds in
:data:`UPSTREAM` whose entries it is computed from (features are taken at cached checkpoints,
eigendecompositions of cached features, ...), so bumping ``checkpoints`` invalidates everything
built on them. Only the kinds listed here are accepted.

So that a bump cannot be forgotten, :data:`PRODUCERS` names the ``dahp`` source files whose code
runs when a kind's entry is computed, and ``cache_versions.json`` (beside this module) locks, per
kind, its version and a SHA-256 of those files' *normalised* source (the syntax tree without
docstrings, so comments, formatting and documentation do not count). A test fails when the
sources differ from the lock at the same version; after deciding whether to bump, a developer
runs ``python -m dahp.core.cache --update-lock`` (``--check`` exits 1 on a mismatch).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from dahp.core.config import InvalidParameterError
from dahp.core.paths import data_dir

FORMAT_VERSION = 1
MAGIC = b"dahp-cache"
T = TypeVar("T")

#: Look-ups of this process: ``hits`` (an entry was loaded) and ``misses`` (none, or a damaged one).
#: The book's run record of each page reports them (``dahp.book.records``).
COUNTS = {"hits": 0, "misses": 0}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's contents, read again only when its size or modification time changed
    (checkpoints and benchmark files are large, and cache keys ask for them often)."""
    stat = Path(path).stat()
    return _sha256_of(Path(path), stat.st_size, stat.st_mtime_ns)


@functools.cache
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: Code version of each kind of entry. Bump a kind when a change alters what its producer computes
#: (then run ``python -m dahp.core.cache --update-lock``); a kind not listed here is refused.
CODE_VERSIONS: dict[str, int] = {
    # 2: small models train on one CPU thread (dahp.core.device.one_thread_below): last-bit differences
    "checkpoints": 2,  # training.train_full
    "ground_truth": 2,  # ground_truth.ground_truth, one entry per chunk of subset models
    "features": 1,  # features.gradient_features
    "eigh": 1,  # attributors._cached_eigendecomposition (spectral.eigendecompose)
    "hessian_eigh": 1,  # attributors._if_explicit (mean_loss_hessian, spectral.curvature_eigendecomposition)
    "removal": 2,  # experiments.removal.retrained_accuracy
    # 2: picks of every retraining-free rule of dahp.selection.rules.RULES under its registry name, with diagnoses
    "selection_case": 2,  # experiments.cases.selection_study (one entry per case)
    "suite_curves": 1,  # suite.problem_curves (test LDS and ξ̄ over the dense λ grid of one suite case)
}

#: The registry and the per-dataset modules its settings take loaders and model factories from.
_MODELS = ("data/settings.py", "data/split.py", "data/cifar.py", "data/maestro.py", "data/wikitext2.py")
_TRAINING = ("core/config.py", *_MODELS, "data/targets.py", "training/train.py")
_SCORING = (
    "attribution/attributors.py",
    "attribution/features.py",
    "attribution/lds.py",
    "attribution/scales.py",
    "selection/algorithm.py",
    "attribution/spectral.py",
    "selection/surrogate.py",
)

#: The ``dahp`` source files (relative to the package folder) whose code runs when an entry of each
#: kind is computed, including the caller-side code that prepares its inputs. Their normalised
#: source is locked in ``cache_versions.json``.
PRODUCERS: dict[str, tuple[str, ...]] = {
    # the model (settings), its loss (targets), the recipe (config) and the SGD loop (training)
    "checkpoints": _TRAINING,
    # + the subsets, seeds and evaluation of the retrained models (subset_size lives in config)
    "ground_truth": (*_TRAINING, "training/ground_truth.py"),
    # per-example gradients and projections (features) of the model and targets (settings, targets)
    # at a state taken from Checkpoints (training) and described by checkpoint_spec (attributors)
    "features": (
        "attribution/attributors.py",
        "attribution/features.py",
        "attribution/scales.py",
        *_MODELS,
        "data/targets.py",
        "training/train.py",
    ),
    # which features, at which scale (attributors), eigendecomposed by spectral.eigendecompose
    "eigh": ("attribution/attributors.py", "attribution/scales.py", "attribution/spectral.py"),
    # the exact loss Hessian (attributors, with parameter_names from features, model and loss from
    # settings and targets, the float64 state from training) and its eigendecomposition (spectral)
    "hessian_eigh": (
        "attribution/attributors.py",
        "attribution/features.py",
        *_MODELS,
        "attribution/spectral.py",
        "data/targets.py",
        "training/train.py",
    ),
    # retraining after removal (experiments/removal: kept index sets; training: train_many, accuracy)
    "removal": (*_TRAINING, "experiments/removal.py"),
    # a selection case (experiments/cases: run_case, the grid, the payload): the scorers (attributors,
    # spectral, features' TRAK weights 1 - p, settings and targets for the model), the ξ rule and the
    # baselines (selection, surrogate), the LDS (lds) against the ground truth's subsets (ground_truth,
    # config's subset_size) and the checkpoints as read back (training's Checkpoints.state)
    # + every retraining-free rule of the registry (rules) on the case's RuleInput and its RecipeFacts (recipe, cases)
    "selection_case": (
        *_TRAINING,
        *_SCORING,
        "training/ground_truth.py",
        "selection/recipe.py",
        "selection/rules.py",
        "experiments/cases.py",
    ),
    # a suite case's curves (suite: the problem, its grid and the payload) from the scorers and the
    # ground truth, as for a selection case
    "suite_curves": (*_TRAINING, *_SCORING, "training/ground_truth.py", "experiments/suite.py"),
}

#: Kinds whose cached entries each kind is computed from (their code versions join its key).
UPSTREAM: dict[str, tuple[str, ...]] = {
    "checkpoints": (),
    "ground_truth": (),
    "features": ("checkpoints",),
    "eigh": ("features",),
    "hessian_eigh": ("checkpoints",),
    "removal": (),
    "selection_case": ("checkpoints", "features", "eigh", "hessian_eigh", "ground_truth"),
    "suite_curves": ("checkpoints", "features", "eigh", "ground_truth"),
}

#: The folder the producer paths are relative to, and the lock file of their normalised sources.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
LOCK_PATH = Path(__file__).resolve().parent / "cache_versions.json"
UPDATE_COMMAND = "python -m dahp.core.cache --update-lock"


def check_kind(kind: str) -> None:
    """Refuse a kind with no code version (every kind must have one, see :data:`CODE_VERSIONS`)."""
    if kind not in CODE_VERSIONS:
        raise InvalidParameterError("kind", kind, sorted(CODE_VERSIONS))


def upstream_closure(kind: str) -> list[str]:
    """``kind`` and every kind upstream of it, transitively (sorted)."""
    check_kind(kind)
    seen: set[str] = set()
    todo = [kind]
    while todo:
        current = todo.pop()
        if current not in seen:
            check_kind(current)
            seen.add(current)
            todo.extend(UPSTREAM.get(current, ()))
    return sorted(seen)


def code_versions(kind: str) -> dict[str, int]:
    """The code versions that join the key of a ``kind`` entry: its own and its upstream kinds'."""
    return {k: CODE_VERSIONS[k] for k in upstream_closure(kind)}


def _versions() -> dict[str, str]:
    import torch  # imported on use: the executors (and so the CLI's --help) import this module

    return {"format": str(FORMAT_VERSION), "torch": torch.__version__, "dattri": version("dattri")}


def canonical_json(spec: dict[str, Any]) -> str:
    """Deterministic JSON text of a spec (sorted keys, no whitespace)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)


#: Folder of the cache that holds the lock files of :meth:`Cache.get_or_compute`.
LOCKS = ".locks"


class Cache:
    """A directory of keyed, checksummed entries, grouped by kind (one sub-directory each)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def key(self, kind: str, spec: dict[str, Any]) -> str:
        """Hex key of ``spec`` for entries of ``kind`` (a kind of :data:`CODE_VERSIONS`)."""
        full = {"kind": kind, "spec": spec, "versions": _versions(), "code": code_versions(kind)}
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
            COUNTS["misses"] += 1
            return None
        try:
            payload = _decode(blob, canonical_json(spec))
        except (ValueError, RuntimeError, EOFError, OSError, json.JSONDecodeError, KeyError) as error:
            warnings.warn(f"discarding damaged cache entry {path}: {error}", stacklevel=2)
            path.unlink(missing_ok=True)
            COUNTS["misses"] += 1
            return None
        COUNTS["hits"] += 1
        return payload

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
        """The cached payload of ``spec``, computing and storing it first if needed.

        Processes that share the cache (the book's pages run two at a time) compute an entry once:
        the first to miss holds a lock on the key while it computes, the others wait for it and
        then load its entry instead of repeating the work.
        """
        payload = self.load(kind, spec)
        if payload is not None:
            return payload
        with self._computing(kind, spec):
            payload = self._load_quietly(kind, spec)  # another process may have stored it meanwhile
            if payload is None:
                payload = compute()
                self.save(kind, spec, payload)
        return payload

    def _load_quietly(self, kind: str, spec: dict[str, Any]) -> Any | None:
        """:meth:`load` without counting a second miss for the same look-up."""
        if not self.path(kind, spec).exists():
            return None
        misses = COUNTS["misses"]
        payload = self.load(kind, spec)
        if payload is not None:  # the miss already counted becomes a hit
            COUNTS["misses"] = misses - 1
        return payload

    @contextlib.contextmanager
    def _computing(self, kind: str, spec: dict[str, Any]) -> Iterator[None]:
        """Hold an exclusive lock on the key of ``spec`` while inside (a file under ``.locks/`` of the cache,
        so that a kind's folder holds only entries); without ``fcntl`` (Windows) there is no lock and
        concurrent processes may compute an entry twice."""
        if fcntl is None:
            yield
            return
        folder = self.root / LOCKS
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{kind}-{self.key(kind, spec)}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # the lock files stay: removing one could race with a waiter
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _encode(payload: Any, spec_json: str) -> bytes:
    import torch

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
    import torch

    return torch.load(io.BytesIO(body), weights_only=True)


def default_cache() -> Cache:
    """The cache under ``$DAHP_CACHE_DIR``, else ``cache/`` inside the data directory."""
    env = os.environ.get("DAHP_CACHE_DIR")
    return Cache(Path(env) if env else data_dir() / "cache")


# --------------------------------------------------------------------------------------------
# The lock of the producers' normalised sources


def _root(root: Path | str | None) -> Path:
    """The folder producer paths are relative to (default: this package's)."""
    return PACKAGE_DIR if root is None else Path(root)


def _lock(lock: Path | str | None) -> Path:
    """The lock file (default: ``cache_versions.json`` beside this module)."""
    return LOCK_PATH if lock is None else Path(lock)


def _is_string_statement(statement: ast.stmt) -> bool:
    """A bare string statement (a docstring, or an attribute's docstring): it has no effect."""
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _dump(node: Any) -> str:
    """A canonical text of a syntax tree: node types and fields, no positions, and -- as Python
    3.13's ``ast.dump`` does -- no empty or ``None`` fields, so it does not depend on the version."""
    if isinstance(node, ast.AST):
        fields = []
        for name in node._fields:
            value = getattr(node, name, None)
            if value is None or (isinstance(value, list) and not value):
                continue
            fields.append(f"{name}={_dump(value)}")
        return f"{type(node).__name__}({', '.join(fields)})"
    if isinstance(node, list):
        return "[" + ", ".join(_dump(item) for item in node) + "]"
    return repr(node)


def normalised_source(source: str) -> str:
    """``source`` as a canonical dump of its syntax tree with every docstring removed, so that
    comments, formatting and documentation do not change it."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if isinstance(statements, list):
                setattr(node, field, [s for s in statements if not _is_string_statement(s)])
    return _dump(tree)


def source_hash(relative: str, root: Path | str | None = None) -> str | None:
    """SHA-256 of the normalised source of ``root/relative``; ``None`` when the file does not exist
    (the lock then records it as missing and hashes it as an empty file)."""
    path = _root(root) / relative
    if not path.is_file():
        return None
    return hashlib.sha256(normalised_source(path.read_text(encoding="utf-8")).encode()).hexdigest()


_EMPTY_HASH = hashlib.sha256(normalised_source("").encode()).hexdigest()


def kind_lock(kind: str, root: Path | str | None = None) -> dict[str, Any]:
    """The lock entry of ``kind`` for the sources under ``root``: its version, one SHA-256 over its
    producer files, each file's SHA-256, and the producer files that do not exist (hashed as empty)."""
    check_kind(kind)
    hashes = {relative: source_hash(relative, root) for relative in sorted(set(PRODUCERS[kind]))}
    files = {relative: _EMPTY_HASH if digest is None else digest for relative, digest in hashes.items()}
    combined = hashlib.sha256("".join(f"{r}\0{d}\n" for r, d in files.items()).encode()).hexdigest()
    return {
        "version": CODE_VERSIONS[kind],
        "sha256": combined,
        "files": files,
        "missing": [relative for relative, digest in hashes.items() if digest is None],
    }


def compute_lock(root: Path | str | None = None) -> dict[str, Any]:
    """The whole lock for the sources under ``root``, every kind of :data:`CODE_VERSIONS`."""
    return {
        "about": f"Code versions of the cache kinds and the SHA-256 of their producers' normalised "
        f"source (see dahp/core/cache.py). Generated by `{UPDATE_COMMAND}`; do not edit.",
        "kinds": {kind: kind_lock(kind, root) for kind in sorted(CODE_VERSIONS)},
    }


def read_lock(lock: Path | str | None = None) -> dict[str, Any]:
    """The lock file's content (an empty lock when the file does not exist)."""
    path = _lock(lock)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"kinds": {}}


def write_lock(lock: Path | str | None = None, root: Path | str | None = None) -> dict[str, Any]:
    """Rewrite the lock file from the sources under ``root``; returns what was written."""
    content = compute_lock(root)
    _lock(lock).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return content


def _bump_advice(kind: str) -> str:
    return (
        f"bump CODE_VERSIONS['{kind}'] in lib/dahp/core/cache.py if the change alters results, "
        f"then run `{UPDATE_COMMAND}`"
    )


def check_lock(root: Path | str | None = None, lock: Path | str | None = None) -> list[str]:
    """What differs between the sources under ``root`` and the lock file (empty: all in order).

    A kind whose producer sources changed at an unchanged version is reported with the files that
    changed and the advice to bump its version; a bumped version, a new or a removed kind only needs
    the lock rewritten.
    """
    locked = read_lock(lock).get("kinds", {})
    name = _lock(lock).name
    problems = []
    for kind in sorted(CODE_VERSIONS):
        current = kind_lock(kind, root)
        if kind not in locked:
            problems.append(f"cache kind '{kind}' has no entry in {name}: run `{UPDATE_COMMAND}`")
            continue
        entry = locked[kind]
        if entry.get("version") != current["version"]:
            problems.append(
                f"cache kind '{kind}': CODE_VERSIONS['{kind}'] is {current['version']} but "
                f"{name} records {entry.get('version')}: run `{UPDATE_COMMAND}`"
            )
            continue
        if entry.get("sha256") == current["sha256"]:
            continue
        old_files, new_files = entry.get("files", {}), current["files"]
        changed = sorted(f for f in set(old_files) | set(new_files) if old_files.get(f) != new_files.get(f))
        details = []
        for relative in changed:
            where = f"lib/dahp/{relative}"
            if relative not in old_files:
                details.append(f"{where} (now a producer)")
            elif relative not in new_files:
                details.append(f"{where} (no longer a producer)")
            elif relative in current["missing"]:
                details.append(f"{where} (deleted)")
            elif relative in entry.get("missing", []):
                details.append(f"{where} (created)")
            else:
                details.append(where)
        problems.append(
            f"cache kind '{kind}': the code of its producers changed at version {current['version']} "
            f"in {', '.join(details) or 'its producer files'}; {_bump_advice(kind)}"
        )
    for kind in sorted(set(locked) - set(CODE_VERSIONS)):
        problems.append(f"cache kind '{kind}' is in {name} but not in CODE_VERSIONS: run `{UPDATE_COMMAND}`")
    return problems


def _missing_notes(content: dict[str, Any]) -> list[str]:
    return [
        f"note: cache kind '{kind}': producer file lib/dahp/{relative} does not exist (hashed as empty)"
        for kind, entry in content["kinds"].items()
        for relative in entry["missing"]
    ]


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m dahp.core.cache --check`` / ``--update-lock``."""
    parser = argparse.ArgumentParser(
        prog="python -m dahp.core.cache",
        description="Check or rewrite lib/dahp/core/cache_versions.json, the lock of the cache kinds' "
        "code versions and of their producers' normalised source.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="report differences; exit 1 if there are any")
    action.add_argument("--update-lock", action="store_true", help="rewrite the lock from the current sources")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.check:
        problems = check_lock()
        for line in problems + _missing_notes(compute_lock()):
            print(line)
        if not problems:
            print(f"{_lock(None).name} matches the sources of every cache kind")
        return 1 if problems else 0
    before = read_lock().get("kinds", {})
    content = write_lock()
    for kind, entry in content["kinds"].items():
        old = before.get(kind)
        if old is None:
            print(f"{kind}: added at version {entry['version']}")
        elif old.get("version") != entry["version"]:
            print(f"{kind}: version {old.get('version')} -> {entry['version']} (old entries will be recomputed)")
        elif old.get("sha256") != entry["sha256"]:
            print(f"{kind}: sources changed, version {entry['version']} kept (old entries stay valid)")
    for kind in sorted(set(before) - set(content["kinds"])):
        print(f"{kind}: removed")
    for line in _missing_notes(content):
        print(line)
    print(f"wrote {_lock(None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
