"""The ``dahp`` command line: conventions (prog, --version, help with defaults and choices, no markup),
a --help that loads nothing heavy, and bad arguments refused before anything is computed."""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import dahp
from dahp.attribution import attributors
from dahp.attribution.names import ATTRIBUTOR_NAMES, SELECTABLE_ATTRIBUTORS
from dahp.cli import build_parser, main
from dahp.data.names import QUERY_SPLITS, SETTING_NAMES
from dahp.selection import rules, selector
from dahp.training import ground_truth as gt_module
from dahp.training.executors import Executor, check_reachable

#: modules whose import would make --help slow (torch alone takes seconds)
HEAVY = ("torch", "numpy", "pandas", "scipy", "dattri", "transformers", "dask", "distributed", "submitit")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options():
    """(command, action) for every option of every subcommand, help and version excluded."""
    for name, sub in _subcommands(build_parser()).items():
        for action in sub._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                yield name, sub, action


def test_light_name_lists_equal_the_registries():
    # in a fresh interpreter: tests register settings of their own into the same registry
    code = "from dahp.data.settings import available_settings; print(','.join(available_settings()))"
    registered = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert tuple(registered.strip().split(",")) == SETTING_NAMES
    assert QUERY_SPLITS == gt_module.QUERY_SPLITS
    assert ATTRIBUTOR_NAMES == tuple(attributors.ATTRIBUTORS)
    assert SELECTABLE_ATTRIBUTORS == selector.SELECTABLE == rules.ATTRIBUTORS


def test_help_imports_nothing_heavy():
    code = (
        "import sys\nfrom dahp.cli import build_parser\nparser = build_parser()\nparser.format_help()\n"
        "for action in parser._subparsers._group_actions:\n"
        "    for sub in action.choices.values(): sub.format_help()\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not set(HEAVY) & set(loaded.strip().split(","))


def test_prog_and_version(capsys):
    assert build_parser().prog == "dahp"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dahp {dahp.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", dahp.__version__)


def test_every_option_has_help_default_and_choices():
    for command, sub, action in _options():
        formatter = sub._get_formatter()
        text = formatter._expand_help(action) if action.help else ""
        where = f"{command} {action.option_strings}"
        assert text.strip(), f"{where} has no help"
        assert "``" not in text and not re.search(r":[a-z]+:`", text), f"{where}: markup in {text!r}"
        if action.nargs != 0 and not action.required:
            assert "default" in text, f"{where} does not say its default: {text!r}"
        listed = getattr(action, "listed", None)
        if listed is not None:
            assert all(choice in text for choice in listed), f"{where} does not list its choices"
        if action.dest == "setting" and listed is None:  # checked against the registry at run time
            assert all(name in text for name in SETTING_NAMES), f"{where} does not list the settings"
    top = build_parser().format_help()
    assert "``" not in top and ":mod:" not in top and "usage: dahp" in top


def test_threshold_is_refused_before_training(monkeypatch, capsys):
    def must_not_compute(*args, **kwargs):
        raise AssertionError("the attributor ran despite a bad threshold")

    monkeypatch.setattr(attributors, "scorer", must_not_compute)
    for threshold in ("1.5", "0", "-0.1"):
        argv = ["select", "--setting", "mnist_lr", "--attributor", "iffim", "--device", "cpu"]
        assert main([*argv, "--threshold", threshold]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"threshold={float(threshold)!r}" in err and "(0, 1)" in err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed on exit: nothing listens there now


def test_unreachable_dask_scheduler_is_refused_before_training(monkeypatch, capsys):
    def must_not_train(*args, **kwargs):
        raise AssertionError("training started despite an unreachable scheduler")

    monkeypatch.setattr("dahp.training.train.train_full", must_not_train)
    monkeypatch.setattr(gt_module, "train_many", must_not_train)
    address = f"dask://127.0.0.1:{_free_port()}"
    assert main(["ground-truth", "--setting", "mnist_lr", "--device", "cpu", "--executor", address]) == 2
    err = capsys.readouterr().err
    assert "executor" in err and address in err and "running Dask scheduler" in err


def test_check_reachable_accepts_a_listening_address():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_reachable(Executor("dask", f"tcp://127.0.0.1:{port}"))  # no error
    check_reachable(Executor("dask"))  # a local cluster has no address to probe
    check_reachable(Executor("inline"))


@pytest.mark.parametrize(
    "argv, named",
    [
        (
            ["grid", "--setting", "mnist_lr", "--attributor", "trak", "--vary", "proj_dim=8", "--queries", "0"],
            "queries",
        ),
        (["train", "--setting", "mnist_lr", "--seed", "-1"], "seed"),
        (["select", "--setting", "mnist_lr", "--attributor", "iffim", "--projection-dim", "0"], "proj_dim"),
        (["selection", "--setting", "mnist_lr", "--setting", "nope"], "setting"),
        (
            ["grid", "--setting", "mnist_lr", "--attributor", "trak", "--vary", "proj_dim=8", "--split", "train"],
            "split",
        ),
        (["grid", "--setting", "mnist_lr", "--attributor", "trac", "--vary", "proj_dim=8"], "attributor"),
        (["select", "--setting", "mnist_lr", "--attributor", "grad_dot"], "attributor"),
        (["run-plan", "--profile", "huge"], "profile"),
        (["fixtures", "--out", "somewhere", "--setting", "mnist_lr"], "setting"),
    ],
)
def test_other_bad_arguments_are_refused_in_one_line(argv, named, monkeypatch, capsys):
    def must_not_compute(*args, **kwargs):
        raise AssertionError("computation started despite bad input")

    monkeypatch.setattr("dahp.training.train.train_full", must_not_compute)
    monkeypatch.setattr(attributors, "scorer", must_not_compute)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"invalid {named}=" in err


def test_console_script_and_module_agree():
    script = Path(sys.executable).with_name("dahp")  # installed by pip from [project.scripts]
    assert script.exists(), "the dahp console script is not installed beside this interpreter"
    outputs = [
        subprocess.run([*command, "--version"], capture_output=True, text=True, check=True).stdout
        for command in ([sys.executable, "-m", "dahp"], [str(script)])
    ]
    assert outputs[0] == outputs[1] == f"dahp {dahp.__version__}\n"
