"""``lvmlt predict`` and ``lvmlt export``.

``predict`` takes a run directory or an exported bundle; a bundle is run without importing
torch (the command line builds only this module's parsers for it, see :func:`lvmlt.cli.main`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lvmlt.deploy.predictor import ADAPT_METHODS


def is_bundle(path: str) -> bool:
    from lvmlt.deploy.bundle import MANIFEST

    return (Path(path) / MANIFEST).is_file()


def open_model(target: str, engine: str = "auto", device: str = "auto", log=None):
    """A run directory or a bundle, opened as a model for the predictor."""
    if is_bundle(target):
        from lvmlt.deploy.bundle import BundleModel

        return BundleModel(target, engine=engine, log=log)
    from lvmlt.deploy.run_model import RunModel

    return RunModel(target, device=device, engine=engine, log=log)


def cmd_predict(args) -> int:
    from lvmlt.deploy.predictor import predict

    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    model = open_model(args.model, engine=args.engine, device=args.device, log=log)
    res = predict(
        model, args.images, list_file=args.from_file, out=args.out, topk=args.topk, adapt_method=args.adapt,
        strict=args.strict, batch_size=args.batch_size, progress=not args.quiet, force_adapt=args.force_adapt,
    )
    where = f" -> {args.out}" if args.out else ""
    print(f"classified {res['classified']} of {res['images']} images in {res['seconds']:.1f} s "
          f"({res['images_per_second']:.2f} img/s){where}", file=sys.stderr)
    if res["skipped"]:
        print(f"skipped {res['skipped']} unreadable images (status 'error: ...' in the output)", file=sys.stderr)
    if "prior" in res:
        print(f"estimated class mix ({args.adapt}): {describe_mix(model.spec, res['prior'])}", file=sys.stderr)
        for w in res.get("adapt_info", {}).get("warnings", []):
            print(f"lvmlt: warning: {w}", file=sys.stderr)
    return 0


#: Classes listed by name in the printed mix; beyond this the largest shares and the groups' totals.
MIX_SHOWN = 10


def describe_mix(spec: dict, prior) -> str:
    """The estimated class mix in one short line: every class up to :data:`MIX_SHOWN` classes,
    else the largest shares and each group's total (the full mix is in the ``.prior.json``)."""
    from lvmlt.deploy.rows import class_groups

    classes = spec["classes"]
    if len(classes) <= MIX_SHOWN:
        return ", ".join(f"{c} {p:.3f}" for c, p in zip(classes, prior, strict=True))
    order = sorted(range(len(classes)), key=lambda k: -prior[k])[:MIX_SHOWN // 2]
    groups: dict[str, float] = {}
    for g, p in zip(class_groups(spec), prior, strict=True):
        groups[g] = groups.get(g, 0.0) + float(p)
    top = ", ".join(f"{classes[k]} {prior[k]:.3f}" for k in order)
    per_group = ", ".join(f"{g} {p:.3f}" for g, p in groups.items())
    return f"largest {top}; by group {per_group} ({len(classes)} classes; all in the .prior.json with --out)"


def cmd_export(args) -> int:
    from lvmlt.deploy.export import export_bundle

    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    res = export_bundle(args.run_dir, args.out, check_images=args.check_images, overwrite=args.overwrite, log=log)
    encoder = "" if res["encoder_cosine"] is None else f", encoder graph cosine {res['encoder_cosine']:.6f}"
    print(f"bundle written to {res['bundle']}: {res['files']} files, {res['megabytes']:.1f} MB; "
          f"checked on {res['checked']} validation images against torch: classifier graph largest probability "
          f"difference {res['max_prob_diff']:.2e}{encoder}; end to end "
          f"same top-1 {res['same_top1']}, largest probability difference {res['end_to_end_prob_diff']:.2e}")
    return 0


def cmd_serve(args) -> int:
    from lvmlt.deploy.serve import serve

    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    model = open_model(args.model, engine=args.engine, device=args.device, log=log)
    log(f"serving {args.model} on http://{args.host}:{args.port} (POST /predict, GET /health, GET /metadata)")
    serve(model, host=args.host, port=args.port, topk=args.topk, batch_size=args.batch_size,
          batch_wait_ms=args.batch_wait_ms, allow_root=args.allow_root)
    return 0


def add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="serve a trained run or an exported bundle over HTTP (POST /predict)")
    s.add_argument("model", help="a run directory or an exported bundle")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    s.add_argument("--topk", type=int, default=3, help="classes listed per image (default 3)")
    s.add_argument("--batch-size", type=int, default=32, help="images per model call across requests (default 32)")
    s.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long an image waits for others to share its model call (default 10 ms)")
    s.add_argument("--allow-root", help="a folder whose images JSON requests may name by path (default: none)")
    s.add_argument("--engine", default="auto", help="encoder engine: auto | torch | openvino | onnxruntime")
    s.add_argument("--device", default="auto", help="a run's device: auto | cpu | cuda")
    s.set_defaults(func=cmd_serve)


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify images with a trained run or an exported bundle")
    p.add_argument("model", help="a run directory (made by lvmlt train) or a bundle (made by lvmlt export)")
    p.add_argument("images", nargs="*", help="image files and folders (folders are walked recursively)")
    p.add_argument("--from", dest="from_file", metavar="LIST", help="a text file with one image path per line")
    p.add_argument("--topk", type=int, default=3, help="classes listed per image (default 3)")
    p.add_argument("--out", help="write rows to a .csv or .jsonl file (default: a table on stdout)")
    p.add_argument("--adapt", choices=ADAPT_METHODS, default="none",
                   help="re-weight to the class mix estimated on these images (needs enough of them)")
    p.add_argument("--force-adapt", action="store_true", help="adapt even below the batch size where it pays")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    p.add_argument("--batch-size", type=int, default=0,
                   help="images per classifier call (default 0: 256 at 48 px, fewer for larger inputs)")
    p.add_argument("--engine", default="auto", help="encoder engine: auto | torch | openvino | onnxruntime")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (run directories only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    p.set_defaults(func=cmd_predict)


def add_parsers(sub) -> None:
    add_predict_parser(sub)
    add_serve_parser(sub)
    e = sub.add_parser("export", help="write a run's encoder and classifier as ONNX, with its data, into a bundle")
    e.add_argument("run_dir", help="a finished run directory")
    e.add_argument("--out", required=True, help="the bundle directory to create")
    e.add_argument("--check-images", type=int, default=8,
                   help="validation images the bundle is checked on against torch (default 8)")
    e.add_argument("--overwrite", action="store_true", help="replace a bundle already in --out")
    e.add_argument("--quiet", action="store_true", help="no status lines")
    e.set_defaults(func=cmd_export)
