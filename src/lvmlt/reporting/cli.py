"""``lvmlt report RUN_DIR [RUN_DIR ...] --out report.html``: a self-contained HTML report."""

from __future__ import annotations


def cmd_report(args) -> int:
    from pathlib import Path

    from lvmlt.reporting.page import write_report

    result = write_report([Path(p) for p in args.run_dirs], Path(args.out), title=args.title)
    print(result["table"])
    for run, notes in result["notes"].items():
        print(f"note: {run}: {'; '.join(notes)}")
    print(f"report: {result['html'].resolve()}")
    print(f"tables: {result['markdown'].resolve()}")
    return 0


def add_parsers(sub) -> None:
    r = sub.add_parser(
        "report",
        help="one HTML page (figures embedded, opens offline) and markdown tables for finished runs",
        description="Runs whose configs differ only by seed are grouped into one row with mean ± std.",
    )
    r.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR",
        help="directories made by `lvmlt train`, or folders holding them (runs/demo: every run in it)",
    )  # fmt: skip
    r.add_argument(
        "--out", default="runs/report.html",
        help="HTML file to write (default runs/report.html); the tables go to the same name with .md",
    )  # fmt: skip
    r.add_argument("--title", default=None, help="page title (default: lvmlt report (N runs))")
    r.set_defaults(func=cmd_report)
