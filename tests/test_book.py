"""Every notebook of the plan runs under papermill in the quick profile and the book builds without warnings."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from dahp.book.plan import ROOT, NotebookFailed, PlanEntry, load_plan, run_entry, run_plan
from dahp.core.config import InvalidParameterError


@pytest.fixture()
def book_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DAHP_DATA_DIR", str(tmp_path / "data"))
    root = tmp_path / "site"
    root.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("executed"))
    return root


#: The large settings whose pages run on fixture data in this test (tiny files in the real formats).
#: CIFAR-2 runs its own page below: ResNet-9's 4.8M-dimensional gradients make dattri's CPU
#: projector to the selection cases' 2048 dimensions take minutes per case on two cores.
FIXTURE_SETTINGS = ["maestro_mt", "wikitext2_gpt2"]


def test_plan_runs_in_quick_profile_and_book_builds_warning_free(book_root, tmp_path):
    from dahp.data.fixtures import write_fixtures

    write_fixtures(tmp_path / "data", FIXTURE_SETTINGS)
    started = time.time()
    executed = run_plan("quick", out_dir=book_root / "book" / "executed")
    assert executed == [entry.page for entry in load_plan()]
    assert run_plan("quick", out_dir=book_root / "book" / "executed") == []  # up to date: nothing re-runs
    check_run_records(book_root / "book" / "executed")
    results = tmp_path / "data" / "results" / "quick"
    for name in EXPECTED_FIGURES:
        check_figure(results / name, started)
    status = pd.read_csv(results / "reproduction_status.csv")
    assert list(status.columns[:5]) == ["claim", "artifact", "paper", "ours", "holds"]
    assert list(status.claim) == [f"C{k}" for k in range(1, 14)]
    assert set(status.holds) <= {"holds", "holds in part", "does not hold", "not run here"}
    assert status.set_index("claim").holds["C2"] == "not run here"  # CIFAR-2 is not supplied here
    assert "data not supplied" in status.set_index("claim").reason["C2"]
    # MAESTRO's cases and Fig 1f ran on fixture data: shown on the pages, no claim judged from them
    assert "wikitext2_gpt2: fixture data only" in status.set_index("claim").reason["C3"]
    for claim in ("C5", "C8"):
        assert "maestro_mt: fixture data only" in status.set_index("claim").reason[claim]
        assert "maestro_mt" not in status.set_index("claim").ours[claim]
    check_status_numbers_are_the_pages_headlines(results)
    check_learned_page_shows_the_headline(book_root / "book" / "executed" / "learned_weights.ipynb", results)
    defaults = pd.read_csv(results / "table_a1_defaults.csv")
    trak = defaults[defaults.attributor == "TRAK"].set_index("hyperparameter")["default"]
    assert trak["regularization"] == "0.0" and trak["proj_dim"] == "512" and trak["ensemble_size"] == "10"
    build = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(book_root), "-W", "-n", "--keep-going"],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    html = book_root / "_build" / "html"
    for entry in load_plan():
        assert (html / "book" / "executed" / f"{entry.page}.html").exists()
    check_in_browser(html)


def test_fig1c_page_runs_on_cifar2_fixture_data(book_root, tmp_path):
    """The CIFAR-2 / ResNet-9 path end to end (batched training with batch norm, ground truth, TRAK
    features, LDS, figure) on fixture files, labelled as fixture data on the page."""
    import json

    from dahp.data.fixtures import write_fixtures

    write_fixtures(tmp_path / "data", ["cifar2_resnet9"])
    started = time.time()
    (entry,) = [e for e in load_plan() if e.page == "fig1c_cifar2_trak_grid"]
    assert run_entry(entry, "quick", book_root / "book" / "executed", progress=False)
    check_figure(
        tmp_path / "data" / "results" / "quick" / "grid_cifar2_resnet9_trak_proj_dim_regularization.png", started
    )
    page = json.loads((book_root / "book" / "executed" / "fig1c_cifar2_trak_grid.ipynb").read_text())
    outputs = json.dumps([cell.get("outputs", []) for cell in page["cells"]])
    assert "Fixture data" in outputs and "Not run here" not in outputs


def check_run_records(executed: Path) -> None:
    """Every page ends with its run record, and the build report has a row for every page of the plan."""
    import json

    from dahp.book.records import RECORD_TAG, read_record

    report = (executed / "build_report.md").read_text()
    for entry in load_plan():
        cells = json.loads((executed / f"{entry.page}.ipynb").read_text())["cells"]
        assert RECORD_TAG in cells[-1]["metadata"].get("tags", []), entry.page
        record = read_record(executed, entry.page)
        assert record["profile"] == "quick" and record["wall_s"] > 0 and record["peak_rss_bytes"] > 0, entry.page
        assert f"| [{entry.page}]({entry.page}) | quick |" in report, entry.page


def check_figure(path: Path, written_after: float) -> None:
    """The figure was drawn by this run, decodes as a PNG of a readable size, and is not blank."""
    import matplotlib.image

    assert path.stat().st_mtime >= written_after, f"{path.name} is left over from an earlier run"
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert width >= 600 and height >= 350, (path.name, width, height)
    ink = (pixels[..., :3].mean(axis=2) < 0.9).mean()  # share of pixels that are not (near) white
    assert ink > 0.02, (path.name, ink)


def check_status_numbers_are_the_pages_headlines(results: Path) -> None:
    """Every number the status page judged from equals the headline the page itself saved beside its record."""
    import json

    numbers = json.loads((results / "reproduction_status.json").read_text())["numbers"]
    checked = 0
    for claim, by_stem in numbers.items():
        for stem, values in by_stem.items():
            saved = json.loads((results / f"{stem}.json").read_text())["headline"]
            for key, value in values.items():
                expected = saved[key]
                if isinstance(value, dict) and stem.startswith("selection"):
                    expected = {k: v for k, v in saved[key].items() if k in value}
                assert value == expected, (claim, stem, key)
                checked += 1
    assert checked >= 10, numbers


def check_learned_page_shows_the_headline(page: Path, results: Path) -> None:
    """The learned-weights page prints, per case, the paired difference its saved record's headline holds."""
    import json

    from dahp.core.statistics import Estimate

    outputs = json.dumps(
        [cell.get("outputs", []) for cell in json.loads(page.read_text())["cells"]], ensure_ascii=False
    )
    headline = json.loads((results / "learned_weights.json").read_text())["headline"]
    assert headline, "the learned-weights record has no case"
    for case, values in headline.items():
        difference = Estimate(
            **{k: float("nan") if v is None else v for k, v in values["learned_minus_uniform"].items()}
        )
        assert f"{case}: {difference.text(3)}" in outputs, (case, difference)
    ablations = json.loads((results / "learned_weights_ablations.json").read_text())["headline"]
    assert ablations, "the ablations record has no case"
    for case, values in ablations.items():
        both_tails = Estimate(**values["signal"]["minus_base"]["top_and_bottom"])
        assert f"**{case}**" in outputs and f"both tails minus top-k: {both_tails.text(3)}" in outputs, case


