"""The plan runner on tiny throwaway notebooks: reader view, what makes a page re-run, progress bars.

Fast (a few kernel starts); the full plan runs in tests/test_book.py.
"""

import ast
import io
import json
import os
import subprocess
import sys

import nbformat
import pytest

import dahp.book.plan as plan
from dahp.book.plan import PlanEntry, entry_key, load_plan, run_entry
from dahp.core.config import InvalidParameterError
from helpers import quick, registered

HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def code(source: str, *tags: str) -> str:
    tag_line = f":tags: [{', '.join(tags)}]\n\n" if tags else ""
    return f"```{{code-cell}} ipython3\n{tag_line}{source}\n```\n"


@pytest.fixture()
def notebooks(tmp_path, monkeypatch):
    """A scratch notebooks/ folder for the runner, and a scratch data directory."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(plan, "NOTEBOOKS", folder)
    monkeypatch.setenv("DAHP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DAHP_PROGRESS", raising=False)
    return folder


def write_notebook(folder, name: str, *cells: str, heading: str = "# A page\n\nSome text.\n") -> str:
    (folder / name).write_text(HEADER + "\n" + heading + "\n" + "\n".join(cells))
    return name


def outputs_text(notebook) -> str:
    return json.dumps([cell.get("outputs", []) for cell in notebook.cells])


# --------------------------------------------------------------------------------------------------
# reader view


def test_code_cells_are_folded_at_conversion_unless_tagged_remove_or_hide(notebooks):
    name = write_notebook(
        notebooks,
        "fold.md",
        code("x = 1", "parameters"),
        code("print(x)"),
        code("y = 2", "remove-input"),
        code("z = 3", "hide-output"),
        code("w = 4", "remove-cell"),
        code("v = 5", "my-tag"),
        "Closing words.\n",
    )
    notebook = plan.convert(PlanEntry(name, "fold", {}))
    tags = [cell.metadata.get("tags", []) for cell in notebook.cells if cell.cell_type == "code"]
    assert tags == [
        ["parameters", "hide-input"],
        ["hide-input"],
        ["remove-input"],
        ["hide-output"],
        ["remove-cell"],
        ["my-tag", "hide-input"],
    ]
    assert all(
        "hide-input" not in cell.metadata.get("tags", []) for cell in notebook.cells if cell.cell_type == "markdown"
    )


def test_parameters_cells_are_removed_and_a_table_of_the_effective_parameters_follows_the_heading(notebooks, tmp_path):
    name = write_notebook(
        notebooks,
        "params.md",
        code(
            'setting = "mnist_mlp"  # the setting attributed\nseed = 0  # seed of the | random draws\n'
            'profile = "default"\nscale = 1.5',
            "parameters",
        ),
        code("print(setting, seed, profile, scale)"),
        heading="Before the title.\n\n# The page\n\nIntro text.\n",
    )
    entry = PlanEntry(name, "params", {"setting": "cifar2_resnet9", "extra": [1, 2]})
    assert run_entry(entry, "quick", tmp_path / "out", progress=False)
    executed = nbformat.read(tmp_path / "out" / "params.ipynb", as_version=4)
    nbformat.validate(executed)
    by_tag = {tag: cell for cell in executed.cells for tag in cell.metadata.get("tags", [])}
    assert "remove-cell" in by_tag["parameters"].metadata.tags
    assert "remove-cell" in by_tag["injected-parameters"].metadata.tags
    printed = next(c for c in executed.cells if c.cell_type == "code" and "print(" in c.source)
    assert "remove-cell" not in printed.metadata.tags and "hide-input" in printed.metadata.tags
    assert "cifar2_resnet9 0 quick 1.5" in outputs_text(executed)  # the injected values were used
    tables = [i for i, c in enumerate(executed.cells) if c.cell_type == "markdown" and "| parameter |" in c.source]
    assert len(tables) == 1
    assert "# The page" in executed.cells[tables[0] - 1].source  # right after the heading cell
    rows = [line for line in executed.cells[tables[0]].source.split("\n") if line.startswith("| `")]
    assert rows == [
        '| `setting` | `"cifar2_resnet9"` | the setting attributed |',
        "| `seed` | `0` | seed of the \\| random draws |",
        '| `profile` | `"quick"` |  |',
        "| `scale` | `1.5` |  |",
        "| `extra` | `[1, 2]` |  |",
    ]


# --------------------------------------------------------------------------------------------------
# what makes a page re-run


def test_a_page_that_reads_another_reruns_when_a_file_the_other_wrote_changes_and_not_otherwise(notebooks, tmp_path):
    results = tmp_path / "data" / "results" / "quick"
    results.mkdir(parents=True)
    (results / "other.txt").write_text("not written by the writer")
    writer = write_notebook(
        notebooks,
        "writer.md",
        code('value = "a"\nprofile = "default"', "parameters"),
        code(
            "import os, pathlib\n"
            "folder = pathlib.Path(os.environ['DAHP_DATA_DIR']) / 'results' / profile / 'sub'\n"
            "folder.mkdir(parents=True, exist_ok=True)\n"
            "(folder / 'w.txt').write_text(value)"
        ),
    )
    reader = write_notebook(
        notebooks,
        "reader.md",
        code('profile = "default"', "parameters"),
        code(
            "import os, pathlib\n"
            "print(pathlib.Path(os.environ['DAHP_DATA_DIR'], 'results', profile, 'sub', 'w.txt').read_text())"
        ),
    )
    out = tmp_path / "out"
    write_a = PlanEntry(writer, "writer", {"value": "a"})
    read = PlanEntry(reader, "reader", {}, reads=("writer",))
    not_reading = PlanEntry(reader, "not_reading", {})

    assert run_entry(write_a, "quick", out, progress=False)
    stamp = json.loads((out / ".writer.stamp").read_text())
    assert stamp["wrote"] == ["sub/w.txt"] and stamp["profile"] == "quick"
    assert run_entry(read, "quick", out, progress=False)
    assert run_entry(not_reading, "quick", out, progress=False)
    assert json.loads((out / ".reader.stamp").read_text())["wrote"] == []
    assert not run_entry(read, "quick", out, progress=False)  # nothing changed

    (results / "other.txt").write_text("changed, but the reader does not read it")
    assert not run_entry(read, "quick", out, progress=False)
    assert run_entry(write_a, "quick", out, force=True, progress=False)  # same content written again
    assert json.loads((out / ".writer.stamp").read_text())["wrote"] == ["sub/w.txt"]
    assert not run_entry(read, "quick", out, progress=False)

    (results / "sub" / "w.txt").write_text("b")  # what the writer wrote changed
    assert not run_entry(not_reading, "quick", out, progress=False)
    assert run_entry(read, "quick", out, progress=False)
    assert '"b' in outputs_text(nbformat.read(out / "reader.ipynb", as_version=4))
    assert not run_entry(read, "quick", out, progress=False)

    assert run_entry(PlanEntry(writer, "writer", {"value": "c"}), "quick", out, progress=False)
    assert run_entry(read, "quick", out, progress=False)


def test_the_data_state_of_a_setting_is_part_of_every_key(notebooks, tmp_path):
    from dahp.data.settings import get_setting

    name = write_notebook(notebooks, "page.md", code("x = 1"))
    entry, parameters = PlanEntry(name, "page", {}), {"profile": "quick"}
    missing = entry_key(entry, parameters)
    assert entry_key(entry, parameters) == missing  # nothing changed: same key
    required = tmp_path / "data" / get_setting("cifar2_resnet9").required_files[0]
    required.parent.mkdir(parents=True)
    required.write_bytes(b"1234")
    supplied = entry_key(entry, parameters)
    assert supplied != missing
    os.utime(required, ns=(1_000_000_000, 1_000_000_000))
    touched = entry_key(entry, parameters)
    assert touched not in (missing, supplied)
    required.write_bytes(b"12345")
    os.utime(required, ns=(1_000_000_000, 1_000_000_000))
    assert entry_key(entry, parameters) not in (missing, supplied, touched)  # same mtime, other size


def test_the_source_digest_covers_subpackages(tmp_path, monkeypatch):
    package = tmp_path / "lib" / "dahp"
    (package / "experiments").mkdir(parents=True)
    (package / "a.py").write_text("a = 1")
    (package / "experiments" / "grid.py").write_text("b = 1")
    monkeypatch.setattr(plan, "ROOT", tmp_path)
    before = plan._source_digest()
    (package / "experiments" / "grid.py").write_text("b = 2")
    assert plan._source_digest() != before


def test_the_plan_declares_what_pages_read_and_reads_only_earlier_pages(tmp_path):
    entries = {e.page: e for e in load_plan()}
    assert entries["fig5_xi_curves"].reads == ("fig2_iffim_selection", "fig3_trak_selection")
    assert set(entries["reproduction_status"].reads) == set(entries) - {"reproduction_status", "intro"}
    # the first page summarises the status, so it runs last and reads it
    assert list(entries)[-1] == "intro" and "reproduction_status" in entries["intro"].reads
    assert entries["fig1b_trak_grid"].reads == ()
    bad = tmp_path / "plan.yml"
    bad.write_text("- {notebook: a.md, page: a, reads: [b]}\n- {notebook: b.md, page: b}\n")
    with pytest.raises(InvalidParameterError, match="b"):
        load_plan(bad)


def test_every_page_is_named_after_its_notebook_and_a_plan_that_is_not_is_refused(tmp_path):
    from dahp.book.plan import page_named_by_notebook

    for entry in load_plan():
        assert page_named_by_notebook(entry.notebook, entry.page), entry
        assert (plan.NOTEBOOKS / entry.notebook).exists(), entry.notebook
    assert page_named_by_notebook("fig2_fig3_lambda_selection.md", "fig3_trak_selection")
    assert page_named_by_notebook("removal_table.md", "removal_table")
    assert not page_named_by_notebook("lambda_selection.md", "fig2_iffim_selection")
    assert not page_named_by_notebook("fig2_fig3_lambda_selection.md", "fig5_xi_curves")
    assert not page_named_by_notebook("fig1_large_settings.md", "fig1c_cifar2_trak_grid")
    bad = tmp_path / "plan.yml"
    bad.write_text("- {notebook: lambda_selection.md, page: fig2_iffim_selection}\n")
    with pytest.raises(InvalidParameterError, match="fig2_iffim_selection"):
        load_plan(bad)


# --------------------------------------------------------------------------------------------------
# progress


def test_a_progress_bar_in_a_notebook_reaches_the_terminal_and_not_the_page(notebooks, tmp_path, monkeypatch, capfd):
    # under pytest ipykernel does not capture the kernel's file descriptors; make book's kernels do
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    name = write_notebook(
        notebooks,
        "bars.md",
        code(
            "import os\nfrom dahp.core.progress import tqdm\n"
            "print('mode', os.environ.get('DAHP_PROGRESS'))\n"
            "for _ in tqdm(range(3), desc='marker-shown', disable=False):\n    pass\n"
            "for _ in tqdm(range(3), desc='marker-hidden', disable=True):\n    pass"
        ),
    )
    capfd.readouterr()
    assert run_entry(PlanEntry(name, "bars", {}), "quick", tmp_path / "out")
    terminal = capfd.readouterr().err
    executed = nbformat.read(tmp_path / "out" / "bars.ipynb", as_version=4)
    assert "mode terminal" in outputs_text(executed)
    assert "marker-shown" in terminal and "3/3" in terminal
    assert "marker" not in outputs_text(executed)
    assert "marker-hidden" not in terminal
    assert "Executing" in terminal  # papermill's per-cell bar
    assert "DAHP_PROGRESS" not in os.environ  # restored after the run


def test_the_kernel_log_stays_off_the_terminal_and_a_failing_cell_is_still_named(notebooks, tmp_path, capfd):
    write_notebook(notebooks, "quiet.md", code("print('ran')"))
    write_notebook(notebooks, "loud.md", code("raise KeyError('named')"))
    capfd.readouterr()
    assert run_entry(PlanEntry("quiet.md", "quiet", {}), "quick", tmp_path / "out")
    assert "IPKernelApp" not in capfd.readouterr().err  # ipykernel 7 warns about TCP at every start
    with pytest.raises(plan.NotebookFailed, match="KeyError: 'named'"):
        run_entry(PlanEntry("loud.md", "loud", {}), "quick", tmp_path / "out")


def test_progress_tqdm_is_plain_tqdm_unless_asked(monkeypatch, capfd):
    from dahp.core.progress import tqdm

    monkeypatch.delenv("DAHP_PROGRESS", raising=False)
    stream = io.StringIO()
    assert list(tqdm(range(2), "plain-bar", file=stream)) == [0, 1]
    assert "plain-bar" in stream.getvalue() and "2/2" in stream.getvalue()

    monkeypatch.setenv("DAHP_PROGRESS", "terminal")
    stream = io.StringIO()
    capfd.readouterr()
    assert list(tqdm(range(2), "terminal-bar", None, True, stream)) == [0, 1]  # file given by position
    assert stream.getvalue() == ""
    assert "terminal-bar" in capfd.readouterr().err  # sys.__stderr__ outside a kernel
    assert sys.__stderr__ is not None

    monkeypatch.setenv("DAHP_PROGRESS", "off")
    stream = io.StringIO()
    bar = tqdm(range(2), desc="off-bar", file=stream, disable=False)
    assert list(bar) == [0, 1] and stream.getvalue() == "" and bar.disable


# --------------------------------------------------------------------------------------------------
# what a page cost


def test_every_executed_page_ends_with_its_run_record_and_the_build_report_lists_it(notebooks, tmp_path, capsys):
    from dahp.book.records import PROBE_TAG, RECORD_TAG, read_record

    write_notebook(
        notebooks,
        "costly.md",
        code('profile = "default"  # run sizes', "parameters"),
        code(
            "from dahp.core.cache import default_cache\n"
            "cache = default_cache()\n"
            "assert cache.load('eigh', {'x': 1}) is None\n"
            "cache.save('eigh', {'x': 1}, [1, 2])\n"
            "assert cache.load('eigh', {'x': 1}) == [1, 2]\n"
            "blob = bytearray(300_000_000)  # a peak of 300 MB the record must see"
        ),
    )
    (notebooks / "plan.yml").write_text(
        "- notebook: costly.md\n  page: costly\n- notebook: costly.md\n  page: costly_b\n"
    )
    out = tmp_path / "out"
    assert plan.run_plan("quick", out, only=["costly"], progress=False) == ["costly"]
    printed = capsys.readouterr().out
    assert "[quick 1/1] costly: executed in" in printed
    assert "1 of 1 pages executed, 0 up to date, in " in printed  # the total at the end
    executed = nbformat.read(out / "costly.ipynb", as_version=4)
    assert not any(PROBE_TAG in c.metadata.get("tags", []) for c in executed.cells)  # the probe is gone
    last = executed.cells[-1]
    assert last.cell_type == "markdown" and RECORD_TAG in last.metadata.tags
    record = read_record(out, "costly")
    assert record["profile"] == "quick" and record["device"].startswith("cpu") and record["wall_s"] > 0
    assert (record["cache_hits"], record["cache_misses"]) == (1, 1)
    assert record["peak_rss_bytes"] > 300_000_000
    assert record["torch"] and record["dahp"]
    for shown in ("profile `quick`", "device cpu", "wall time", "peak memory", "cache 1 hits, 1 misses", "torch"):
        assert shown in last.source, shown
    report = (out / "build_report.md").read_text()
    assert "| [costly](costly) | quick | cpu" in report
    assert "| costly_b | not run |" in report
    assert "Total wall time" in report


def test_a_known_warning_becomes_a_note_without_paths_and_any_other_stays_and_is_named(notebooks, tmp_path, capsys):
    from dahp.book.notes import plain_paths

    data = tmp_path / "data"
    assert plain_paths(f"see {data}/maestro/fixture_sizes.json and /opt/x/y.py") == (
        "see data/maestro/fixture_sizes.json and y.py"
    )
    name = write_notebook(
        notebooks,
        "warned.md",
        code(
            "import warnings\nfrom dahp.core.paths import data_dir\nfrom dahp.data.maestro import FixtureSizesWarning\n"
            "for _ in range(2):\n"
            "    warnings.warn(f'{data_dir()}/maestro/fixture_sizes.json scales it down', FixtureSizesWarning)\n"
            "from tqdm import TqdmWarning\n"
            "warnings.warn('IProgress not found. Please update jupyter and ipywidgets.', TqdmWarning)\n"
            "warnings.warn('something unexpected', RuntimeWarning)"
        ),
    )
    assert run_entry(PlanEntry(name, "warned", {}), "quick", tmp_path / "out", progress=False)
    outputs = outputs_text(nbformat.read(tmp_path / "out" / "warned.ipynb", as_version=4))
    assert outputs.count("*Note.* data/maestro/fixture_sizes.json scales it down") == 1  # once, in prose
    assert "FixtureSizesWarning" not in outputs and str(tmp_path) not in outputs
    assert "IProgress" not in outputs  # silenced: about notebook widgets, not the results
    assert "RuntimeWarning: something unexpected" in outputs  # not hidden: the browser check fails on it
    assert "warned: warning text in the page's output:" in capsys.readouterr().out


def test_pages_run_two_at_a_time_each_owning_only_the_files_its_kernel_wrote(notebooks, tmp_path, capsys):
    """With ``jobs=2`` the slow writer's run spans the other page's write: the folder changed under it, yet
    its stamp lists only its own file; and a page that reads it starts only once it has finished."""
    results = "pathlib.Path(os.environ['DAHP_DATA_DIR'], 'results', profile, 'sub')"
    parameters = code('profile = "default"  # run sizes', "parameters")
    write_notebook(
        notebooks,
        "slow.md",
        parameters,
        code(
            f"import os, pathlib, time\ntime.sleep(4)\n{results}.mkdir(parents=True, exist_ok=True)\n"
            f"({results} / 'slow.txt').write_text('slow')"
        ),
    )
    write_notebook(
        notebooks,
        "quick.md",
        parameters,
        code(
            f"import os, pathlib, time\ntime.sleep(1)\n{results}.mkdir(parents=True, exist_ok=True)\n"
            f"({results} / 'quick.txt').write_text('quick')"
        ),
    )
    write_notebook(
        notebooks, "reader.md", parameters, code(f"import os, pathlib\nprint(({results} / 'slow.txt').read_text())")
    )
    (notebooks / "plan.yml").write_text(
        "- {notebook: slow.md, page: slow}\n- {notebook: reader.md, page: reader, reads: [slow]}\n"
        "- {notebook: quick.md, page: quick}\n"
    )
    out = tmp_path / "out"
    executed = plan.run_plan("quick", out, progress=False, jobs=2)
    assert sorted(executed) == ["quick", "reader", "slow"]
    assert executed.index("reader") > executed.index("slow")
    printed = capsys.readouterr().out
    assert "3 pages, 2 at a time" in printed and printed.index("quick: started") < printed.index("reader: started")
    assert json.loads((out / ".slow.stamp").read_text())["wrote"] == ["sub/slow.txt"]
    assert json.loads((out / ".quick.stamp").read_text())["wrote"] == ["sub/quick.txt"]
    assert json.loads((out / ".reader.stamp").read_text())["wrote"] == []
    assert plan.run_plan("quick", out, progress=False, jobs=2) == []  # all up to date


def test_pages_run_in_workers_are_up_to_date_for_the_plan_that_ran_them(notebooks, tmp_path):
    """A setting registered in the plan's process only (as a user's own model is) is part of every key;
    the spawned workers do not know it, so the key they stamp must come from the plan's process."""
    registered(quick("mnist_lr"), "plan_only_here_quick")
    parameters = code('profile = "default"  # run sizes', "parameters")
    write_notebook(notebooks, "tiny.md", parameters, code("print('ran')"))
    (notebooks / "plan.yml").write_text("- {notebook: tiny.md, page: tiny}\n- {notebook: tiny.md, page: tiny_b}\n")
    out = tmp_path / "out"
    assert sorted(plan.run_plan("quick", out, progress=False, jobs=2)) == ["tiny", "tiny_b"]
    assert plan.run_plan("quick", out, progress=False, jobs=2) == []  # both up to date


