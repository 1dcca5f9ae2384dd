"""Fixture data: tiny files in exactly the real formats of the settings whose data cannot ship.

Each dataset module writes its own fixture (``write_fixture(root)``: pickled CIFAR batches, raw
WikiText lines with a tiny GPT-2 checkpoint and tokenizer, MIDI files in MAESTRO's layout).
:func:`write_fixtures` writes them into one data directory and records which settings it wrote
in :data:`MARKER`, so that every page and the reproduction status can tell fixture data from
the real files: a result on fixture data shows that the pipeline runs end to end on the real
formats and measures nothing about the paper (``Setting.data_source`` returns ``"fixture"``).

``python -m dahp fixtures --out DIR`` writes them; ``DAHP_DATA_DIR=DIR make book PROFILE=quick``
then renders the large settings' pages from them (the book test does so with the MAESTRO and
WikiText-2 fixtures, and runs the Fig 1c page on the CIFAR-2 fixture).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from dahp.core.config import InvalidParameterError

#: The file, at the top of a data directory, that lists the settings whose files are fixtures.
MARKER = "DAHP_FIXTURE_DATA.json"
#: Setting -> the module whose ``write_fixture(root)`` writes its fixture.
FIXTURE_MODULES = {
    "cifar2_resnet9": "dahp.data.cifar",
    "wikitext2_gpt2": "dahp.data.wikitext2",
    "maestro_mt": "dahp.data.maestro",
}
#: What pages print above a result computed on fixture data.
NOTICE = (
    "Fixture data: the files of {settings} under `{root}` are tiny files in the real formats, written by "
    "`python -m dahp fixtures`. The numbers below show that the pipeline runs end to end on those "
    "formats; they are not measurements of the paper's settings and no claim is judged from them."
)


def write_fixtures(root: Path, settings: list[str] | None = None) -> list[str]:
    """Write the fixtures of ``settings`` (default: every setting that has one) under ``root``.

    Returns:
        The settings written, also recorded in ``root / MARKER``.
    """
    settings = list(FIXTURE_MODULES) if settings is None else list(settings)
    for name in settings:
        if name not in FIXTURE_MODULES:
            raise InvalidParameterError("settings", name, list(FIXTURE_MODULES))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in settings:
        importlib.import_module(FIXTURE_MODULES[name]).write_fixture(root)
    written = sorted(set(fixture_settings(root)) | set(settings))
    note = "written by dahp.data.fixtures.write_fixtures: tiny files in the real formats, not the real data"
    (root / MARKER).write_text(json.dumps({"note": note, "settings": written}, indent=1) + "\n")
    return settings


#: Real CIFAR-10 batches hold 10,000 images (about 31 MB); a fixture's hold a handful.
REAL_CIFAR_BATCH_BYTES = 30_000_000
#: GPT-2's vocabulary has 50,257 tokens; the fixture's tokenizer a few hundred.
REAL_GPT2_MIN_VOCAB = 10_000


def _looks_like_fixture(name: str, root: Path) -> bool:
    """Whether the files themselves are fixture-sized, so that copying them without the marker
    cannot pass them off as real data."""
    try:
        if name == "cifar2_resnet9":
            return (root / "cifar-10-batches-py" / "data_batch_1").stat().st_size < REAL_CIFAR_BATCH_BYTES
        if name == "maestro_mt":
            return (root / "maestro-v2.0.0" / "DAHP_FIXTURE_SIZES.json").exists()
        if name == "wikitext2_gpt2":
            return json.loads((root / "gpt2" / "config.json").read_text())["vocab_size"] < REAL_GPT2_MIN_VOCAB
    except (OSError, ValueError, KeyError, TypeError):
        return False  # files missing or unreadable: the loader names what is wrong
    return False


def fixture_settings(root: Path) -> list[str]:
    """The settings whose files under ``root`` are fixtures: named by the marker, or fixture-sized."""
    root = Path(root)
    path = root / MARKER
    marked: list[str] = []
    if path.exists():
        try:
            marked = list(json.loads(path.read_text())["settings"])
        except (ValueError, KeyError, TypeError):
            # a damaged marker must not make fixture files pass for real ones
            marked = list(FIXTURE_MODULES)
    return [name for name in FIXTURE_MODULES if name in marked or _looks_like_fixture(name, root)]
