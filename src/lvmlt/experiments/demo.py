"""``make demo``: the main job on the built-in ELPV solar-cell data.

1. Extracts frozen MobileSAM features (v_SAM and the PCA map) of every ELPV image into a
   feature store, once: a second run finds the store complete and reuses it (after
   checking its provenance against the data and settings).
2. Trains the cross-entropy and balanced-softmax baselines and the paper's full method
   on top of each (SAM map + latent fusion + prototype loss), one seed each.
3. Prints the many / medium / few / all table and writes an HTML report of the runs.

Finished runs are reused; an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SAM = ["fusion.map=true", "fusion.latent=true", "proto.enabled=true"]
RUNS = {
    "CE": [],
    "CE + SAM features + L_proto": SAM,
    "balanced softmax": ["loss.name=balanced_softmax"],
    "balanced softmax + SAM features + L_proto": ["loss.name=balanced_softmax", *SAM],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="lvmlt demo on ELPV")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[3] / "configs" / "elpv.yaml"))
    ap.add_argument("--img-size", type=int, default=256, help="MobileSAM input side for the features")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = ap.parse_args(argv)

    import torch

    from lvmlt.config import load_config
    from lvmlt.data import build_data
    from lvmlt.evaluation.metrics import format_table
    from lvmlt.experiments.ablate import run_result
    from lvmlt.features import ExtractConfig, extract
    from lvmlt.reporting import write_report
    from lvmlt.training.trainer import run_dir_for

    t0 = time.time()
    out = Path(args.out)
    base = load_config(args.config, args.overrides)
    print(
        f"lvmlt demo: ELPV, {base.model.backbone} at {base.data.image_size} px, {base.optim.epochs} epochs, "
        f"{torch.get_num_threads()} threads; runs under {out}/"
    )
    bundle = build_data(base.data)
    store_dir = out / "features" / f"elpv-mobilesam-{args.img_size}"
    extract(bundle, ExtractConfig(encoder="mobilesam", img_size=args.img_size), store_dir)
    print(f"features ready in {store_dir} ({time.time() - t0:.0f} s so far)")

    rows, dirs = {}, []
    for name, extra in RUNS.items():
        slug = name.lower().replace(" + ", "+").replace(" ", "_")
        cfg = load_config(
            args.config,
            [*args.overrides, *extra, f"fusion.store={store_dir}", f"out_dir={out}", f"run_name={slug}"],
        )
        print(f"\n== {name}")
        m = run_result(cfg, bundle=bundle)  # finished runs are read, a killed one resumes
        rows[name], dirs = m["test"], [*dirs, run_dir_for(cfg)]
    th = next(iter(rows.values()))["thresholds"]
    print(
        f"\nELPV test split ({len(bundle.test)} images; many > {th['many']}, few < {th['few']} training images; "
        "checkpoints chosen on validation):"
    )
    print(format_table(rows, columns=("many", "medium", "few", "top1", "mean_class_acc")))
    report = write_report(dirs, out / "report.html", title="lvmlt demo: ELPV")
    print(f"\nreport: {report['html']}\nwall time: {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
