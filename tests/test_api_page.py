"""The book's API reference: it covers the public names of ``dahp`` and builds without warnings."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dahp

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "book" / "api.md"


def test_every_public_name_is_in_the_reference():
    documented = set(re.findall(r"^\.\. auto\w+:: (\S+)", API.read_text(), flags=re.M))
    missing = [f"{module}.{name}" for name, module in dahp._PUBLIC.items() if f"{module}.{name}" not in documented]
    assert not missing, f"public names without an entry in book/api.md: {missing}"
    assert "- file: book/api" in (ROOT / "_toc.yml").read_text()


@pytest.mark.slow
def test_reference_page_builds_warning_free(tmp_path):
    # a book of three pages with the real configuration: the reference, the bibliography it needs, a root
    book = tmp_path / "site"
    (book / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", book / "_config.yml")
    for name in ("api.md", "bibliography.md", "references.bib"):
        shutil.copy(ROOT / "book" / name, book / "book" / name)
    shutil.copytree(ROOT / "book" / "_static", book / "book" / "_static")
    (book / "book" / "intro.md").write_text("# Root\n\nThe reference alone.\n")
    toc = "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/api\n  - file: book/bibliography\n"
    (book / "_toc.yml").write_text(toc)
    command = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(book), "-W", "-n", "--keep-going"]
    build = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    page = (book / "_build" / "html" / "book" / "api.html").read_text()
    text = re.sub(r"<[^>]+>", "", page)
    assert "select_regularization" in text and "learn_group_weights" in text and "resolve_executor" in text
    assert "``" not in text and ":mod:" not in text and ":func:" not in text  # roles rendered, not shown raw
