"""The experiment commands: ``lvmlt ablate`` (the paper's ablation grid for one baseline),
``lvmlt baselines`` (each baseline alone and with the SAM features and prototype loss) and
``lvmlt compare`` (the other systems side by side). Their rows are the tables of
:mod:`lvmlt.experiments.recipes`, run by :mod:`lvmlt.experiments.grid`."""

from __future__ import annotations

import shlex


def cmd_ablate(args) -> int:
    from lvmlt.config import load_config
    from lvmlt.experiments.ablate import VARIANTS, run_grid
    from lvmlt.experiments.tables import write_tables

    base = load_config(args.config, args.overrides)
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    seeds = parse_seeds(args.seeds)
    results = run_grid(
        base, variants, seeds, args.out, args.tag, progress=not args.quiet, train_missing=not args.no_train
    )
    tag = args.tag or f"{base.data.name}-{base.loss.name}"
    prefix = args.results or f"{args.out}/{tag}"
    md = write_tables(
        _kept(args, results, prefix, variants, seeds),
        prefix,
        title=f"{tag}: test accuracy (%), mean ± std over seeds {args.seeds}",
        note=args.note or "",
    )
    print(md)
    return 0


def parse_seeds(text: str) -> tuple[int, ...]:
    """``--seeds 0,1,2`` as a tuple of ints (a UserError naming the bad entry otherwise)."""
    from lvmlt.errors import UserError

    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise UserError(f"--seeds {text!r} is not a comma-separated list of integers", fix="write e.g. --seeds 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r} names a seed twice", fix="list each seed once")
    return seeds


_SEEDS_HELP = "comma-separated seeds, one run per variant and seed (default 0,1,2)"


def add_parsers(sub) -> None:
    a = sub.add_parser("ablate", help="run the paper's ablation grid over seeds")
    a.add_argument("--config", help="base YAML config (the baseline)")
    a.add_argument("overrides", nargs="*", help="key=value overrides of the base config")
    a.add_argument("--variants", help="comma-separated subset of: " + ", ".join(_variant_names()))
    a.add_argument("--seeds", default="0,1,2", help=_SEEDS_HELP)
    a.add_argument("--out", default="runs/ablate", help="directory for the runs")
    a.add_argument("--tag", default="", help="name prefix of the runs and tables")
    a.add_argument("--results", help="path prefix of the .md/.csv tables (default: OUT/TAG)")
    _table_options(a)
    a.set_defaults(func=cmd_ablate)

    b = sub.add_parser("baselines", help="each baseline alone and with +SAM features + L_proto, over seeds")
    b.add_argument("--config", help="base YAML config (with fusion.store for the +SAM rows)")
    b.add_argument("overrides", nargs="*", help="key=value overrides of the base config")
    b.add_argument("--rows", help="comma-separated subset of: " + ", ".join(_row_names()))
    b.add_argument("--seeds", default="0,1,2", help=_SEEDS_HELP.replace("variant", "row"))
    b.add_argument("--out", default="runs/ablate", help="directory for the runs (shared with lvmlt ablate)")
    b.add_argument("--tag", default="", help="name prefix of the runs (default: the dataset name)")
    b.add_argument("--stage-epochs", type=int, help="epochs of cRT / LWS (default: half the first stage)")
    b.add_argument("--results", help="path prefix of the .md/.csv tables (default: OUT/TAG-baselines)")
    _table_options(b)
    b.set_defaults(func=cmd_baselines)
    add_compare_parser(sub)


def _table_options(p) -> None:
    """The options ``lvmlt ablate`` and ``lvmlt baselines`` share for writing their tables."""
    p.add_argument("--note", help="a paragraph written under the title (e.g. the command)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (one line per finished run)")
    p.add_argument("--no-train", action="store_true", help="only tabulate the runs that have finished")
    p.add_argument("--keep", action="store_true",
                   help="keep the (row, seed) lines of the table's existing CSV; runs here fill what it lacks")


def cmd_baselines(args) -> int:
    from lvmlt.config import load_config
    from lvmlt.experiments.baselines import run_rows, table_keys
    from lvmlt.experiments.recipes import DEFAULT_BASELINES
    from lvmlt.experiments.tables import write_tables

    base = load_config(args.config, args.overrides)
    rows = args.rows.split(",") if args.rows else None
    seeds = parse_seeds(args.seeds)
    results = run_rows(
        base,
        rows,
        seeds,
        args.out,
        args.tag,
        args.stage_epochs,
        progress=not args.quiet,
        train_missing=not args.no_train,
    )
    tag = args.tag or base.data.name
    title = f"{tag} baselines: test accuracy (%), mean ± std over seeds {args.seeds}"
    prefix = args.results or f"{args.out}/{tag}-baselines"
    results = _kept(args, results, prefix, table_keys(rows or list(DEFAULT_BASELINES)), seeds)
    print(write_tables(results, prefix, title=title, note=args.note or ""))
    return 0


