"""Write constraints.txt: the exact versions of this environment's packages that dahp needs.

The closure of the requirements of ``dahp[test,book,large,cluster]`` as this working tree's
pyproject.toml states them (plus the test tools named in EXTRA_TOOLS), walked through the installed
packages' own metadata, each pinned to its installed version. ``make`` installs with ``-c constraints.txt``; run this (``make constraints``) after
changing an installed version on purpose.

    python tools/constraints.py [--out constraints.txt]
"""

from __future__ import annotations

import argparse
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

EXTRAS = ("test", "book", "large", "cluster")
#: test tools not (yet) named in pyproject's test extra
EXTRA_TOOLS = ("pytest-randomly", "import-linter")
HEADER = """\
# The exact versions the book is built and tested with (pins only; the library itself declares ranges
# in pyproject.toml). Written by tools/constraints.py (make constraints) from the environment it ran in:
# every package that dahp[{extras}] and {tools} need, directly or through others.
# torch is the CPU build (+cpu: found through pip's configuration, or the index TORCH_INDEX of the Makefile).
"""


def _applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    """Whether ``requirement`` applies here when its package is installed with ``extras``."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**default_environment(), "extra": extra}) for extra in extras | {""})


def project_requirements(pyproject: Path, extras: tuple[str, ...]) -> list[Requirement]:
    """The requirements of this working tree's pyproject.toml with ``extras`` (not the installed copy's)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def closure(requirements: list[Requirement]) -> dict[str, str]:
    """Installed name -> version of everything ``requirements`` need, walked through installed metadata."""
    pins: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [(r.name, frozenset(r.extras)) for r in requirements if _applies(r, frozenset())]
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), extras)
        if key in done:
            continue
        done.add(key)
        dist = metadata.distribution(name)
        pins[canonicalize_name(dist.metadata["Name"])] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if _applies(requirement, extras):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return pins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="constraints.txt", help="the file to write (default: constraints.txt)")
    args = parser.parse_args()
    requirements = project_requirements(Path(__file__).resolve().parents[1] / "pyproject.toml", EXTRAS)
    pins = closure([*requirements, *map(Requirement, EXTRA_TOOLS)])
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    header = HEADER.format(extras=",".join(EXTRAS), tools=" and ".join(EXTRA_TOOLS))
    with open(args.out, "w") as handle:
        handle.write(header + "\n".join(lines) + "\n")
    print(f"{len(lines)} pins written to {args.out}")


if __name__ == "__main__":
    main()
