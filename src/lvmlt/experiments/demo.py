"""``make demo``: the main job on the built-in ELPV solar-cell data.

1. Extracts frozen MobileSAM features (v_SAM and the PCA map) of every ELPV image into a
   feature store, once: a second run finds the store complete and reuses it (after
   checking its provenance against the data and settings).
2. Trains baselines and the paper's full method on top of each (SAM map + latent fusion +
   prototype loss), one seed each.
3. Prints the many / medium / few / all table and writes an HTML report of the runs.
4. Exports the run with the best validation mean class accuracy as a bundle (ONNX graphs
   and plain data, checked against torch) and classifies a handful of test images from the
   bundle alone.

What it trains is a *plan* (:data:`PLANS`), the richest that fits ``--budget`` minutes on the
machine at hand by rates measured at the start (:mod:`lvmlt.experiments.estimate`): the full
plan (cross-entropy and balanced softmax, each alone and with the SAM features, features at
256 px), else the balanced-softmax pair alone (the baseline whose rare classes score at all
at this budget) on features at 192 px, else that pair at half the epochs. Every plan keeps
a table of the SAM features' effect on the medium and few classes. Finished runs are
reused; an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

SAM = ("fusion.map=true", "fusion.latent=true", "proto.enabled=true")
BS = ("loss.name=balanced_softmax",)
#: The demo's runs: table label -> (run directory name under --out, overrides).
RUNS = {
    "CE": ("ce", ()),
    "CE + SAM features + L_proto": ("ce+sam_features+l_proto", SAM),
    "balanced softmax": ("balanced_softmax", BS),
    "balanced softmax + SAM features + L_proto": ("balanced_softmax+sam_features+l_proto", (*BS, *SAM)),
}


@dataclass(frozen=True)
class Plan:
    """What the demo trains: its runs (keys of :data:`RUNS`), the SAM input side of the
    features, and overrides of every run with the suffix that keeps their run directories
    apart from the full plan's. The run exported is chosen on validation after training."""

    name: str
    runs: tuple[str, ...]
    img_size: int
    overrides: tuple[str, ...] = ()
    suffix: str = ""


_BS_PAIR = ("balanced softmax", "balanced softmax + SAM features + L_proto")
#: Richest first. The lighter plans train the balanced-softmax pair, the one whose medium and
#: few classes score at this budget (CE's score 0), on features at 192 px: the encoder runs 2x
#: faster there than at 256 px, and the SAM features kept their gain on ELPV (3 seeds, float32
#: training as on AVX2-only CPUs; mean class accuracy without -> with SAM: 42.0 -> 47.4 at
#: 8 epochs, 33.6 -> 39.3 at 4, against 44.2 and 37.7 with 256 px features; 128 px lost it).
#: The measurement and its script: benchmarks/results/demo-plans/.
PLANS = (
    Plan("full", tuple(RUNS), 256),
    Plan("balanced softmax pair", _BS_PAIR, 192, suffix="-f192"),
    Plan("balanced softmax pair, 4 epochs", _BS_PAIR, 192, ("optim.epochs=4",), "-f192-e4"),
)


def main(argv=None) -> int:
    """The demo; a user mistake (missing weights, say) or a disk fault is one line, as in ``lvmlt``."""
    from lvmlt.errors import guarded

    return guarded(_demo, argv, resume_hint="finished runs and features are kept, run it again to continue")


def _demo(argv) -> int:
    ap = argparse.ArgumentParser(description="lvmlt demo on ELPV")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[3] / "configs" / "elpv.yaml"))
    ap.add_argument("--budget", type=float, default=10.0,
                    help="minutes: the richest plan expected to fit runs (0 = the full plan, however long)")
    ap.add_argument("--plan", choices=[p.name for p in PLANS], help="run this plan whatever its expected time")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = ap.parse_args(argv)

    import torch

    from lvmlt.config import load_config
    from lvmlt.data import build_data
    from lvmlt.evaluation.metrics import SUMMARY_COLUMNS, format_table
    from lvmlt.experiments.grid import run_result
    from lvmlt.features import extract
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
    plan, cfgs, extract_cfg, store_dir, expected = choose_plan(args, bundle, out)
    extract(bundle, extract_cfg, store_dir)
    print(f"features ready in {store_dir} ({time.time() - t0:.0f} s so far)")

    rows, dirs, val = {}, {}, {}
    for name, cfg in cfgs.items():
        print(f"\n== {name}")
        m = run_result(cfg, bundle=bundle)  # finished runs are read, a killed one resumes
        rows[name], dirs[name], val[name] = m["test"], run_dir_for(cfg), m["val"]["mean_class_acc"]
    th = next(iter(rows.values()))["thresholds"]
    print(
        f"\nELPV test split ({len(bundle.test)} images; many > {th['many']}, few < {th['few']} training images; "
        "checkpoints chosen on validation):"
    )
    print(format_table(rows, columns=SUMMARY_COLUMNS))
    print(
        "One seed per run: read medium and few with care. They rest on a few classes' test images and moved by "
        "10-20 points from seed to seed in our 3-seed runs (benchmarks/results/demo-plans/, ablation-elpv-*.md)."
    )
    report = write_report(list(dirs.values()), out / "report.html", title="lvmlt demo: ELPV")
    print(f"\nreport: {report['html']}")
    best = max(val, key=val.get)  # chosen on validation, never on test
    print(f"\nexporting {best}: the best validation mean class accuracy of the plan ({val[best]:.2f})")
    classify_from_bundle(dirs[best], out / "bundle", bundle.test)
    wall = time.time() - t0
    print(f"\nwall time: {_minutes(wall)} (expected {_minutes(sum(expected.values()))})")
    print_full_recipes()
    return 0


