"""The package as pip sees it: a wheel with ranges (not pins), its data files, and an install that
keeps the torch an environment already has.

Everything runs offline: the wheel is built from this working tree with this environment's
setuptools, and pip resolves against a throw-away environment whose installed packages are
metadata-only stand-ins (a ``*.dist-info`` folder each), so no real torch is copied or downloaded.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

import dahp

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: the version of the stand-in torch wheel offered to pip (what it would upgrade to, if it upgraded)
OFFERED_TORCH = "2.13.0"


def _pip(*args: str, python: Path | None = None) -> subprocess.CompletedProcess:
    prefix = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    if python is not None:
        prefix += ["--python", str(python)]
    # without PYTHONPATH: a dahp on it (the working tree's lib/) would count as installed
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    return subprocess.run([*prefix, *args], capture_output=True, text=True, check=True, timeout=300, env=env)


def _dist_info(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A metadata-only installed distribution: what pip's resolver reads of an installed package."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        *(f"Requires-Dist: {r}" for r in requires),
    ]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


def _stub_wheel(folder: Path, name: str, version: str) -> Path:
    """A pure-Python wheel holding only ``name``'s metadata (a stand-in pip may choose to install)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """This working tree's wheel (built without network) and a stand-in torch wheel, in one folder."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    source = tmp_path_factory.mktemp("source")  # a copy: setuptools writes its egg-info beside the sources
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "lib", source / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(folder), str(source))
    _stub_wheel(folder, "torch", OFFERED_TORCH)
    return folder


def _dahp_wheel(wheelhouse: Path) -> Path:
    return next(wheelhouse.glob("dahp-*.whl"))


def test_wheel_declares_ranges_and_ships_its_data(wheelhouse):
    with zipfile.ZipFile(_dahp_wheel(wheelhouse)) as wheel:
        names = set(wheel.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_string(wheel.read(info).decode())
    assert {"dahp/py.typed", "dahp/core/cache_versions.json", "dahp/cli.py"} <= names
    assert meta["Version"] == dahp.__version__
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    assert f"dahp-{dahp.__version__}.dist-info/licenses/LICENSE" in names
    requirements = [Requirement(text) for text in meta.get_all("Requires-Dist")]
    core = {canonicalize_name(r.name): r for r in requirements if r.marker is None}
    extras = {r.marker and str(r.marker).split('"')[1] for r in requirements if r.marker is not None}
    assert {"large", "cluster", "book", "test"} <= extras
    # no exact pins for the library; the heavy optional packages only in extras
    assert not [r for r in requirements if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not {"transformers", "tokenizers", "dask", "distributed", "submitit", "jupyter-book"} & set(core)
    torch = core["torch"].specifier
    assert Version(metadata.version("torch").split("+")[0]) in torch  # the book's torch is in the range
    assert Version("2.12.0") in torch and Version("3.0.0") not in torch
    assert SpecifierSet(meta["Requires-Python"]).contains("3.11")


def _environment(tmp_path: Path, torch_version: str) -> Path:
    """A throw-away environment holding stand-ins of dahp's core requirements, torch at ``torch_version``.

    Each other requirement stands in at the version this environment has (checked to be in its range).
    """
    folder = tmp_path / f"env-torch-{torch_version}"
    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    for text in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(text)
        if requirement.name == "torch":
            version = torch_version
        else:
            version = metadata.version(requirement.name)
            assert requirement.specifier.contains(version, prereleases=True), (text, version)
        _dist_info(site, requirement.name, version)
    return python


def _would_install(python: Path, wheelhouse: Path, tmp_path: Path) -> dict[str, str]:
    """name -> version of what ``pip install dahp`` would install into ``python``'s environment."""
    report = tmp_path / "report.json"
    _pip(
        "install",
        "--dry-run",
        "--no-index",
        "--find-links",
        str(wheelhouse),
        "--report",
        str(report),
        str(_dahp_wheel(wheelhouse)),
        python=python,
    )
    installs = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def test_installing_keeps_an_installed_torch_in_the_range(wheelhouse, tmp_path):
    python = _environment(tmp_path, "2.12.0")
    # pip is offered a torch (OFFERED_TORCH) and does not take it: the installed 2.12.0 satisfies the range
    assert _would_install(python, wheelhouse, tmp_path) == {"dahp": dahp.__version__}


def test_a_torch_outside_the_range_is_replaced(wheelhouse, tmp_path):
    # the counterpart: the same environment with a torch the range excludes gets the offered one
    python = _environment(tmp_path, "1.13.1")
    assert _would_install(python, wheelhouse, tmp_path) == {"dahp": dahp.__version__, "torch": OFFERED_TORCH}


def test_the_installed_wheel_imports_with_this_environments_torch(wheelhouse, tmp_path):
    target = tmp_path / "target"
    _pip("install", "--no-deps", "--no-index", "--target", str(target), str(_dahp_wheel(wheelhouse)))
    code = (
        "import dahp, torch\nfrom dahp import select_regularization\n"
        "print(dahp.__file__); print(torch.__version__); print(select_regularization.__module__)"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    where, torch_version, module = out.stdout.split()
    assert Path(where).is_relative_to(target)  # the wheel's copy, not the working tree's
    assert torch_version == metadata.version("torch") and module == "dahp.selection.selector"


#: the optional packages of each extra but [test]; the library below dahp.book must import without them
EXTRA_MODULES = (
    "transformers", "tokenizers",  # [large] (its pretty_midi and mido come with dattri anyway)
    "dask", "distributed", "submitit",  # [cluster]
    "jupyter_book", "jupytext", "papermill", "seaborn", "matplotlib",  # [book]
)  # fmt: skip


def test_every_module_but_the_books_imports_without_the_extras():
    code = f"""
import importlib, importlib.abc, pkgutil, sys, warnings
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRA_MODULES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: an extra)")
sys.meta_path.insert(0, Missing())
import dahp
warnings.simplefilter("ignore", DeprecationWarning)  # the old module paths alias with a warning
names = [m.name for m in pkgutil.walk_packages(dahp.__path__, "dahp.") if not m.name.startswith("dahp.book")]
for name in names:
    importlib.import_module(name)
from dahp import select_regularization, learn_group_weights, get_setting
print(len(names))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) > 30  # the walk found the package's modules