def test_jobs_must_be_a_positive_whole_number(notebooks):
    for jobs in (0, -1, 1.5, True):
        with pytest.raises(InvalidParameterError, match="jobs"):
            plan.run_plan("quick", jobs=jobs)


def test_a_kernel_notes_the_files_it_writes_and_not_those_it_only_reads(tmp_path):
    """What ``track_writes`` sees: pandas' writes, an atomic write's rename, not a read; in a fresh interpreter
    (an audit hook cannot be removed once added)."""
    (tmp_path / "read.txt").write_text("x")
    script = (
        "import os, pathlib, tempfile, pandas\n"
        "from dahp.book.records import kernel_facts, track_writes\n"
        "track_writes(); track_writes()\n"
        "folder = pathlib.Path(os.environ['FOLDER'])\n"
        "(folder / 'read.txt').read_text()\n"
        "pandas.DataFrame({'a': [1]}).to_csv(folder / 'table.csv')\n"
        "fd, tmp = tempfile.mkstemp(dir=folder)\n"
        "os.close(fd)\n"
        "os.replace(tmp, folder / 'atomic.json')\n"
        "print(sorted(pathlib.Path(p).name for p in kernel_facts()['wrote'] if pathlib.Path(p).parent == folder))\n"
    )
    env = {**os.environ, "FOLDER": str(tmp_path), "PYTHONPATH": str(plan.ROOT / "lib")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    names = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert "table.csv" in names and "atomic.json" in names and "read.txt" not in names


def test_a_failing_page_among_parallel_ones_is_named_and_the_others_finish(notebooks, tmp_path):
    parameters = code('profile = "default"  # run sizes', "parameters")
    write_notebook(notebooks, "broken.md", parameters, code("raise ValueError('on purpose')"))
    write_notebook(notebooks, "fine.md", parameters, code("import time\ntime.sleep(2)\nprint('done')"))
    (notebooks / "plan.yml").write_text(
        "- {notebook: broken.md, page: broken}\n- {notebook: fine.md, page: fine}\n- {notebook: fine.md, page: fine_never}\n"
    )
    out = tmp_path / "out"
    with pytest.raises(plan.NotebookFailed, match=r"broken\.md.*ValueError: on purpose"):
        plan.run_plan("quick", out, progress=False, jobs=2)
    assert (out / "fine.ipynb").exists()  # the page running beside it finished
    assert not (out / "fine_never.ipynb").exists()  # no page starts after a failure


def test_the_build_report_bounds_the_memory_of_pages_that_ran_side_by_side(tmp_path):
    from dahp.book.records import build_report, largest_simultaneous_peak, record_path

    # a: 0-10 s, 3 GB; b: 2-5 s, 2 GB; c: 5-12 s, 1 GB (b ended as c started); d: 20-21 s alone, 4 GB
    runs = [(0.0, 10.0, 3), (2.0, 5.0, 2), (5.0, 12.0, 1), (20.0, 21.0, 4)]
    assert largest_simultaneous_peak(runs) == (5, 2)  # a with b; not a + b + c, b had ended
    assert largest_simultaneous_peak([(0.0, 1.0, 7)]) == (7, 1)
    # records round their times: a page that "ends" 0.05 s after the next one in its slot starts did not overlap it
    assert largest_simultaneous_peak([(0.0, 78.25, 3), (0.2, 169.4, 3), (78.2, 129.7, 2)]) == (6, 2)
    for page, (start, end, peak) in zip("abcd", runs):
        record = {"profile": "quick", "wall_s": end - start, "started_unix": start, "jobs": 2, "finished": "t"}
        record_path(tmp_path, page).write_text(json.dumps(record | {"peak_rss_bytes": peak * 10**9}))
    report = build_report(tmp_path, list("abcd"))
    assert "from the first start to the last end took 21.0 s" in report
    assert "held at most 5.00 GB together (the largest sum of the peaks of 2 overlapping pages" in report
    assert "largest peak memory of one page: 4.00 GB" in report
