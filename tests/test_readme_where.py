"""The README's "Where things are" section names only things that exist: pages of the plan, their
notebooks, importable functions and records, and the layers' folders."""

import importlib
import re
from pathlib import Path

import pytest

from dahp.book.plan import load_plan

ROOT = Path(__file__).resolve().parents[1]


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def _rows(section: str) -> list[list[str]]:
    """The cells of every table row of ``section`` (header and rule lines left out)."""
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows if row[0].strip() not in {"page", "layer"}]


def _named(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def resolve(dotted: str):
    """The object a dotted ``dahp`` name refers to (a module, or an attribute of the longest importable prefix)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    raise ModuleNotFoundError(dotted)


def test_every_page_of_the_where_things_are_table_is_in_the_plan_with_its_notebook():
    plan = {entry.page: entry.notebook for entry in load_plan()}
    rows = [row for row in _rows(_section("Where things are")) if len(row) == 5]
    assert len(rows) >= 15
    for page, notebook, function, record, _files in rows:
        (page,), (path,) = _named(page), _named(notebook)
        assert plan[page] == Path(path).name, page
        assert (ROOT / path).is_file(), path
        for dotted in _named(function) + _named(record):
            assert callable(resolve(dotted)), dotted


def test_every_layer_named_exists_in_its_folder_and_in_the_import_contract():
    rows = [row for row in _rows(_section("Where things are")) if len(row) == 3]
    contract = (ROOT / "pyproject.toml").read_text()
    assert [_named(layer)[0] for layer, _, _ in rows] == [
        f"dahp.{name}" for name in reversed(re.findall(r'^    "(\w+)",$', contract, flags=re.M))
    ]
    for layer, folder, _ in rows:
        (dotted,), (path,) = _named(layer), _named(folder)
        assert resolve(dotted).__file__.startswith(str(ROOT / path)), (dotted, path)


def test_a_name_that_does_not_exist_is_caught():
    with pytest.raises((ModuleNotFoundError, AttributeError)):
        resolve("dahp.experiments.grid.no_such_function")
    with pytest.raises((ModuleNotFoundError, AttributeError)):
        resolve("dahp.experiments.records")  # the old results module, split into the experiments
