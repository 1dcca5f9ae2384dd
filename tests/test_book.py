"""Every notebook of the plan runs under papermill in the quick profile and the book builds without warnings."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dahp.config import InvalidParameterError
from dahp.plan import ROOT, NotebookFailed, PlanEntry, load_plan, run_entry, run_plan


@pytest.fixture()
def book_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DAHP_DATA_DIR", str(tmp_path / "data"))
    root = tmp_path / "site"
    root.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("executed"))
    return root


def test_plan_runs_in_quick_profile_and_book_builds_warning_free(book_root, tmp_path):
    executed = run_plan("quick", out_dir=book_root / "book" / "executed")
    assert executed == [entry.page for entry in load_plan()]
    assert run_plan("quick", out_dir=book_root / "book" / "executed") == []  # up to date: nothing re-runs
    figures = sorted(p.name for p in (tmp_path / "data" / "results").glob("*.png"))
    assert figures == ["grid_mnist_mlp_trak_proj_dim_regularization.png", "selection_mnist_lr_iffim.png"]
    defaults = pd.read_csv(tmp_path / "data" / "results" / "table_a1_defaults.csv")
    trak = defaults[defaults.attributor == "TRAK"].set_index("hyperparameter")["default"]
    assert trak["regularization"] == "0.0" and trak["proj_dim"] == "512" and trak["ensemble_size"] == "10"
    build = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(book_root), "-W", "-n",
                            "--keep-going"], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    for entry in load_plan():
        assert (book_root / "_build" / "html" / "book" / "executed" / f"{entry.page}.html").exists()


def test_a_failing_cell_names_the_notebook_and_the_cell(tmp_path, monkeypatch):
    broken = ROOT / "notebooks" / "_broken_for_test.md"
    header = (ROOT / "notebooks" / "selection.md").read_text().split("\n---\n", 1)[0] + "\n---\n"
    broken.write_text(header + "\n# Broken\n\n```{code-cell} ipython3\n:tags: [parameters]\n\nprofile = 'quick'\n```\n\n"
                      "```{code-cell} ipython3\nraise ValueError('boom')\n```\n")
    try:
        with pytest.raises(NotebookFailed, match=r"_broken_for_test\.md.*cell \d+: ValueError: boom"):
            run_entry(PlanEntry("_broken_for_test.md", "broken", {}), "quick", tmp_path)
    finally:
        broken.unlink()


def test_unknown_profile_or_page():
    with pytest.raises(InvalidParameterError, match="profile='huge'"):
        run_plan("huge")
    with pytest.raises(InvalidParameterError, match="page='fig9'"):
        run_plan("quick", only=["fig9"])
