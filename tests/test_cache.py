"""The cache: keyed (by the spec and the code versions), atomic, and a damaged entry is detected and
rebuilt; the lock of the producers' sources catches a code change made without a version bump."""

import ast
import shutil
import subprocess
import sys
import time

import pytest
import torch

import dahp.core.cache as cache_module
from dahp.core.cache import (
    CODE_VERSIONS,
    PACKAGE_DIR,
    PRODUCERS,
    UPSTREAM,
    Cache,
    check_lock,
    kind_lock,
    main,
    normalised_source,
    upstream_closure,
    write_lock,
)
from dahp.core.config import InvalidParameterError

ADVICE = (
    "bump CODE_VERSIONS['{kind}'] in lib/dahp/core/cache.py if the change alters results, "
    "then run `python -m dahp.core.cache --update-lock`"
)


def test_roundtrip_and_key_depends_on_every_field(cache: Cache):
    spec = {"setting": "mnist_lr", "alpha": 0.5, "seed": 0}
    cache.save("removal", spec, {"x": torch.arange(5)})
    assert torch.equal(cache.load("removal", spec)["x"], torch.arange(5))
    for changed in ({**spec, "alpha": 0.25}, {**spec, "seed": 1}, {**spec, "setting": "mnist_mlp"}):
        assert cache.key("removal", changed) != cache.key("removal", spec)
        assert cache.load("removal", changed) is None
    assert cache.key("features", spec) != cache.key("removal", spec)


def test_key_ignores_dict_order(cache: Cache):
    assert cache.key("checkpoints", {"a": 1, "b": 2}) == cache.key("checkpoints", {"b": 2, "a": 1})


