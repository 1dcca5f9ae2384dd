"""Set-up facts a fresh machine relies on: one source of pinned dependencies."""

import functools
import operator
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dependencies_are_pinned_once_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + functools.reduce(
        operator.iadd, project["optional-dependencies"].values(), []
    )
    assert "torch==2.13.0" in requirements  # the CPU wheel on disk; anything else pulls CUDA builds
    assert "dattri==0.3.0" in requirements  # later dattri changes the TRAK constructor
    unpinned = [r for r in requirements if "==" not in r]
    assert unpinned == []


def test_environment_yml_installs_the_project_instead_of_repeating_pins():
    text = (ROOT / "environment.yml").read_text()
    pip_lines = re.findall(r"^\s+- (.+)$", text.split("- pip:", 1)[1], flags=re.M)
    assert pip_lines == ["-e .[test,book]"]
    conda_packages = re.findall(r"^  - (\S+)$", text.split("dependencies:", 1)[1].split("- pip:", 1)[0], flags=re.M)
    assert set(conda_packages) <= {"python=3.11", "pip", "make"}


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