def _kept(args, results: dict, prefix: str, order: list[str], seeds: tuple[int, ...]) -> dict:
    """``results`` under the table's earlier CSV lines with ``--keep``."""
    if not args.keep:
        return results
    from pathlib import Path

    from lvmlt.experiments.tables import keep_committed

    return keep_committed(results, Path(prefix).with_suffix(".csv"), order, seeds)


def _row_names():
    from lvmlt.experiments.recipes import BASELINES

    return [r.label for r in BASELINES]


def _variant_names():
    from lvmlt.experiments.recipes import ABLATION

    return [r.label for r in ABLATION]


# ----------------------------------------------------------------------------- lvmlt compare


def add_compare_parser(sub) -> None:
    """The ``compare`` subcommand's options."""
    from lvmlt.experiments.recipes import COMPARE_OUT as DEFAULT_OUT
    from lvmlt.experiments.recipes import COMPARE_RUNS as DEFAULT_RUNS
    from lvmlt.experiments.recipes import GROUP_NAMES as GROUPS
    from lvmlt.experiments.recipes import IFL_EPOCHS

    p = sub.add_parser(
        "compare",
        help="the other systems side by side over seeds (probe, synthetic features, SciLT, IFL)",
        description="Compare the other systems (linear probe, synthetic latent features, SciLT fusion, IFL) "
        "on one dataset over seeds, each an ordinary run; writes markdown + CSV tables.",
    )
    p.add_argument("--dataset", required=True, help="a built-in dataset (elpv, fashion-mnist-lt, mnist-lt, ...)")
    p.add_argument("--store", help="feature store made by `lvmlt extract` for this dataset (levels for SciLT)")
    p.add_argument(
        "--systems",
        help=f"comma-separated groups from {', '.join(GROUPS)} (default: every group the data allows: "
        "probe,synthetic; scilt when the store holds its levels; ifl when the dataset has a GLT protocol)",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; one run per system and seed (default 0,1,2)")
    p.add_argument("--config", help="base YAML config (data, model and optim sections for the IFL CNN runs)")
    p.add_argument(
        "--out", default=DEFAULT_OUT,
        help=f"folder for <dataset>.md and .csv (default {DEFAULT_OUT}; the committed tables are in "
        "benchmarks/results/other-systems, written there only when you pass it)",
    )  # fmt: skip
    p.add_argument("--runs-dir", default=DEFAULT_RUNS, help="folder for the runs (finished ones are reused)")
    p.add_argument(
        "--ifl-epochs", type=int, default=IFL_EPOCHS,
        help=f"epochs of the GLT CNN runs (default {IFL_EPOCHS}; an optim.epochs=N override sets them too)",
    )  # fmt: skip
    p.add_argument("--note", default="", help="a sentence added after the store's provenance (e.g. its extraction time)")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads of every run (default 1: the tiny heads gain nothing from more)",
    )  # fmt: skip
    p.add_argument("--progress", action="store_true", help="show each run's progress bars (default: one line per run)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of every run (win over the recipes)")
    p.set_defaults(func=cmd_compare)


def command_line(args) -> str:
    """The command that reproduces ``args``, written into the report."""
    from lvmlt.experiments.compare import DEFAULT_OUT, DEFAULT_RUNS, IFL_EPOCHS

    parts = ["lvmlt", "compare", "--dataset", args.dataset]
    for flag, value, default in (
        ("--store", args.store, None),
        ("--systems", args.systems, None),
        ("--seeds", args.seeds, "0,1,2"),
        ("--config", args.config, None),
        ("--out", args.out, DEFAULT_OUT),
        ("--runs-dir", args.runs_dir, DEFAULT_RUNS),
        ("--ifl-epochs", args.ifl_epochs, IFL_EPOCHS),
        ("--note", args.note, ""),
    ):
        if value != default:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(a) for a in [*parts, *(args.overrides or [])])


def cmd_compare(args) -> int:
    import torch

    from lvmlt.experiments.compare import run_comparison

    torch.set_num_threads(args.threads)
    md = run_comparison(
        args.dataset,
        args.store,
        seeds=parse_seeds(args.seeds),
        systems=args.systems.split(",") if args.systems else None,
        config=args.config,
        overrides=args.overrides,
        out=args.out,
        runs_dir=args.runs_dir,
        ifl_epochs=args.ifl_epochs,
        command=command_line(args),
        extraction_note=args.note,
        progress=args.progress,
    )
    print(md)
    return 0
