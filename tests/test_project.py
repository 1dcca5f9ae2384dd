"""Set-up facts a fresh machine relies on: ranges in pyproject.toml, the exact versions in one
constraints file that make and conda install with."""

import functools
import operator
import re
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import dahp

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] + functools.reduce(operator.iadd, project["optional-dependencies"].values(), [])
    return [Requirement(text) for text in texts]


def _pins() -> dict[str, str]:
    """constraints.txt as name -> version; every line that is not a comment must be one exact pin."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
            assert match, f"not a pin: {line!r}"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_pyproject_declares_ranges_and_constraints_pin_each_of_them_inside_the_range():
    pins = _pins()
    for requirement in _requirements():
        assert not any(s.operator in ("==", "===") for s in requirement.specifier), f"{requirement} is a pin"
        assert requirement.specifier, f"{requirement} has no range"
        pinned = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(pinned, prereleases=True), (str(requirement), pinned)
    assert pins["torch"].endswith("+cpu")  # the CPU build; the pin admits no other


def test_constraints_are_the_versions_of_this_environment():
    # the book is tested with what constraints.txt says: the environment running the tests holds exactly that
    differ = {}
    for name, version in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            differ[name] = (version, installed)
    assert not differ, f"pinned vs installed (python tools/constraints.py rewrites the file): {differ}"


def test_make_and_conda_install_under_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt -e '.[test,book,large,cluster]'" in makefile
    # make leaves the torch index to pip's configuration by default (a local wheel directory here and in
    # CI); conda users elsewhere get PyTorch's CPU index, where the +cpu build of the pin lives
    assert re.search(r"^TORCH_INDEX \?=$", makefile, flags=re.M)
    torch_index = "https://download.pytorch.org/whl/cpu"
    text = (ROOT / "environment.yml").read_text()
    pip_lines = re.findall(r"^\s+- (.+)$", text.split("- pip:", 1)[1], flags=re.M)
    assert pip_lines == [f"--extra-index-url {torch_index}", "-c constraints.txt", "-e .[test,book,large,cluster]"]
    conda_packages = re.findall(r"^  - (\S+)$", text.split("dependencies:", 1)[1].split("- pip:", 1)[0], flags=re.M)
    assert set(conda_packages) <= {"python=3.11", "pip", "make"}


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_citation_cites_the_package_and_the_paper_as_the_bibliography_does():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert citation["type"] == "software" and citation["license"] == project["license"]
    assert citation["version"] == dahp.__version__
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(citation["date-released"]))
    assert [a["name"] for a in citation["authors"]] == [a["name"] for a in project["authors"]]
    # no address of a repository that does not exist, here or on the book's pages
    assert not {"repository-code", "url", "repository"} & set(citation)
    assert "repository:" not in (ROOT / "_config.yml").read_text()
    bib = (ROOT / "book" / "references.bib").read_text()
    entry = re.search(r"@inproceedings\{taming2025,(.*?)\n\}", bib, flags=re.S)[1]
    field = dict(re.findall(r"(\w+)\s*=\s*\{(.*)\},?\n", entry + "\n"))
    paper = citation["preferred-citation"]
    assert paper["title"] == field["title"] and str(paper["year"]) == field["year"]
    assert paper["collection-title"] == field["booktitle"]
    authors = [f"{a['family-names']}, {a['given-names']}" for a in paper["authors"]]
    assert authors == field["author"].split(" and ")
