"""Command line: ``python -m dahp <command>``.

- ``settings``      list the registered settings and whether their data is present
- ``train``         train (or load) the full-data model of a setting and report accuracy per epoch
- ``ground-truth``  retrain the LDS subset models of a setting (cached, resumable); ``--executor dask|submitit``
                    fans the chunks out, ``--chunks I/N`` trains one slice (a Slurm array task)
- ``grid``          LDS over a 1-D or 2-D hyperparameter grid of one attributor, saved under data/results/cli/
                    (``--ground-truth dattri``: judged by dattri's published benchmark, nothing retrained)
- ``selection``     the ξ selection against every baseline on the paper's cases, saved under data/results/cli/
- ``select``        choose λ for one setting and attributor from the trained model (no retraining)
- ``fixtures``      write tiny files in the real formats of the large settings (marked as fixture data)
- ``run-plan``      execute the book's notebooks

Every computing command takes ``--device cpu|cuda|cuda:N`` (default: ``$DAHP_DEVICE``, else CUDA
when present, else the CPU); a bad name fails before anything is computed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from dahp.core.config import GroundTruthConfig, InvalidParameterError
from dahp.core.device import DEVICE_ENV, resolve_device
from dahp.data.settings import MissingDataError, available_settings, get_setting
from dahp.training.executors import EXECUTOR_ENV


def _cmd_settings(_: argparse.Namespace) -> None:
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
    for attributor in ("iffim", "trak"):
        study = selection_study(
            f"selection_{attributor}", cases, attributor, 33, progress=True, profile="cli", device=args.device
        )
        path = study.save(results_dir("cli"))
        with pd_options():
            print(study.summary().to_string(index=False))
        print(f"wrote {path}", flush=True)


def _cmd_select(args: argparse.Namespace) -> None:
    from dahp.experiments.cases import setting_selection

    if args.attributor not in ("iffim", "trak"):
        raise InvalidParameterError("attributor", args.attributor, ["iffim", "trak"])
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
    from dahp.book.plan import NotebookFailed, run_plan

    if args.device_given:
        # the notebooks' ``device = None`` resolves through the environment their kernels inherit
        os.environ[DEVICE_ENV] = str(args.device)
    try:
        run_plan(args.profile, only=args.only or None, force=args.force, progress=not args.no_progress)
    except NotebookFailed as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def pd_options():
    """Compact float printing for tables on the terminal."""
    import pandas as pd

    return pd.option_context("display.float_format", "{:.4g}".format, "display.width", 160)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dahp``."""
    defaults = GroundTruthConfig()
    parser = argparse.ArgumentParser(
        prog="python -m dahp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    computing = argparse.ArgumentParser(add_help=False)
    computing.add_argument(
        "--device",
        default=None,
        help=f"where the long computations run: cpu, cuda or cuda:N (default: ${DEVICE_ENV}, else CUDA when "
        "present, else the CPU); results do not depend on it beyond rounding",
    )

    commands.add_parser("settings", help="list the settings").set_defaults(run=_cmd_settings)

    train = commands.add_parser("train", parents=[computing], help="train the full-data model of a setting")
    train.add_argument("--setting", required=True)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(run=_cmd_train)

    truth = commands.add_parser("ground-truth", parents=[computing], help="retrain the LDS subset models of a setting")
    truth.add_argument("--setting", required=True)
    truth.add_argument("--alpha", type=float, default=defaults.alpha)
    truth.add_argument("--n-models", type=int, default=defaults.n_models)
    truth.add_argument("--seed", type=int, default=defaults.seed)
    truth.add_argument("--models-per-chunk", type=int, default=defaults.models_per_chunk)
    truth.add_argument(
        "--executor",
        default=None,
        help=f"where the chunks train: inline (default), dask (a LocalCluster here), dask://HOST:PORT (a running "
        f"scheduler) or submitit (Slurm job array, local processes off a cluster); default ${EXECUTOR_ENV}",
    )
    truth.add_argument(
        "--chunks",
        default=None,
        metavar="I/N",
        help="train only slice I of N of the chunks (1 <= I <= N; chunk k is in slice k mod N + 1), e.g. "
        "--chunks $SLURM_ARRAY_TASK_ID/N in a Slurm array --array=1-N; then run once without --chunks to gather",
    )
    truth.set_defaults(run=_cmd_ground_truth)

    grid = commands.add_parser("grid", parents=[computing], help="LDS over a hyperparameter grid of one attributor")
    grid.add_argument("--setting", required=True)
    grid.add_argument("--attributor", required=True)
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
        help="a hyperparameter held at a value other than its default",
    )
    grid.add_argument("--split", default="test", choices=["val", "test"])
    grid.add_argument("--queries", type=int, default=None, help="evaluate on this many evenly spaced queries")
    grid.add_argument("--alpha", type=float, default=defaults.alpha)
    grid.add_argument("--n-models", type=int, default=defaults.n_models)
    grid.add_argument("--seed", type=int, default=defaults.seed)
    grid.add_argument(
        "--ground-truth",
        default=defaults.source,
        metavar="SOURCE",
        help="retrain (ours, default) or dattri (dattri's published benchmark under $DAHP_DATTRI_DIR, default "
        "data/dattri: its full-data models are attributed on its points and nothing is trained; see data/README.md)",
    )
    grid.set_defaults(run=_cmd_grid)

    selection = commands.add_parser(
        "selection", parents=[computing], help="the ξ rule against every baseline -> data/results/cli/selection_*"
    )
    selection.add_argument("--setting", action="append", default=[], help="restrict to these settings")
    selection.set_defaults(run=_cmd_selection)

    select = commands.add_parser("select", parents=[computing], help="choose λ from the trained model by the ξ rule")
    select.add_argument("--setting", required=True)
    select.add_argument("--attributor", required=True, choices=["iffim", "trak"])
    select.add_argument("--projection-dim", type=int, default=None)
    select.add_argument("--ensemble-size", type=int, default=None)
    select.add_argument("--threshold", type=float, default=0.5)
    select.set_defaults(run=_cmd_select)

    plan = commands.add_parser(
        "run-plan", parents=[computing], help="execute the book's notebooks (notebooks/plan.yml) with papermill"
    )
    plan.add_argument("--profile", default="default", help="quick, default or paper")
    plan.add_argument("--only", action="append", default=[], help="run only this page (repeatable)")
    plan.add_argument("--force", action="store_true", help="re-execute pages that are up to date")
    plan.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars: neither papermill's per-cell bar nor the notebooks' own",
    )
    plan.set_defaults(run=_cmd_run_plan)

    fixtures = commands.add_parser(
        "fixtures", help="write tiny files in the real formats of the large settings (marked as fixture data)"
    )
    fixtures.add_argument("--out", required=True, help="the data directory to write into (then DAHP_DATA_DIR=OUT)")
    fixtures.add_argument("--setting", action="append", default=None, help="only this setting (repeatable)")
    fixtures.set_defaults(run=_cmd_fixtures)
    return parser


def _cmd_fixtures(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dahp.data.fixtures import write_fixtures

    written = write_fixtures(Path(args.out), args.setting)
    print(f"fixture data for {', '.join(written)} written to {args.out} (marked in its DAHP_FIXTURE_DATA.json)")
    print(f"use it with: DAHP_DATA_DIR={args.out} make book PROFILE=quick")


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input prints one line and exits with status 2."""
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "device"):
            # resolved (and a bad name refused) before the command computes anything
            args.device_given = args.device is not None
            args.device = resolve_device(args.device)
        if hasattr(args, "executor"):
            from dahp.training.executors import resolve_executor
            from dahp.training.ground_truth import ChunkSlice

            resolve_executor(args.executor)
            if args.chunks is not None:
                ChunkSlice.parse(args.chunks)
        args.run(args)
    except (InvalidParameterError, MissingDataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