#: Figures the quick-profile plan must write (one per artifact page that draws one).
EXPECTED_FIGURES = [
    "grid_wikitext2_gpt2_logra_proj_dim_regularization.png",  # Fig 1f on fixture data
    "grid_mnist_mlp_if_cg_regularization.png",
    "grid_mnist_mlp_trak_proj_dim_regularization.png",
    "grid_mnist_mlp_if_lissa_scaling_recursion_depth.png",
    "fig1e_trak_training_epoch.png",
    "fig4_mnist_lr.png",
    "selection_iffim.png",
    "selection_trak.png",
    "fig5_xi_bar_curves.png",
    "fig6_alpha_robustness.png",
    "theorem_check_mnist_lr_iffim.png",
    "own_model_selection.png",
    "learned_weights.png",
]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


def check_in_browser(html: Path) -> None:
    """Every page opens in headless chromium, its images load, and a screenshot is saved."""
    from browser import browser_available, check_pages

    if not browser_available():
        pytest.skip("chromium/chromedriver not installed (make test installs them with apt-get when it can)")
    pages = [f"book/executed/{entry.page}" for entry in load_plan()]
    pages += ["book/executed/build_report", "book/theory_xi", "book/rerun"]
    report = check_pages(html, pages, SCREENSHOTS)
    for page, seen in report.items():
        assert not seen["error"] and seen["title"], (page, seen)
        # what a reader sees: no raw table syntax, no warning text, no table cut off (tests/browser.py)
        assert not (seen["raw_tables"] or seen["warnings"] or seen["clipped"] or seen["numbered"]), (page, seen)
        assert not seen["broken"], (page, seen["broken"])
        assert seen["screenshot"].stat().st_size > 10_000, page
    # notebook figures are copied to _images/ by the build; a theme logo would not be
    with_figures = [p for p, seen in report.items() if any("_images/" in src for src in seen["images"])]
    drawn = [
        "fig1a",
        "fig1b",
        "fig1d",
        "fig1e",
        "fig4",
        "fig2",
        "fig3",
        "fig5",
        "fig6",
        "theory",
        "own_model",
        "learned_weights",
    ]
    for stem in drawn:
        assert any(stem in p for p in with_figures), (stem, {p: s["images"] for p, s in report.items()})


def test_a_failing_cell_names_the_notebook_and_the_cell(tmp_path, monkeypatch):
    broken = ROOT / "notebooks" / "_broken_for_test.md"
    header = (ROOT / "notebooks" / "fig1b_trak_grid.md").read_text().split("\n---\n", 1)[0] + "\n---\n"
    broken.write_text(
        header + "\n# Broken\n\n```{code-cell} ipython3\n:tags: [parameters]\n\nprofile = 'quick'\n```\n\n"
        "```{code-cell} ipython3\nraise ValueError('boom')\n```\n"
    )
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


def test_a_plan_title_replaces_the_first_heading_only():
    import nbformat

    from dahp.book.plan import retitle

    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("x = 1"),
            nbformat.v4.new_markdown_cell("Intro\n# Shared title\n\ntext\n# Second heading"),
        ]
    )
    retitle(notebook, "Fig 2 — IFFIM")
    assert notebook.cells[1].source == "Intro\n# Fig 2 — IFFIM\n\ntext\n# Second heading"
    titled = {e.page: e.title for e in load_plan() if e.notebook == "fig2_fig3_lambda_selection.md"}
    assert titled == {
        "fig2_iffim_selection": "Fig 2 — IFFIM — the λ chosen by ξ against the LDS",
        "fig3_trak_selection": "Fig 3 — TRAK — the λ chosen by ξ against the LDS",
    }