def test_write_leaves_no_temporary_files(cache: Cache):
    path = cache.save("removal", {"a": 1}, torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_entry_is_recomputed(cache: Cache, damage):
    spec = {"a": 1}
    path = cache.save("removal", spec, torch.arange(1000.0))
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        path.write_bytes(blob[:-10] + bytes(b ^ 0xFF for b in blob[-10:]))
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01 not a cache entry")
    else:
        path.write_bytes(b"")
    calls = []
    with pytest.warns(UserWarning, match="damaged cache entry"):
        value = cache.get_or_compute("removal", spec, lambda: calls.append(1) or torch.zeros(2))
    assert calls == [1] and torch.equal(value, torch.zeros(2))
    assert torch.equal(cache.load("removal", spec), torch.zeros(2))


def test_get_or_compute_computes_once(cache: Cache):
    calls = []
    for _ in range(3):
        cache.get_or_compute("removal", {"a": 2}, lambda: calls.append(1) or torch.ones(1))
    assert calls == [1]


# --------------------------------------------------------------------------------------------
# Code versions in the key


def test_key_changes_with_the_kinds_code_version(cache: Cache, monkeypatch):
    spec = {"setting": "mnist_lr", "seed": 0}
    cache.save("features", spec, torch.ones(2))
    before = cache.key("features", spec)
    monkeypatch.setitem(CODE_VERSIONS, "features", CODE_VERSIONS["features"] + 1)
    assert cache.key("features", spec) != before
    assert cache.load("features", spec) is None  # the entry of the old code is not found
    calls = []
    value = cache.get_or_compute("features", spec, lambda: calls.append(1) or torch.zeros(2))
    assert calls == [1] and torch.equal(value, torch.zeros(2))
    monkeypatch.setitem(CODE_VERSIONS, "features", CODE_VERSIONS["features"] - 1)
    assert cache.key("features", spec) == before and torch.equal(cache.load("features", spec), torch.ones(2))


def test_bumping_a_kind_changes_the_keys_of_the_kinds_built_on_it_only(cache: Cache, monkeypatch):
    spec = {"setting": "mnist_lr"}
    before = {kind: cache.key(kind, spec) for kind in CODE_VERSIONS}
    monkeypatch.setitem(CODE_VERSIONS, "checkpoints", CODE_VERSIONS["checkpoints"] + 1)
    changed = {kind for kind in CODE_VERSIONS if cache.key(kind, spec) != before[kind]}
    assert changed == {kind for kind in CODE_VERSIONS if "checkpoints" in upstream_closure(kind)}
    assert {"checkpoints", "features", "eigh", "hessian_eigh", "selection_case"} <= changed
    assert not changed & {"ground_truth", "removal"}


@pytest.mark.parametrize("call", ["key", "path", "load", "save", "get_or_compute"])
def test_unknown_kind_is_refused(cache: Cache, call):
    arguments = {"save": (torch.ones(1),), "get_or_compute": (lambda: torch.ones(1),)}.get(call, ())
    with pytest.raises(InvalidParameterError, match="kind='demo'") as error:
        getattr(cache, call)("demo", {"a": 1}, *arguments)
    assert error.value.parameter == "kind" and error.value.value == "demo"
    assert "'checkpoints'" in error.value.valid and "'selection_case'" in error.value.valid
    assert not cache.root.exists()


def test_every_kind_has_a_version_producer_files_and_known_upstream_kinds():
    assert set(PRODUCERS) == set(CODE_VERSIONS) == set(UPSTREAM)
    for kind, version in CODE_VERSIONS.items():
        assert isinstance(version, int) and version >= 1
        assert PRODUCERS[kind] and all((PACKAGE_DIR / f).is_file() for f in PRODUCERS[kind]), kind
        assert set(UPSTREAM[kind]) <= set(CODE_VERSIONS), kind
        # no cycles: a kind is not upstream of its own upstream kinds
        assert all(kind not in upstream_closure(up) for up in UPSTREAM[kind]), kind


# --------------------------------------------------------------------------------------------
# The lock of the producers' normalised sources


def test_the_lock_file_matches_the_current_sources():
    """The enforcement: a producer's code changed without a version decision fails here."""
    problems = check_lock()
    assert not problems, "\n".join(problems)


def test_normalised_source_ignores_comments_docstrings_and_formatting_only():
    plain = "def f(x):\n    return x + 1\n\nLIMIT = 3\n"
    documented = (
        '"""Module."""\n# comment\n\n\ndef f( x ):  # why\n    """Add one."""\n\n    return (x + 1)\n\n\n'
        'LIMIT = 3\n"""The limit (an attribute docstring)."""\n'
    )
    assert normalised_source(documented) == normalised_source(plain)
    for edited in (
        "def f(x):\n    return x + 2\n\nLIMIT = 3\n",
        "def f(x):\n    return x + 1\n\nLIMIT = 4\n",
        "def f(y):\n    return y + 1\n\nLIMIT = 3\n",
        plain + "print(LIMIT)\n",
    ):
        assert normalised_source(edited) != normalised_source(plain)


@pytest.fixture()
def tree(tmp_path):
    """A copy of the package sources and a lock written for it: (root, lock)."""
    root = tmp_path / "dahp"
    shutil.copytree(PACKAGE_DIR, root, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    lock = tmp_path / "cache_versions.json"
    write_lock(lock, root)
    assert check_lock(root, lock) == []
    return root, lock


def _users(relative: str) -> set[str]:
    return {kind for kind, files in PRODUCERS.items() if relative in files}


def test_lock_check_detects_a_code_edit(tree, monkeypatch):
    root, lock = tree
    source = (root / "training/train.py").read_text()
    (root / "training/train.py").write_text(source + "\n\ndef _sgd_scale() -> float:\n    return 0.5\n")
    problems = check_lock(root, lock)
    assert {p.split("'")[1] for p in problems} == _users("training/train.py")
    for problem in problems:
        kind = problem.split("'")[1]
        assert problem.startswith(f"cache kind '{kind}': the code of its producers changed")
        assert "lib/dahp/training/train.py" in problem and "settings.py" not in problem
        assert problem.endswith(ADVICE.format(kind=kind))
    assert "eigh" not in _users("training/train.py")  # untouched kinds are not reported

    # the developer bumps checkpoints and rewrites the lock: in order again
    locked = CODE_VERSIONS["checkpoints"]
    monkeypatch.setitem(CODE_VERSIONS, "checkpoints", locked + 1)
    assert any(
        f"CODE_VERSIONS['checkpoints'] is {locked + 1} but cache_versions.json records {locked}" in p
        for p in check_lock(root, lock)
    )
    write_lock(lock, root)
    assert check_lock(root, lock) == []


def test_lock_check_detects_a_changed_expression(tree):
    root, lock = tree
    source = (root / "attribution/spectral.py").read_text()
    tree_ = ast.parse(source)
    # flip the first integer or float constant of a function body (a one-character code change)
    constant = next(
        n
        for n in ast.walk(tree_)
        if isinstance(n, ast.Constant) and type(n.value) in (int, float) and n.lineno > 1 and n.end_lineno == n.lineno
    )
    lines = source.splitlines(keepends=True)
    line = lines[constant.lineno - 1]
    lines[constant.lineno - 1] = (
        line[: constant.col_offset] + repr(constant.value + 1) + line[constant.end_col_offset :]
    )
    (root / "attribution/spectral.py").write_text("".join(lines))
    problems = check_lock(root, lock)
    assert {p.split("'")[1] for p in problems} == _users("attribution/spectral.py")
    assert all("lib/dahp/attribution/spectral.py" in p for p in problems)


def test_lock_check_ignores_comment_and_docstring_edits(tree):
    root, lock = tree
    for relative in ("training/train.py", "attribution/features.py", "attribution/spectral.py"):
        path = root / relative
        source = path.read_text()
        lines = source.splitlines(keepends=True)
        module = ast.parse(source)
        # reword every docstring (first line of its text) and add comments and blank lines
        for node in ast.walk(module):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None:
                first = node.body[0].lineno - 1
                lines[first] = lines[first].replace('"""', '"""Reworded: ', 1)
        edited = "# a new header comment\n\n" + "".join(
            line.rstrip("\n") + "  # note\n" if line.strip().startswith("return ") else line for line in lines
        )
        assert edited != source
        path.write_text(edited + "\n\n# trailing comment\n")
    assert check_lock(root, lock) == []


def test_a_missing_producer_file_hashes_as_empty_and_is_noted(tree):
    root, lock = tree
    (root / "experiments" / "cases.py").unlink()
    assert kind_lock("selection_case", root)["missing"] == ["experiments/cases.py"]
    assert kind_lock("checkpoints", root)["missing"] == []
    problems = check_lock(root, lock)
    assert len(problems) == 1 and "'selection_case'" in problems[0] and "experiments/cases.py (deleted)" in problems[0]
    write_lock(lock, root)
    assert check_lock(root, lock) == []
    (root / "experiments" / "cases.py").write_text("X = 1\n")
    assert "experiments/cases.py (created)" in check_lock(root, lock)[0]


def test_command_line_check_and_update_lock(tree, monkeypatch, capsys):
    root, lock = tree
    monkeypatch.setattr(cache_module, "PACKAGE_DIR", root)
    monkeypatch.setattr(cache_module, "LOCK_PATH", lock)
    assert main(["--check"]) == 0
    (root / "training/ground_truth.py").write_text((root / "training/ground_truth.py").read_text() + "\nEXTRA = 1\n")
    capsys.readouterr()
    assert main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "cache kind 'ground_truth'" in out and ADVICE.format(kind="ground_truth") in out
    assert main(["--update-lock"]) == 0
    assert f"ground_truth: sources changed, version {CODE_VERSIONS['ground_truth']} kept" in capsys.readouterr().out
    assert main(["--check"]) == 0
    with pytest.raises(SystemExit):
        main([])  # one of --check / --update-lock is required


def test_module_entry_point_checks_the_real_lock():
    done = subprocess.run([sys.executable, "-m", "dahp.core.cache", "--check"], capture_output=True, text=True)
    problems = check_lock()
    assert done.returncode == (1 if problems else 0), done.stdout + done.stderr
    assert all(problem in done.stdout for problem in problems)
    assert problems or "matches the sources of every cache kind" in done.stdout


def test_two_processes_missing_the_same_key_compute_it_once(tmp_path):
    """The book runs pages in parallel: the second process to miss waits for the first's entry."""
    import multiprocessing

    from dahp.core.cache import Cache

    marks = tmp_path / "computed"
    marks.mkdir()

    def fetch(name: str) -> None:
        def compute():
            (marks / name).touch()
            time.sleep(1.5)  # long enough for the other process to miss and wait
            return {"value": 7}

        assert Cache(tmp_path / "cache").get_or_compute("eigh", {"x": 1}, compute) == {"value": 7}

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=fetch, args=(name,)) for name in ("first", "second")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert len(list(marks.iterdir())) == 1
    assert len(list((tmp_path / "cache" / "eigh").iterdir())) == 1  # only the entry: the lock lives elsewhere
