"""The ``lvmlt`` command: a small map from subcommand to a plain Python function.

User mistakes (:class:`~lvmlt.errors.UserError`) and operating-system faults (an OSError:
disk full, read-only, permission denied) are printed as one line and exit with status 2;
a traceback means a bug in lvmlt.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys

from lvmlt.errors import UserError, guarded


def cmd_train(args) -> int:
    from lvmlt.config import load_config
    from lvmlt.training.trainer import run_dir_for, train

    overrides = list(args.overrides)
    resume = args.resume
    if isinstance(resume, str) and "=" in resume and not os.path.isdir(resume):
        overrides, resume = [*overrides, resume], True  # `--resume key=value`: an override, not a run
    if args.skip_bad_images:
        overrides.append("data.skip_bad_images=true")
    if isinstance(resume, str):
        cfg = _resumed_config(resume, args.config, overrides)
    else:
        cfg = load_config(args.config, overrides)
    run_dir = run_dir_for(cfg)
    metrics = train(cfg, resume=bool(resume), progress=not args.quiet)
    _print_run(run_dir.name, metrics)
    print(f"run directory: {run_dir}")
    return 0


def _resumed_config(run: str, config: str | None, overrides: list[str]):
    """The config of the run ``--resume RUN`` names (a run directory, or a run name under
    the default out_dir): the run alone says what it was started with."""
    from lvmlt.config import load_config
    from lvmlt.rundir import is_run_dir
    from lvmlt.training.trainer import load_run

    path = run if is_run_dir(run) else os.path.join(load_config(None, []).out_dir, run)
    if config or overrides:
        raise UserError("--resume RUN continues the run with the settings it was started with",
                        fix="drop --config and key=value, or use --resume alone with the original command")
    if not is_run_dir(path):
        raise UserError(f"--resume {run}: no run directory there", fix="pass the directory `lvmlt train` made")
    path = os.path.normpath(path)
    # dataclasses.replace: the saved values are not checked again (config.from_saved).
    return dataclasses.replace(load_run(path), out_dir=os.path.dirname(path) or ".", run_name=os.path.basename(path))


def cmd_evaluate(args) -> int:
    from lvmlt.training.trainer import evaluate_run

    metrics = evaluate_run(args.run_dir, progress=not args.quiet, allow_unfinished=args.allow_unfinished)
    _print_run(args.run_dir, metrics)
    return 0


def _print_run(name: str, metrics: dict) -> None:
    from lvmlt.evaluation.metrics import SUMMARY_COLUMNS, format_table

    t = metrics["test"]["thresholds"]
    print(f"\ntest split (best epoch {metrics['best_epoch'] + 1} chosen on validation; "
          f"many > {t['many']}, few < {t['few']} training images)")
    print(format_table({str(name): metrics["test"]}, columns=SUMMARY_COLUMNS))
    if metrics.get("skipped_images"):
        print(f"skipped {metrics['skipped_images']} unreadable images (listed in bad_images.txt)")


def cmd_check(args) -> int:
    from lvmlt.data.check import check_data, check_target

    bundle = check_target(args.target, args.overrides or [])
    report = check_data(bundle)
    print("\n".join(report.lines(shown=args.show)))
    return 1 if report.unreadable else 0  # what would stop training; the rest is for you to judge


def cmd_datasets(args) -> int:
    from lvmlt.data import format_datasets_table

    print(format_datasets_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lvmlt", description="Long-tailed recognition with frozen SAM-family features")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train and evaluate one run")
    t.add_argument("--config", help="YAML config file (sections data, model, loss, optim, ...)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.05 loss.name=balanced_softmax")
    t.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue a killed run from its last checkpoint: with the original command, or "
                   "--resume RUN_DIR alone (the run says what it was started with)")
    t.add_argument("--skip-bad-images", action="store_true", help="skip and count unreadable images")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="re-evaluate a run's best checkpoint")
    e.add_argument("run_dir", help="a run directory made by lvmlt train")
    e.add_argument("--allow-unfinished", action="store_true",
                   help="score a run that stopped before its last epoch (marked unfinished in metrics.json)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("check", help="read every image of a data set once and list every problem",
                       description="Reads every image of every split once and lists, in one report, the unreadable "
                       "images, duplicates (the same file twice, identical pixels, within and across splits), tiny "
                       "or oddly shaped images and classes with too few validation images. Exit status 1 when an "
                       "image is unreadable (training would stop there), else 0.")
    c.add_argument("target", help="a config file (its data section) or an image folder (train/, val/, test/)")
    c.add_argument("overrides", nargs="*", help="key=value overrides of the data section (data.root=...)")
    c.add_argument("--show", type=int, default=20, help="entries listed per kind of problem (default 20)")
    c.set_defaults(func=cmd_check)

    d = sub.add_parser("datasets", help="list the built-in datasets and their class counts",
                       description="The built-in datasets: classes, split sizes and the training class counts "
                       "(max..min), or how to install the ones missing here.")
    d.set_defaults(func=cmd_datasets)

    for module in COMMAND_MODULES:
        # A module that fails to import is a bug to see, never a subcommand silently gone.
        importlib.import_module(module).add_parsers(sub)
    return p


#: Modules that add their own subcommands with ``add_parsers(subparsers)``.
COMMAND_MODULES = (
    "lvmlt.features.cli",  # extract, weights
    "lvmlt.calibration.cli",  # calibrate
    "lvmlt.experiments.cli",  # ablate, baselines, compare (the other systems side by side)
    "lvmlt.reporting.cli",  # report
    "lvmlt.deploy.cli",  # predict, export, serve
)


def _bundle_parser(argv: list[str]) -> argparse.ArgumentParser | None:
    """``lvmlt predict BUNDLE ...`` gets a parser of its own: the other subcommands' modules
    import torch, and a bundle runs without it."""
    if len(argv) < 2 or argv[0] != "predict":
        return None
    from lvmlt.deploy.cli import add_predict_parser, is_bundle

    if not is_bundle(argv[1]):
        return None
    p = argparse.ArgumentParser(prog="lvmlt")
    add_predict_parser(p.add_subparsers(dest="command", required=True))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _bundle_parser(argv) or build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come before, between or after the options (argparse keeps
    # only one contiguous run of a positional list)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*(args.overrides or []), *extra]
    return guarded(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
