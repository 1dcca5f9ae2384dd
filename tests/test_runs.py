"""Results keyed by what made them: a rerun with non-default parameters never touches the book's files,
and every notebook's parameters are typed and explained for ``papermill --help-notebook``."""

import ast
import hashlib
import json
import re
from pathlib import Path

import pytest

from dahp.book.plan import NOTEBOOKS, load_plan, run_entry
from dahp.book.runs import non_default, results_folder
from dahp.core.results import RUNS, run_name

#: The cheapest page of the plan that writes results and has a seed (the walkthrough: seconds).
PAGE = "walkthrough"


def book_files(results: Path) -> dict[str, str]:
    """Content hash of every file of a profile's folder that the book reads (the runs/ folder left out)."""
    return {
        path.relative_to(results).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(results.rglob("*"))
        if path.is_file() and path.relative_to(results).parts[0] != RUNS
    }


def test_a_rerun_with_another_seed_leaves_the_books_files_byte_identical(tmp_path, monkeypatch):
    import jupytext
    import papermill

    monkeypatch.setenv("DAHP_DATA_DIR", str(tmp_path / "data"))
    (entry,) = [e for e in load_plan() if e.page == PAGE]
    assert run_entry(entry, "quick", tmp_path / "executed", progress=False)
    results = tmp_path / "data" / "results" / "quick"
    before = book_files(results)
    assert before, "the plan's run wrote nothing to the book's folder"

    source = tmp_path / "rerun.ipynb"
    jupytext.write(jupytext.read(NOTEBOOKS / entry.notebook), source)
    papermill.execute_notebook(
        str(source), str(tmp_path / "out.ipynb"), parameters={"profile": "quick", "seed": 1}, progress_bar=False
    )
    assert book_files(results) == before  # byte-identical, and no file added
    (folder,) = (results / RUNS).iterdir()
    saved = json.loads((folder / "parameters.json").read_text())
    assert saved == {"notebook": "walkthrough", "seed": 1}
    assert folder.name == run_name(saved)
    # the rerun wrote the same tables and figures, under its own name, with other numbers
    assert set(book_files(folder)) == set(before) | {"parameters.json"}
    name = next(n for n in before if n.endswith(".csv"))
    assert (folder / name).read_bytes() != (results / name).read_bytes()


def test_the_plans_parameters_are_the_books_and_any_other_value_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("DAHP_DATA_DIR", str(tmp_path))
    defaults = {"setting": "cifar2_resnet9", "attributor": "trak", "profile": "quick", "seed": 0, "device": None}
    notebook = "fig1c_fig1f_large_settings.md"  # two pages of the plan: either entry's parameters are the book's
    assert non_default(notebook, defaults) == {}
    assert non_default(notebook, {**defaults, "setting": "wikitext2_gpt2", "attributor": "logra"}) == {}
    assert non_default(notebook, {**defaults, "attributor": "logra"}) == {"attributor": "logra"}
    assert non_default(notebook, {**defaults, "device": "cuda", "profile": "paper"}) == {}  # where, not what
    # a list given as YAML (lists, null) equals the cell's default written in Python
    cases = [["mnist_lr", None], ["mnist_lr", 2048], ["mnist_mlp", 512], ["mnist_mlp", 2048]]
    cases += [["cifar2_resnet9", 2048], ["maestro_mt", 2048]]
    selection = {"attributor": "trak", "cases": cases, "profile": "quick", "seed": 0, "device": None}
    assert non_default("fig2_fig3_lambda_selection.md", selection) == {}
    assert non_default("fig2_fig3_lambda_selection.md", {**selection, "cases": cases[:1]}) == {"cases": cases[:1]}
    assert results_folder("fig2_fig3_lambda_selection.md", selection) == tmp_path / "results" / "quick"
    other = results_folder("fig2_fig3_lambda_selection.md", {**selection, "seed": 3})
    assert other.parent == tmp_path / "results" / "quick" / RUNS
    assert json.loads((other / "parameters.json").read_text()) == {"notebook": "fig2_fig3_lambda_selection", "seed": 3}


# --------------------------------------------------------------------------------------------------
# typed parameters

_OPTIONAL = re.compile(r"^Optional\[(.*)\]$")
_GENERIC = re.compile(r"^(list|dict)\[(.*)\]$")


def value_has_type(value, annotation: str) -> bool:
    """Whether ``value`` is of the annotation's type (the few forms the notebooks use)."""
    annotation = annotation.strip()
    if match := _OPTIONAL.match(annotation):
        return value is None or value_has_type(value, match.group(1))
    if annotation in ("list", "dict"):
        return isinstance(value, list if annotation == "list" else dict)
    if match := _GENERIC.match(annotation):
        kind, inner = match.groups()
        if kind == "list":
            return isinstance(value, list) and all(value_has_type(v, inner) for v in value)
        key, item = inner.split(",", 1)
        return isinstance(value, dict) and all(
            value_has_type(k, key) and value_has_type(v, item) for k, v in value.items()
        )
    simple = {"str": str, "bool": bool, "int": int, "float": (int, float)}
    if annotation not in simple:
        return False
    return isinstance(value, simple[annotation]) and (annotation == "bool" or not isinstance(value, bool))


def test_the_type_check_can_fail():
    assert value_has_type([["a", None], ["b", 2]], "list[list]")
    assert value_has_type({"a": None, "b": 3}, "dict[str, Optional[int]]")
    assert not value_has_type({"a": "x"}, "dict[str, Optional[int]]")
    assert not value_has_type(["a", 1], "list[str]")
    assert not value_has_type(True, "int")
    assert not value_has_type(None, "str")
    assert not value_has_type(1, "Unknown")


@pytest.mark.parametrize("notebook", sorted(p.name for p in NOTEBOOKS.glob("*.md")))
def test_every_parameter_has_a_type_and_a_comment_for_help_notebook(notebook, tmp_path):
    import jupytext
    from papermill.inspection import inspect_notebook

    converted = tmp_path / "notebook.ipynb"
    jupytext.write(jupytext.read(NOTEBOOKS / notebook), converted)
    parameters = inspect_notebook(converted)
    assert parameters, f"{notebook} has no parameters papermill can see"
    for name, p in parameters.items():
        where = f"{notebook}: {name}"
        assert p["inferred_type_name"] not in ("None", ""), f"{where} has no type ('Unknown type' in --help-notebook)"
        assert p["help"], f"{where} has no comment"
        assert value_has_type(ast.literal_eval(p["default"]), p["inferred_type_name"]), (where, p)
        if p["inferred_type_name"].startswith(("list", "dict")):
            assert f"-y '{name}: " in p["help"], f"{where}: the comment must show the -y form"


def test_profile_scope_keeps_the_profiles_settings_and_names_the_others():
    from dahp.book.notes import profile_scope

    kept, text = profile_scope(["mnist_lr", "mnist_mlp", "mnist_lr"], ("mnist_lr",), "default", "the α study")
    assert kept == ["mnist_lr", "mnist_lr"]
    assert text == (
        "At the `default` profile this page runs the α study on `mnist_lr` only; `mnist_mlp` run at the "
        "`paper` profile (`-p profile paper`)."
    )
    assert profile_scope(["mnist_lr"], ("mnist_lr", "mnist_mlp"), "paper") == (["mnist_lr"], None)
