"""``lvmlt calibrate RUN_DIR --method mapls|mlls|bbse``: post-hoc label-shift correction."""

from __future__ import annotations

import argparse

#: Calibrators registered by a module loaded on first use (lvmlt.calibration.posthoc).
LAZY_METHODS = ("logit_adjust",)


def cmd_calibrate(args) -> int:
    import yaml

    from lvmlt.calibration.run import calibrate_run
    from lvmlt.errors import UserError
    from lvmlt.evaluation.metrics import SUMMARY_COLUMNS, format_table

    opts = {}
    for o in args.options:
        if "=" not in o:
            raise UserError(f"option {o!r} is not key=value", fix="write e.g. lam=0.5")
        k, v = o.split("=", 1)
        opts[k] = yaml.safe_load(v)
    from lvmlt import rundir

    entry = calibrate_run(args.run_dir, args.method, source_prior=args.source_prior, bcts=args.bcts, **opts)
    before = rundir.read_metrics(args.run_dir)["test"]
    rows = {"uncalibrated": before, f"+{args.method}" + (" (BCTS)" if entry["bcts"] else ""): entry["test"]}
    print(format_table(rows, columns=SUMMARY_COLUMNS))
    print(f"estimated test prior L1 error: {entry['prior_l1_error']:.3f} (written to metrics.json)")
    return 0


def add_parsers(sub) -> None:
    from lvmlt.calibration.label_shift import CALIBRATORS, SOURCE_PRIOR_MODES

    c = sub.add_parser(
        "calibrate",
        help="post-hoc label-shift correction of a finished run",
        description="Re-weight a finished run's saved test predictions for the test split's class mix, "
        "estimated from its unlabelled logits (or fixed, for pc and logit_adjust), and score them. The "
        "result goes into metrics.json under calibrated.METHOD (METHOD+bcts with BCTS); running the same "
        "method again replaces that entry.",
    )
    c.add_argument("run_dir", help="a run directory made by `lvmlt train` (it holds predictions.npz)")
    c.add_argument(
        # logit_adjust registers itself with its module (which imports torch) when a run is calibrated
        "--method", default="mapls", choices=sorted({*CALIBRATORS.names(), *LAZY_METHODS}),
        help="mapls (MAP EM, the default; option lam=...), mlls (plain EM), bbse (validation confusion "
        "matrix), pc (a balanced target: the prior divided out), logit_adjust (post-hoc logit adjustment; "
        "option tau=..., default 1)",
    )  # fmt: skip
    c.add_argument(
        "--source-prior",
        default="train",
        choices=SOURCE_PRIOR_MODES,
        help="the prior the model's posteriors reflect: train (the default, training class frequencies: "
        "a CE run), uniform (pass it for a run trained with a balanced loss or sampler: balanced_softmax, "
        "logit_adjusted, ProCo), soft (the mean validation softmax); ignored with BCTS, which uses the "
        "validation label histogram",
    )
    c.add_argument(
        "--bcts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bias-corrected temperature scaling on the validation split first (Alexandari et al. 2020); "
        "default: on for mapls, mlls and bbse, off for pc and logit_adjust",
    )
    c.add_argument("options", nargs="*", help="estimator options as key=value (e.g. lam=0.5)")
    c.set_defaults(func=cmd_calibrate)