def plan_configs(plan: Plan, args, out: Path):
    """The run configs, extraction settings and store directory of ``plan``."""
    from lvmlt.config import load_config
    from lvmlt.features import ExtractConfig

    store_dir = out / "features" / f"elpv-mobilesam-{plan.img_size}"
    cfgs = {}
    for name in plan.runs:
        run_name, extra = RUNS[name]
        cfgs[name] = load_config(args.config, [
            *args.overrides, *extra, *plan.overrides, f"fusion.store={store_dir}", f"out_dir={out}",
            f"run_name={run_name}{plan.suffix}",
        ])  # fmt: skip
    return cfgs, ExtractConfig(encoder="mobilesam", img_size=plan.img_size), store_dir


def choose_plan(args, bundle, out: Path):
    """The plan to run (``--plan``, else the first of :data:`PLANS` expected within ``--budget``,
    else the last), with its configs, extraction settings, store and expected seconds; says
    which and why on one line or two."""
    t0 = time.time()
    budget = args.budget * 60
    forced = next((p for p in PLANS if p.name == args.plan), None)
    tried, rates = [], Rates(bundle)
    for plan in [forced] if forced else PLANS:
        cfgs, extract_cfg, store_dir = plan_configs(plan, args, out)
        expected = expected_seconds(cfgs, bundle, store_dir, extract_cfg, out / "bundle", rates)
        tried.append((plan, sum(expected.values())))
        if forced or budget <= 0 or sum(expected.values()) <= budget:
            break
    total = sum(expected.values())
    parts = ", ".join(f"{k} {_minutes(v)}" for k, v in expected.items() if v > 0) or "finished work is reused"
    epochs = next(iter(cfgs.values())).optim.epochs
    print(f"plan: {plan.name} ({len(plan.runs)} runs of {epochs} epochs, features at {plan.img_size} px); expected on this machine: "
          f"about {_minutes(total)} ({parts}; from rates measured in {time.time() - t0:.0f} s)")
    if len(tried) > 1:
        richer = "; ".join(f"{p.name} about {_minutes(t)}" for p, t in tried[:-1])
        print(f"  richer plans did not fit --budget {args.budget:g} min here ({richer}): "
              f"--plan NAME runs one anyway, --budget 0 the full plan")
    return plan, cfgs, extract_cfg, store_dir, expected


#: The committed table of the full recipes on ELPV (benchmarks/strong_summary.py), in a checkout.
RECIPES_TABLE = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "strong" / "elpv.csv"
#: Its rows the demo quotes: what longer, richer training reaches, next to the demo's 8 epochs.
QUOTED = ("old baseline", "recipe chosen", "MobileSAM")


def print_full_recipes(table: Path = RECIPES_TABLE) -> None:
    """What the full recipes reach on ELPV and cost per run, from the committed table (nothing
    when lvmlt runs outside a checkout that has it)."""
    import csv

    try:
        with table.open() as f:
            rows = [r for r in csv.DictReader(f) if r["system"].startswith(QUOTED) and int(r["n"]) > 0]
    except (OSError, KeyError, ValueError):
        return
    if not rows:
        return
    print(f"\nWhat the full recipes reach on ELPV's test split (mean ± std over n seeds; {table.name} in "
          "benchmarks/results/strong/, where the CPU is named):")
    for r in rows:
        print(f"  {r['system']}: top-1 {r['top1']}, mean class {r['mean_class_acc']}, few {r['few']} "
              f"(n={r['n']}; {r['minutes']} min per run)")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Rates:
    """The rates the demo's estimate needs, each measured once, when first asked for
    (:mod:`lvmlt.experiments.estimate`): every plan's total is then arithmetic on them."""

    def __init__(self, bundle):
        self.bundle, self._encoder, self._decode, self._steps = bundle, {}, None, {}

    def encoder(self, extract_cfg):
        """The encoder's :class:`~lvmlt.experiments.estimate.EncoderRates`; the extraction reuses the engine."""
        from lvmlt.encoders import build_encoder
        from lvmlt.experiments import estimate

        key = (extract_cfg.encoder, extract_cfg.img_size)
        if key not in self._encoder:
            encoder = build_encoder(extract_cfg.encoder, extract_cfg.img_size)
            self._encoder[key] = estimate.encoder_seconds(encoder, extract_cfg, self.bundle.train)
        return self._encoder[key]

    def decode(self) -> tuple[float, float]:
        """Seconds per training image, the first time and again."""
        from lvmlt.experiments import estimate

        if self._decode is None:
            self._decode = estimate.decode_seconds(self.bundle.train)
        return self._decode

    def step_key(self, cfg) -> str:
        """What one training step's time depends on: the model's shapes and whether the run
        checks its memory layout (then it trains in the faster one)."""
        from lvmlt.config import to_dict
        from lvmlt.training import layout

        d = to_dict(cfg)
        fusion = {k: v for k, v in d["fusion"].items() if k != "store"}  # the model's shapes, not where its inputs live
        measured = layout.measures(cfg, len(self.bundle.train), "cpu")
        return repr((d["system"], d["model"], fusion, d["data"]["image_size"], d["data"]["batch_size"], measured))

    def step(self, cfg) -> float:
        """Seconds of one training step of ``cfg``'s model."""
        from lvmlt.experiments import estimate

        key = self.step_key(cfg)
        if key not in self._steps:
            n_train = len(self.bundle.train)
            self._steps[key] = estimate.step_seconds(cfg, self.bundle.num_classes, {"sam_vec": 256}, n_train=n_train)
        return self._steps[key]


