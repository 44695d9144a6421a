"""Side-by-side comparison of the other systems on one dataset, over seeds.

    python -m lvmlt.methods.compare --dataset elpv --store runs/features/elpv-mobilesam256-levels
    python -m lvmlt.methods.compare --dataset fashion-mnist-lt --store runs/features/fashion-mnist-lt-mobilesam256 \
        --systems probe,synthetic

Systems (``--systems``, comma-separated groups):

- ``probe``: linear probe on v_SAM (CE, and LA-CE);
- ``synthetic``: synthetic latent features + linear classifier (Gaussian, and vMF);
- ``scilt``: SciLT multi-level fusion on stored levels (and two ablations);
- ``ifl``: the GLT protocol (ELPV only): the CNN baseline with balanced softmax, without and
  with IFL, trained with the ``lvmlt train`` trainer and tested on Test-CBL and Test-GBL.

Writes ``OUT/<dataset>.md`` (tables of mean ± std over the seeds, the exact command, the
feature store's provenance and notes) and ``OUT/<dataset>.csv`` (one row per system and
seed), and adds the SAM-fusion method's rows when a results file for the dataset exists
under ``benchmarks/results/`` (outside OUT).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lvmlt.errors import UserError

GROUPS = ("probe", "synthetic", "scilt", "ifl")
COLUMNS = ("many", "medium", "few", "top1", "mean_class_acc", "macro_f1")
DEFAULT_OUT = "benchmarks/results/other-systems"
DEFAULT_RUNS = "runs/other-systems"


# ----------------------------------------------------------------------------- feature systems


def feature_systems(cfg, groups: list[str]) -> list[tuple[str, list[str], Callable]]:
    """(row name, stored levels it reads, fit(levels, labels, C, meta, seed) -> MethodResult)."""
    from lvmlt.methods.scilt import fit_scilt
    from lvmlt.methods.synthetic import fit_linear_probe, fit_synthetic

    syn, sc, ev = cfg.synthetic, cfg.scilt, cfg.eval

    def vec(f):
        return lambda lv, lab, k, meta, seed: f({s: lv[s]["vec"] for s in lv}, lab, k, meta, seed)

    rows = []
    if "probe" in groups:
        rows.append(
            (
                "linear probe, v_SAM (CE)",
                ["vec"],
                vec(lambda x, y, k, m, s: fit_linear_probe(x, y, k, m, syn, s, ev=ev)),
            )
        )
        rows.append(
            (
                "linear probe, v_SAM (LA-CE)",
                ["vec"],
                vec(lambda x, y, k, m, s: fit_linear_probe(x, y, k, m, syn, s, logit_adjusted=True, ev=ev)),
            )
        )
    if "synthetic" in groups:
        g = dataclasses.replace(syn, distribution="gaussian")
        v = dataclasses.replace(syn, distribution="vmf")
        rows.append(
            (
                "synthetic latent features, Gaussian [ours recipe]",
                ["vec"],
                vec(lambda x, y, k, m, s: fit_synthetic(x, y, k, m, g, s, ev=ev)),
            )
        )
        rows.append(
            (
                "synthetic latent features, vMF [ours recipe]",
                ["vec"],
                vec(lambda x, y, k, m, s: fit_synthetic(x, y, k, m, v, s, ev=ev)),
            )
        )
    if "scilt" in groups:
        variants = [
            (f"SciLT fusion {'+'.join(sc.levels)}, gate, dual sup. [ours design]", sc),
            ("SciLT ablation: final stage only (stage4)", dataclasses.replace(sc, levels=("stage4",))),
            ("SciLT ablation: fixed 0.5 average", dataclasses.replace(sc, gate="fixed")),
            (
                "SciLT variant: stage3 + v_SAM (dim 256)",
                dataclasses.replace(sc, levels=("stage3", "vec"), dim=256),
            ),
        ]
        for name, c in variants:
            rows.append(
                (
                    name,
                    list(c.levels),
                    lambda lv, lab, k, m, s, c=c, name=name: fit_scilt(lv, lab, k, m, c, s, name, ev),
                )
            )
    return rows


def run_feature_systems(cfg, bundle, store, groups, seeds, log=print) -> tuple[dict, dict]:
    """Fit every feature system for every seed; returns ({row: [test metrics]}, {row: cost})."""
    from lvmlt.methods.common import load_levels, usable_labels

    rows = feature_systems(cfg, groups)
    needed = sorted({lv for _, lvs, _ in rows for lv in lvs})
    levels = load_levels(store, bundle, needed)
    labels = usable_labels(store, bundle)
    results: dict[str, list[dict]] = {}
    cost: dict[str, dict] = {}
    for name, _, fit in rows:
        results[name], secs = [], []
        for s in seeds:
            r = fit(levels, labels, bundle.num_classes, bundle.meta, s)
            results[name].append(
                r.test
                | {"val_mean_class_acc": r.val["mean_class_acc"], "best_epoch": r.best_epoch, "seed": s}
            )
            secs.append(r.seconds)
            params = r.trainable_params
            log(
                f"{name} seed {s}: test top1 {r.test['top1']:.2f}, mean class {r.test['mean_class_acc']:.2f} ({r.seconds:.1f} s)"
            )
        cost[name] = {
            "params": params,
            "seconds": float(np.mean(secs)),
            "encoder": "frozen (stored features)",
        }
    return results, cost


# ----------------------------------------------------------------------------- IFL under GLT


def _evaluate_checkpoint(run_cfg, ckpt: Path, glt: dict) -> dict:
    """Test-CBL and Test-GBL metrics (with per-attribute accuracy) of one saved checkpoint."""
    import torch

    from lvmlt import hardware, rundir
    from lvmlt.data.glt import attribute_accuracy
    from lvmlt.evaluation.metrics import score
    from lvmlt.models.classifier import build_model
    from lvmlt.training.trainer import collate, predict

    device = hardware.pick_device(run_cfg.device)
    model = build_model(run_cfg, glt["gbl"].num_classes).to(device)
    model.load_state_dict(rundir.load_checkpoint(ckpt, map_location=device)["model"])
    out = {}
    for k, b in glt.items():
        loader = torch.utils.data.DataLoader(b.test, batch_size=run_cfg.data.batch_size, collate_fn=collate)
        logits, labels = predict(model, loader, device, run_cfg.optim.precision, k, progress=False)
        m = score(logits, labels, b.train_counts, b.meta, run_cfg.eval)
        m["mono_acc"], m["poly_acc"] = attribute_accuracy(logits, labels, b.meta["attributes"]["test"], 2)
        out[k] = m
    return out


def run_ifl_glt(
    cfg, seeds, runs_dir: Path, epochs: int, progress: bool = False, log=print
) -> tuple[dict, dict]:
    """CNN baseline (balanced softmax) with and without IFL on ELPV-GLT.

    Every run is an ordinary trainer run under ``runs_dir`` (finished ones are reused) on
    the GLT training split, its epoch selected on the GLT validation split. Both that
    checkpoint ("best") and the last epoch's ("last", no selection at all) are tested.

    Returns:
        ``({"best"|"last": {"cbl"|"gbl": {row: [metrics per seed]}}}, {row: cost})``.
    """
    from lvmlt import rundir
    from lvmlt.config import replace
    from lvmlt.data import build_data
    from lvmlt.data.glt import elpv_glt_bundles
    from lvmlt.methods.common import count_trainable
    from lvmlt.models.classifier import build_model
    from lvmlt.training.trainer import Trainer, run_dir_for

    if cfg.data.name != "elpv":
        raise UserError(
            "the GLT protocol is built for ELPV only", fix="run --systems ifl with --dataset elpv"
        )
    glt = elpv_glt_bundles(build_data(cfg.data))
    bb = cfg.model.backbone
    # name -> (run tag, overrides); the IFL settings of cfg (e.g. its schedule) apply when enabled.
    variants = {
        f"CNN {bb} + balanced softmax": ("base", {"ifl.enabled": False}),
        f"CNN {bb} + balanced softmax + IFL": ("ifl", {"ifl.enabled": True}),
        f"CNN {bb} + balanced softmax + IFL, centre loss only (ifl.env2_cls=false)": (
            "ifl-center",
            {"ifl.enabled": True, "ifl.env2_cls": False},
        ),
    }
    tables: dict = {c: {"cbl": {}, "gbl": {}} for c in ("best", "last")}
    cost = {}
    for name, (tag, over) in variants.items():
        secs = []
        for c in tables.values():
            c["cbl"][name], c["gbl"][name] = [], []
        for s in seeds:
            run_cfg = replace(
                cfg,
                **over,
                **{"loss.name": "balanced_softmax", "optim.epochs": epochs},
                seed=s,
                out_dir=str(runs_dir),
                run_name=f"elpv-glt-{tag}-seed{s}",
            )
            rd = run_dir_for(run_cfg)
            done = rd / "glt_metrics.json"
            rec = json.loads(done.read_text()) if done.exists() else {}
            if "seconds" not in rec:
                t0 = time.time()
                last = (rd / rundir.LAST).exists()
                Trainer(run_cfg, resume=last, progress=progress, bundle=glt["gbl"]).fit()
                rec = {"seconds": time.time() - t0}
            if "last" not in rec:
                rec["params"] = count_trainable(build_model(run_cfg, glt["gbl"].num_classes))
                rec["best_epoch"] = rundir.read_metrics(rd)["best_epoch"]
                for c, ckpt in (("best", rundir.BEST), ("last", rundir.LAST)):
                    rec[c] = _evaluate_checkpoint(run_cfg, rd / ckpt, glt)
                done.write_text(json.dumps(rec))
            for c, tab in tables.items():
                for k in ("cbl", "gbl"):
                    epoch = rec["best_epoch"] if c == "best" else epochs - 1  # the checkpoint tested
                    tab[k][name].append(rec[c][k] | {"seed": s, "best_epoch": epoch})
            secs.append(rec["seconds"])
            b = rec["best"]
            log(
                f"{name} seed {s}: Test-CBL {b['cbl']['top1']:.2f}, Test-GBL {b['gbl']['top1']:.2f} "
                f"(epoch {rec['best_epoch']} on val; {rec['seconds']:.0f} s)"
            )
        cost[name] = {
            "params": rec["params"],
            "seconds": float(np.mean(secs)),
            "encoder": "none (CNN trained on images)",
        }
    return tables, cost


# ----------------------------------------------------------------------------- SAM-fusion rows


def _dataset_of(filename: str) -> str | None:
    """The longest built-in dataset name in a file name ("...-fashion-mnist-lt-ce.csv" is not mnist-lt)."""
    from lvmlt.data import DATASETS

    names = [n for n in DATASETS.names() if n in filename]
    return max(names, key=len) if names else None


def find_sam_fusion_results(dataset: str, results_root: Path, exclude: Path) -> tuple[dict, list[Path]]:
    """Rows of CSV result files under ``results_root`` (not under ``exclude``) naming the dataset.

    A file qualifies when its name contains the dataset name and it has a "run" column and
    the metric columns; rows with the same run name (one per seed) are grouped.
    """
    rows: dict[str, list[dict]] = {}
    used = []
    if not results_root.is_dir():
        return rows, used
    for path in sorted(results_root.rglob("*.csv")):
        if exclude in path.parents or _dataset_of(path.name) != dataset:
            continue
        with path.open() as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "run" not in reader.fieldnames or "top1" not in reader.fieldnames:
                continue
            for r in reader:
                vals = {c: float(r[c]) for c in COLUMNS if r.get(c) not in (None, "")}
                rows.setdefault(f"SAM-fusion: {r['run']} ({path.name})", []).append(vals)
        used.append(path)
    return rows, used


# ----------------------------------------------------------------------------- tables


def _cost_table(cost: dict) -> str:
    lines = [
        "| system | trainable params | seconds per fit (mean) | encoder |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, c in cost.items():
        lines.append(f"| {name} | {c['params']:,} | {c['seconds']:.1f} | {c['encoder']} |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, tables: dict[str, dict[str, list[dict]]], cost: dict) -> None:
    cols = [
        "protocol",
        "system",
        "seed",
        *COLUMNS,
        "mono_acc",
        "poly_acc",
        "val_mean_class_acc",
        "best_epoch",
        "params",
        "seconds",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for protocol, rows in tables.items():
            for name, runs in rows.items():
                for m in runs:
                    c = cost.get(name, {})
                    extra = {
                        "protocol": protocol,
                        "system": name,
                        "params": c.get("params"),
                        "seconds": c.get("seconds"),
                    }
                    w.writerow(["" if (m | extra).get(k) is None else (m | extra)[k] for k in cols])


def write_report(
    out_dir: Path,
    dataset: str,
    command: str,
    seeds,
    standard: dict,
    glt: dict | None,
    cost: dict,
    sam_rows: dict,
    sam_files: list[Path],
    provenance: dict | None,
    thresholds: tuple,
    extraction_note: str = "",
) -> str:
    """Write ``<dataset>.md`` and ``<dataset>.csv`` in ``out_dir``; returns the markdown."""
    from lvmlt.evaluation.metrics import mean_std_table

    seeds_s = ",".join(map(str, seeds))
    # Blocks of markdown, joined by blank lines.
    md = [f"# Other systems on {dataset}: test accuracy (%), mean ± std over seeds {seeds_s}"]
    md.append("Command (from the repository root):\n\n```\n" + command + "\n```")
    if provenance:
        md.append(
            f"Feature store: {provenance['encoder']} at {provenance['img_size']} px, {provenance['precision']}, "
            f"stored as {provenance.get('dtype')}, pooled levels {provenance.get('levels') or 'none'} "
            f"(weights sha256 {str(provenance.get('weights_sha256'))[:12]}...). {extraction_note}".rstrip()
        )
    many, few = thresholds
    if standard:
        md.append(
            f"## Standard split\n\nMany > {many}, few < {few} training images; many / medium / few are mean "
            "per-class accuracies of the group, top1 (All) the accuracy over all test images, "
            "mean_class_acc the balanced accuracy."
        )
        md.append(mean_std_table(standard, COLUMNS).rstrip())
        if sam_rows:
            files = ", ".join(str(p) for p in sam_files)
            md.append(f"SAM-fusion method (rows read from {files}; not re-run here):")
            md.append(mean_std_table(sam_rows, COLUMNS).rstrip())
        else:
            md.append(
                f"SAM-fusion method: no results file for {dataset} existed under benchmarks/results/ when this "
                "table was made, so its rows are absent (they are not run here)."
            )
    if glt:
        cols = (*COLUMNS, "mono_acc", "poly_acc")
        md.append(
            "## GLT protocol on ELPV\n\nClass = defect level (4), attribute = cell type (mono / poly); "
            "many > 300, few < 60 training images (Train-GLT counts [1098, 171, 18, 451]); test sets of "
            "24 images per class, so top1 = mean_class_acc. mono_acc / poly_acc: mean per-class accuracy "
            "on the mono / poly images. Checkpoint: the epoch with the best validation balanced accuracy "
            "(48 validation images)."
        )
        md.append("Test-CBL (class-balanced, attributes as in training: the CLT protocol):")
        md.append(mean_std_table(glt["best"]["cbl"], cols).rstrip())
        md.append("Test-GBL (class- and attribute-balanced: the GLT protocol):")
        md.append(mean_std_table(glt["best"]["gbl"], cols).rstrip())
        last = {
            f"{name}, {k}": glt["last"][p][name]
            for name in glt["last"]["cbl"]
            for p, k in (("cbl", "Test-CBL"), ("gbl", "Test-GBL"))
        }
        md.append(
            "IFL here is our importance-weighted version (docs/methods-other.md): environment 2 is "
            "class-balanced, so with a balanced-softmax baseline its classification loss corrects the "
            "prior twice; ifl.env2_cls=false keeps only the shared-centre loss."
        )
        md.append("The last epoch's checkpoint (no selection), for both test sets:")
        md.append(mean_std_table(last, ("many", "medium", "few", "top1", "mono_acc", "poly_acc")).rstrip())
    md.append("## Cost\n\n" + _cost_table(cost).rstrip())
    md.append(
        "Notes: the synthetic-feature recipe, the SciLT design and the IFL deviations are ours where the "
        "papers are silent (see docs/methods-other.md); every epoch and checkpoint is selected on the "
        "validation split, never on a test set. Seconds are wall time per fit on a shared 2-core CPU "
        "(torch threads = 1): for the feature-based systems fitting only (the feature extraction is a "
        "one-off cost they share), for the CNN runs the whole training. IFL adds no trainable parameter "
        "(its class centres are buffers with their own update)."
    )
    text = "\n\n".join(md) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{dataset}.md").write_text(text)
    tables = {"standard": standard}
    if glt:
        for c in ("best", "last"):
            tables |= {f"glt-{c}-test-cbl": glt[c]["cbl"], f"glt-{c}-test-gbl": glt[c]["gbl"]}
    _write_csv(out_dir / f"{dataset}.csv", tables, cost)
    return text


# ----------------------------------------------------------------------------- entry point


def run_comparison(
    dataset: str,
    store: str | None,
    seeds=(0, 1, 2),
    systems: list[str] | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
    out: str = DEFAULT_OUT,
    runs_dir: str = DEFAULT_RUNS,
    ifl_epochs: int = 10,
    command: str = "",
    extraction_note: str = "",
    progress: bool = False,
    log=print,
) -> str:
    """The comparison as a function (the CLI's body); returns the markdown written."""
    from lvmlt.config import load_config
    from lvmlt.data import build_data

    systems = systems or (list(GROUPS) if dataset == "elpv" else ["probe", "synthetic"])
    unknown = [s for s in systems if s not in GROUPS]
    if unknown:
        raise UserError(f"unknown system group(s) {unknown}", fix=f"choose from: {', '.join(GROUPS)}")
    cfg = load_config(config, [f"data.name={dataset}", *(overrides or [])])
    bundle = build_data(cfg.data)
    standard, cost, provenance = {}, {}, None
    feat_groups = [g for g in systems if g != "ifl"]
    if feat_groups:
        if not store:
            raise UserError(
                "the feature-based systems need a feature store",
                fix="pass --store DIR (made by lvmlt extract)",
            )
        from lvmlt.features import FeatureStore

        fs = FeatureStore.open(store)
        provenance = fs.manifest["provenance"]
        standard, cost = run_feature_systems(cfg, bundle, fs, feat_groups, seeds, log)
    glt = None
    if "ifl" in systems:
        glt, c = run_ifl_glt(cfg, seeds, Path(runs_dir), ifl_epochs, progress, log)
        cost = cost | c
    out_dir = Path(out)
    sam_rows, sam_files = find_sam_fusion_results(dataset, Path("benchmarks/results"), out_dir.resolve())
    from lvmlt.evaluation.metrics import thresholds

    many, few = thresholds(bundle.meta, cfg.eval)
    return write_report(
        out_dir,
        dataset,
        command,
        seeds,
        standard,
        glt,
        cost,
        sam_rows,
        sam_files,
        provenance,
        (many, few),
        extraction_note,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lvmlt.methods.compare",
        description="Compare the other systems (linear probe, synthetic latent features, SciLT fusion, IFL) "
        "on one dataset over seeds; writes markdown + CSV tables.",
    )
    p.add_argument(
        "--dataset", required=True, help="a built-in dataset (elpv, fashion-mnist-lt, mnist-lt, ...)"
    )
    p.add_argument(
        "--store", help="feature store made by `lvmlt extract` for this dataset (levels for SciLT)"
    )
    p.add_argument(
        "--systems",
        help=f"comma-separated groups from {', '.join(GROUPS)} "
        "(default: all for elpv, probe,synthetic otherwise)",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--config", help="base YAML config (data, model and optim sections for the IFL CNN runs)")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for <dataset>.md and .csv")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS, help="folder for the IFL training runs")
    p.add_argument("--ifl-epochs", type=int, default=10, help="epochs of the GLT CNN runs")
    p.add_argument(
        "--note", default="", help="a sentence added after the store's provenance (e.g. its extraction time)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--progress", action="store_true", help="progress bars for the IFL runs")
    p.add_argument(
        "overrides", nargs="*", help="key=value config overrides (synthetic.*, scilt.*, ifl.*, optim.*)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m lvmlt.methods.compare " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
        md = run_comparison(
            args.dataset,
            args.store,
            seeds,
            args.systems.split(",") if args.systems else None,
            args.config,
            args.overrides,
            args.out,
            args.runs_dir,
            args.ifl_epochs,
            command,
            args.note,
            args.progress,
        )
    except UserError as e:
        print(f"lvmlt: error: {e}", file=sys.stderr)
        return 2
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
