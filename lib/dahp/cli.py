"""The ``dahp`` command line (also ``python -m dahp``): one subcommand per job.

``dahp --help`` lists the subcommands, ``dahp COMMAND --help`` their options with defaults and
choices. The parser imports nothing heavy -- its choices come from light modules
(:mod:`dahp.data.names`, :mod:`dahp.attribution.names`, :mod:`dahp.experiments.profiles`,
:mod:`dahp.data.fixtures`) -- so ``--help`` answers without loading torch; each command imports what
it computes with when it runs. Every argument is checked by :func:`check_arguments` before any
command computes anything.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any

from dahp._version import __version__
from dahp.attribution.names import ATTRIBUTOR_NAMES, SELECTABLE_ATTRIBUTORS
from dahp.core.config import GROUND_TRUTH_SOURCES, GroundTruthConfig, InvalidParameterError, field_help
from dahp.core.device import DEVICE_ENV, resolve_device
from dahp.data.fixtures import FIXTURE_MODULES
from dahp.data.names import QUERY_SPLITS, SETTING_NAMES
from dahp.experiments.profiles import PROFILES
from dahp.training.executors import EXECUTOR_ENV, check_reachable, resolve_executor

PROG = "dahp"
DESCRIPTION = (
    "Reproduction package of 'Taming Hyperparameter Sensitivity in Data Attribution': train the paper's "
    "settings, retrain their LDS ground truth, sweep an attributor's hyperparameters, choose the "
    "regularization λ by the ξ rule, and execute the book's notebooks."
)
EPILOG = (
    "The computing commands take --device. grid and selection write their tables under data/results/cli/; "
    "the other commands print their results. Bad input is refused, with one line naming the parameter, "
    "its value and what is valid, before anything is computed (exit status 2)."
)


def get_setting(name: str) -> Any:
    """The registered setting ``name`` (the registry imports torch, so it is loaded when a command runs)."""
    from dahp.data.settings import get_setting as registered

    return registered(name)


def _cmd_settings(_: argparse.Namespace) -> None:
    from dahp.data.settings import MissingDataError, available_settings

    for name in available_settings():
        setting = get_setting(name)
        try:
            setting.check_data()
            status = "embedded" if setting.embedded else "data present"
        except MissingDataError:
            status = "data missing"
        print(f"{name:16s} {status:13s} {setting.description}")


def _cmd_train(args: argparse.Namespace) -> None:
    from dahp.training.train import accuracy_many, train_full

    setting = get_setting(args.setting)
    data = setting.data()
    started = time.perf_counter()
    checkpoints = train_full(setting, seed=args.seed, device=args.device)
    seconds = time.perf_counter() - started
    accuracy = accuracy_many(setting, checkpoints.states, data.x_test, data.y_test, device=args.device)
    for epoch, acc in enumerate(accuracy.tolist(), start=1):
        print(f"epoch {epoch:3d}  test accuracy {acc:.4f}")
    print(f"{setting.name}: full-data model, {checkpoints.epochs} checkpoints, {seconds:.1f} s (cache included)")


def _cmd_ground_truth(args: argparse.Namespace) -> None:
    from dahp.training.ground_truth import ChunkSlice, ground_truth, train_chunks
    from dahp.training.train import accuracy_many, train_full

    setting = get_setting(args.setting)
    config = GroundTruthConfig(
        alpha=args.alpha, n_models=args.n_models, seed=args.seed, models_per_chunk=args.models_per_chunk
    )
    if args.chunks is not None:
        # one slice of a job array: train (or find cached) its chunks and stop; the full-data model and
        # the gathering are the last step's, once every slice is done
        report = train_chunks(setting, config, device=args.device, executor=args.executor, chunks=args.chunks)
        print(
            f"{setting.name}: chunks {ChunkSlice.parse(args.chunks)} of {config.n_models} models "
            f"({config.models_per_chunk} per chunk): {len(report.trained)} trained, {len(report.cached)} already "
            f"cached, {report.seconds:.1f} s on {report.executor}"
        )
        return
    data = setting.data()
    checkpoints = train_full(setting, seed=args.seed, device=args.device)
    last = {name: states[-1:] for name, states in checkpoints.states.items()}
    full_acc = accuracy_many(setting, last, data.x_test, data.y_test, device=args.device)
    truth = ground_truth(setting, config, device=args.device, executor=args.executor)
    print(
        f"{setting.name}: n_train={data.n_train}, full-data test accuracy {float(full_acc[0]):.4f} "
        f"(epoch {checkpoints.epochs})"
    )
    print(
        f"{setting.name}: {truth.n_models} subset models (α={config.alpha}, m={truth.subsets.shape[1]}), "
        f"test accuracy {truth.test_accuracy.mean():.4f} ± {truth.test_accuracy.std():.4f}, "
        f"wall time {truth.seconds:.1f} s (cached chunks are not retrained)"
    )


def _cmd_grid(args: argparse.Namespace) -> None:
    from dahp.core.results import results_dir
    from dahp.experiments.grid import make_grid_spec, parse_assignment, parse_values, run_grid

    vary = dict((name, parse_values(values)) for name, values in map(parse_assignment, args.vary))
    fixed = {name: parse_values(values)[0] for name, values in map(parse_assignment, args.fixed)}
    config = GroundTruthConfig(alpha=args.alpha, n_models=args.n_models, seed=args.seed, source=args.ground_truth)
    spec = make_grid_spec(args.setting, args.attributor, vary, fixed, config, args.split, args.queries)
    record = run_grid(spec, profile="cli", device=args.device)
    path = record.save(results_dir("cli"))
    with pd_options():
        print(record.table.drop(columns=["setting", "attributor"]).to_string(index=False))
    if config.source == "dattri":
        from dahp.data.benchmark_folder import protocol_difference

        print(protocol_difference(args.setting))
    print(f"wrote {path}")


def _cmd_selection(args: argparse.Namespace) -> None:
    from dahp.core.results import results_dir
    from dahp.experiments.cases import PAPER_CASES, selection_study

    cases = [(name, proj) for name, proj in PAPER_CASES if get_setting(name).embedded or name in args.setting]
    if args.setting:
        cases = [(name, proj) for name, proj in cases if name in args.setting]
    for attributor in SELECTABLE_ATTRIBUTORS:
        study = selection_study(
            f"selection_{attributor}", cases, attributor, 33, progress=True, profile="cli", device=args.device
        )
        path = study.save(results_dir("cli"))
        with pd_options():
            print(study.summary().to_string(index=False))
        print(f"wrote {path}", flush=True)


def _cmd_select(args: argparse.Namespace) -> None:
    from dahp.experiments.cases import setting_selection

    if args.attributor not in SELECTABLE_ATTRIBUTORS:
        raise InvalidParameterError("attributor", args.attributor, SELECTABLE_ATTRIBUTORS)
    setting = get_setting(args.setting)
    started = time.perf_counter()
    result = setting_selection(
        setting,
        args.attributor,
        args.projection_dim,
        args.ensemble_size,
        args.threshold,
        progress=True,
        device=args.device,
    )
    seconds = time.perf_counter() - started
    print(f"validation queries of {setting.name}, {args.attributor}, proj_dim={args.projection_dim}")
    print(result.summary(curve=True))
    print(f"{seconds:.1f} s")


def _cmd_run_plan(args: argparse.Namespace) -> None:
    from dahp.book.plan import NotebookFailed, default_jobs, run_plan

    if args.device_given:
        # the notebooks' ``device = None`` resolves through the environment their kernels inherit
        os.environ[DEVICE_ENV] = str(args.device)
    try:
        jobs = default_jobs(args.device) if args.jobs is None else args.jobs
        run_plan(args.profile, only=args.only or None, force=args.force, progress=not args.no_progress, jobs=jobs)
    except NotebookFailed as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def pd_options():
    """Compact float printing for tables on the terminal."""
    import pandas as pd

    return pd.option_context("display.float_format", "{:.4g}".format, "display.width", 160)


def plain(text: str) -> str:
    """``text`` without reStructuredText markup (a terminal shows ``x`` and :role:`x` raw): both become x."""
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text).replace("``", "")


def add_listed(parser: argparse.ArgumentParser, flag: str, choices: tuple[str, ...], **kwargs: Any) -> None:
    """An option whose value must be one of ``choices``: the help lists them, and :func:`check_arguments`
    refuses another value with one :class:`InvalidParameterError` like every other bad value (argparse's
    own ``choices`` would answer with its usage text instead)."""
    action = parser.add_argument(flag, **kwargs)
    action.listed = tuple(choices)  # read by HelpFormatter
    parser.set_defaults(listed={**(parser.get_default("listed") or {}), action.dest: action.listed})


class HelpFormatter(argparse.HelpFormatter):
    """Plain help text, every option with its choices and its default.

    A default is appended unless the option is a flag, is required, or its help already has one
    (an option whose default is ``None`` says in words what happens without it).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain(action.help or "")
        listed = getattr(action, "listed", None)
        if listed is not None:
            text += f" (choices: {', '.join(listed)})"
        flag = action.nargs == 0  # store_true, help, version
        if not (flag or action.required or action.default in (None, [], argparse.SUPPRESS) or "(default:" in text):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dahp`` command (imports no module that loads torch)."""
    defaults = GroundTruthConfig()
    config_help = field_help(GroundTruthConfig)
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=parents, formatter_class=HelpFormatter)

    computing = argparse.ArgumentParser(add_help=False)
    computing.add_argument(
        "--device",
        default=None,
        help=f"where the long computations run: cpu, cuda or cuda:N; results agree across devices to rounding "
        f"(default: ${DEVICE_ENV}, else CUDA when present, else the CPU)",
    )
    setting = argparse.ArgumentParser(add_help=False)
    # a setting is checked against the registry when the command runs (so a setting registered by the
    # caller's code works through main() too); the help lists the package's own
    setting_names = ", ".join(SETTING_NAMES)
    setting.add_argument("--setting", required=True, metavar="NAME", help=f"the setting (choices: {setting_names})")
    subsets = argparse.ArgumentParser(add_help=False)  # the LDS ground truth's retrained subset models
    subsets.add_argument("--alpha", type=float, default=defaults.alpha, help=config_help["alpha"])
    subsets.add_argument("--n-models", type=int, default=defaults.n_models, help=config_help["n_models"])
    subsets.add_argument("--seed", type=int, default=defaults.seed, help=config_help["seed"])

    command("settings", "list the settings and whether their data is present", []).set_defaults(run=_cmd_settings)

    train = command(
        "train", "train (or load) the full-data model of a setting; accuracy per epoch", [computing, setting]
    )
    train.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and batch order")
    train.set_defaults(run=_cmd_train, check=_check_train)

    truth = command(
        "ground-truth", "retrain the LDS subset models of a setting (cached, resumable)", [computing, setting, subsets]
    )
    truth.add_argument(
        "--models-per-chunk", type=int, default=defaults.models_per_chunk, help=config_help["models_per_chunk"]
    )
    truth.add_argument(
        "--executor",
        default=None,
        metavar="ENGINE",
        help="where the chunks train: inline, dask (a local cluster), dask://HOST:PORT (a running scheduler, "
        f"checked to answer before anything trains) or submitit (a Slurm job array, local processes off a cluster) "
        f"(default: ${EXECUTOR_ENV}, else inline)",
    )
    truth.add_argument(
        "--chunks",
        default=None,
        metavar="I/N",
        help="train only slice I of N of the chunks (1 <= I <= N; chunk k is in slice k mod N + 1), e.g. "
        "--chunks $SLURM_ARRAY_TASK_ID/N in a Slurm array --array=1-N, then run once without --chunks to gather "
        "(default: all chunks, then gather)",
    )
    truth.set_defaults(run=_cmd_ground_truth, check=_check_ground_truth)

    grid = command(
        "grid",
        "LDS over a 1-D or 2-D hyperparameter grid of one attributor -> data/results/cli/",
        [computing, setting, subsets],
    )
    add_listed(grid, "--attributor", ATTRIBUTOR_NAMES, required=True, metavar="NAME", help="the attributor")
    grid.add_argument(
        "--vary",
        action="append",
        required=True,
        metavar="NAME=VALUES",
        help="a hyperparameter and its values: a,b,c or logspace(lo,hi,n); give once or twice",
    )
    grid.add_argument(
        "--fixed",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a hyperparameter held at a value other than its default (repeatable; default: none)",
    )
    add_listed(
        grid, "--split", QUERY_SPLITS, default="test", metavar="SPLIT", help="the split whose points are the queries"
    )
    grid.add_argument(
        "--queries",
        type=int,
        default=None,
        help="evaluate on this many evenly spaced queries (default: every query of the split)",
    )
    grid.add_argument(  # checked by GroundTruthConfig, whose message names the parameter "source"
        "--ground-truth",
        default=defaults.source,
        metavar="SOURCE",
        help=config_help["source"]
        + f"; with dattri nothing is trained, see data/README.md (choices: {', '.join(GROUND_TRUTH_SOURCES)})",
    )
    grid.set_defaults(run=_cmd_grid, check=_check_grid)

    selection = command(
        "selection",
        "the ξ rule against every baseline on the paper's cases -> data/results/cli/selection_*",
        [computing],
    )
    selection.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only this setting's cases (repeatable; choices: {setting_names}; default: the cases of the "
        "embedded settings)",
    )
    selection.set_defaults(run=_cmd_selection, check=_check_selection)

    select = command(
        "select", "choose λ for one setting and attributor by the ξ rule (no retraining; prints)", [computing, setting]
    )
    add_listed(select, "--attributor", SELECTABLE_ATTRIBUTORS, required=True, metavar="NAME", help="the attributor")
    select.add_argument(
        "--projection-dim",
        type=int,
        default=None,
        help="dimension of the random projection of the gradients (default: none, the full gradients)",
    )
    select.add_argument(
        "--ensemble-size",
        type=int,
        default=None,
        help="TRAK's number of independently trained models (default: TRAK's default; not an IFFIM option)",
    )
    select.add_argument(
        "--threshold", type=float, default=0.5, help="the ξ̄ level Algorithm 1 selects at, in the open interval (0, 1)"
    )
    select.set_defaults(run=_cmd_select, check=_check_select)

    plan = command("run-plan", "execute the book's notebooks (notebooks/plan.yml) with papermill", [computing])
    add_listed(plan, "--profile", tuple(PROFILES), default="default", metavar="PROFILE", help="the run's sizes")
    plan.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PAGE",
        help="run only this page (repeatable; default: every page)",
    )
    plan.add_argument("--force", action="store_true", help="re-execute pages that are up to date")
    plan.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars: neither papermill's per-cell bar nor the notebooks' own",
    )
    plan.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="pages run at once, the cores shared equally (default: 2 on a CPU machine with 2 cores or more, "
        "else 1); with more than one, pages show no bars, only a line when each starts and ends",
    )
    plan.set_defaults(run=_cmd_run_plan)

    fixtures = command(
        "fixtures", "write tiny files in the real formats of the large settings (marked as fixture data)", []
    )
    fixtures.add_argument(
        "--out", required=True, metavar="DIR", help="the data directory to write into (then DAHP_DATA_DIR=DIR)"
    )
    add_listed(
        fixtures,
        "--setting",
        tuple(FIXTURE_MODULES),
        action="append",
        default=None,
        metavar="NAME",
        help="only this setting (repeatable; default: every setting that has fixtures)",
    )
    fixtures.set_defaults(run=_cmd_fixtures)
    return parser


def _check_train(args: argparse.Namespace) -> None:
    if args.seed < 0:
        raise InvalidParameterError("seed", args.seed, "an integer >= 0")
    get_setting(args.setting).check_data()


def _check_ground_truth(args: argparse.Namespace) -> None:
    from dahp.training.ground_truth import ChunkSlice

    GroundTruthConfig(alpha=args.alpha, n_models=args.n_models, seed=args.seed, models_per_chunk=args.models_per_chunk)
    check_reachable(resolve_executor(args.executor))
    if args.chunks is not None:
        ChunkSlice.parse(args.chunks)
    get_setting(args.setting).check_data()


def _check_grid(args: argparse.Namespace) -> None:
    get_setting(args.setting)
    GroundTruthConfig(alpha=args.alpha, n_models=args.n_models, seed=args.seed, source=args.ground_truth)
    if args.queries is not None and args.queries < 1:
        raise InvalidParameterError("queries", args.queries, "an integer >= 1")


def _check_selection(args: argparse.Namespace) -> None:
    for name in args.setting:
        get_setting(name)


def _check_select(args: argparse.Namespace) -> None:
    from dahp.attribution.attributors import make_params
    from dahp.selection.algorithm import check_threshold

    check_threshold(args.threshold)
    values = {"proj_dim": args.projection_dim}
    if args.ensemble_size is not None:
        values["ensemble_size"] = args.ensemble_size
    make_params(args.attributor, **values)
    get_setting(args.setting).check_data()


def check_arguments(args: argparse.Namespace) -> None:
    """Check every argument of the parsed command before it computes anything.

    Checks the options with a list of choices, resolves ``--device`` (a bad name, or CUDA where there
    is none, is refused), then runs the command's own check: value ranges, the hyperparameter record,
    the executor (a Dask scheduler must answer), the setting's data. Raises :class:`InvalidParameterError` or ``MissingDataError``.
    """
    for dest, allowed in getattr(args, "listed", {}).items():
        given = getattr(args, dest)
        for value in given if isinstance(given, list) else [given]:
            if value is not None and value not in allowed:
                raise InvalidParameterError(dest, value, allowed)
    if hasattr(args, "device"):
        args.device_given = args.device is not None
        args.device = resolve_device(args.device)
    if hasattr(args, "check"):
        args.check(args)


def _cmd_fixtures(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dahp.data.fixtures import write_fixtures

    written = write_fixtures(Path(args.out), args.setting)
    print(f"fixture data for {', '.join(written)} written to {args.out} (marked in its DAHP_FIXTURE_DATA.json)")
    print(f"use it with: DAHP_DATA_DIR={args.out} make book PROFILE=quick")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dahp``: the exit status (2 for bad input, after one line saying what is wrong)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help, --version (0) or a usage error argparse has reported (2)
        return 0 if exit.code is None else int(exit.code)
    from dahp.data.split import MissingDataError

    try:
        check_arguments(args)
        args.run(args)
    except (InvalidParameterError, MissingDataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