def expected_seconds(cfgs: dict, bundle, store_dir: Path, extract_cfg, bundle_dir: Path, rates: Rates) -> dict:
    """What the demo's parts will cost here, from ``rates``: the extraction (unless the store is
    complete), each unfinished run, the export."""
    from lvmlt import rundir
    from lvmlt.deploy.bundle import MANIFEST
    from lvmlt.experiments import estimate
    from lvmlt.features.store import read_manifest
    from lvmlt.training import layout

    parts = {"features": 0.0, "training": 0.0, "export": 0.0}
    todo = [c for c in cfgs.values() if not (Path(c.out_dir) / c.run_name / rundir.METRICS).is_file()]
    store_done = store_dir.is_dir() and (read_manifest(store_dir) or {}).get("complete", False)
    enc = None if store_done and (bundle_dir / MANIFEST).is_file() else rates.encoder(extract_cfg)
    if not store_done:
        n = sum(len(s) for s in bundle.splits().values())  # the PCA sample's outputs are kept, not encoded twice
        parts["features"] = enc.setup + n * enc.per_image
    checked = set()  # model shapes whose layout check is counted (once each; a pass is about a step)
    for c in todo:
        parts["training"] += estimate.run_seconds(c, bundle, rates.step(c), rates.decode())
        key = rates.step_key(c)
        if key not in checked and layout.measures(c, len(bundle.train), "cpu"):
            checked.add(key)
            parts["training"] += layout.PASSES * rates.step(c)
    if not (bundle_dir / MANIFEST).is_file():
        parts["export"] = EXPORT_BUILDS * enc.build + EXPORT_IMAGES * enc.per_image
    return parts


# The export traces the encoder and the classifier to ONNX (about one engine build) and checks
# the bundle on 8 validation images by three paths (torch float32, ONNX Runtime, twice each).
EXPORT_BUILDS, EXPORT_IMAGES = 1.0, 48


def classify_from_bundle(run_dir: Path, bundle_dir: Path, test, per_class: int = 1) -> None:
    """Export ``run_dir`` (once) and classify ``per_class`` test images of each class from the
    bundle alone; print path, true class, prediction, probability and its group."""
    import numpy as np

    from lvmlt.deploy.bundle import MANIFEST, BundleModel
    from lvmlt.deploy.export import export_bundle
    from lvmlt.deploy.predictor import class_groups, predict, softmax

    # The bundle remembers which run it came from beside it, so a different choice re-exports.
    source = bundle_dir.with_name(bundle_dir.name + ".from")
    fresh = (bundle_dir / MANIFEST).is_file() and source.is_file() and source.read_text().strip() == run_dir.name
    if not fresh:
        res = export_bundle(run_dir, bundle_dir, overwrite=(bundle_dir / MANIFEST).is_file(), log=lambda s: None)
        source.write_text(run_dir.name + "\n")
        print(f"\nexported {run_dir} to {bundle_dir} ({res['megabytes']:.0f} MB; on {res['checked']} validation "
              f"images against torch: same top-1 {res['same_top1']}, largest probability difference "
              f"{res['end_to_end_prob_diff']:.1e} end to end, {res['max_prob_diff']:.1e} of the classifier graph)")
    model = BundleModel(bundle_dir, log=lambda s: None)
    names, groups = model.spec["classes"], class_groups(model.spec)
    picks = [i for c in range(len(names)) for i in np.flatnonzero(test.labels == c)[:per_class].tolist()]
    sources = [(test.ids[i], (lambda i=i: test.load(i))) for i in picks]
    res = predict(model, sources=sources, progress=False, show=False)
    probs = softmax(res["logits"])
    rows = [("image", "true", "predicted", "probability", "group")]
    for i, p in zip(picks, probs, strict=True):
        k = int(p.argmax())
        rows.append((test.ids[i], names[test.labels[i]], names[k], f"{p[k]:.3f}", groups[k]))
    widths = [max(len(r[j]) for r in rows) for j in range(5)]
    print(f"\nclassified from the bundle alone ({model.engine}, no torch needed): one test image per class")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


if __name__ == "__main__":
    raise SystemExit(main())
