"""The README's own-model example runs as written, in a fresh Python session."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dahp.selection.rules import DEFAULT_BUDGET

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- readme-example: begin -->", "<!-- readme-example: end -->"


def readme_example() -> str:
    """The one fenced Python block between the README's example markers, exactly as a reader copies it."""
    text = (ROOT / "README.md").read_text()
    assert text.count(BEGIN) == text.count(END) == 1
    between = text.split(BEGIN, 1)[1].split(END, 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", between, flags=re.M | re.S)
    assert len(blocks) == 1, "one python block between the markers"
    return blocks[0]


@pytest.mark.slow
def test_readme_example_runs_in_a_fresh_session(tmp_path):
    code = readme_example()
    assert "correct_class_margin" in code and "AttributionTask(" in code and "retrain=" in code
    # a fresh interpreter, started in an empty folder: nothing of this test session leaks into it
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    no_retraining = re.fullmatch(r"no retraining: median_xi_recipe λ = (\S+)", lines[0])
    # the adaptive default: 3 models first, more while the pick is uncertain, never above max_retrainings (8)
    budget = re.fullmatch(rf"with (\d+) retrainings: {DEFAULT_BUDGET}_8 λ = (\S+)", lines[2])
    assert no_retraining and budget, run.stdout
    assert 3 <= int(budget[1]) <= 8
    assert float(no_retraining[1]) > 0 and float(budget[2]) > 0
