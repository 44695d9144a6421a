"""``lvmlt compare``: the other systems side by side on one dataset, over seeds.

    lvmlt compare --dataset elpv --store runs/features/elpv-mobilesam256-levels --config configs/elpv.yaml
    lvmlt compare --dataset fashion-mnist-lt --store runs/features/fashion-mnist-lt-mobilesam256 \
        --systems probe,synthetic

Every system is a table of config overrides (:data:`SYSTEMS`, like ``lvmlt ablate``'s
variants) and every (system, seed) an ordinary trainer run under ``--runs-dir``, read when
it has finished and trained (or resumed) otherwise (:func:`lvmlt.experiments.ablate.run_result`).
Groups (``--systems``, comma-separated):

- ``probe``: linear probe on v_SAM (CE, and LA-CE);
- ``synthetic``: synthetic latent features + the same probe (Gaussian, and vMF);
- ``scilt``: SciLT multi-level fusion on stored levels (and two ablations, one variant);
- ``ifl``: the GLT protocol (ELPV only): the CNN baseline with balanced softmax, without and
  with IFL, tested on Test-CBL and Test-GBL.

The feature systems read ``--store`` (``fusion.store``). ``key=value`` overrides apply to
every run and win over a system's recipe (e.g. ``optim.epochs=5`` for a quick look; it sets
the IFL runs' epochs too, over ``--ifl-epochs``). Every precondition (the groups, the store,
its levels for SciLT, its match with the data, ELPV for IFL) is checked before any run starts.
Writes ``OUT/<dataset>.md`` (tables of mean ± std over the seeds, the exact command, the
feature store's provenance and notes) and ``OUT/<dataset>.csv`` (one row per system and
seed; OUT defaults to the runs folder, ``runs/other-systems``: the committed tables under
``benchmarks/results/other-systems/`` change only with an explicit ``--out``), and adds the
SAM-fusion method's rows when a results file for the dataset exists under
``benchmarks/results/`` (outside OUT).
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np

from lvmlt.errors import UserError

COLUMNS = ("many", "medium", "few", "top1", "mean_class_acc", "macro_f1")
DEFAULT_RUNS = "runs/other-systems"
DEFAULT_OUT = DEFAULT_RUNS  # the committed tables (benchmarks/results/other-systems) change only on request
IFL_EPOCHS = 10

# The recipes (every value [ours] where the papers are silent; docs/methods-other.md).
# The probe: AdamW, cosine schedule; the recipe's 30 epochs at lr 1e-3 underfit unit
# vectors (ELPV validation), hence 100 at 1e-2.
PROBE = {
    "fusion.sam_only": True,
    "fusion.sam_norm": "cl2n",
    "model.dropout": 0.0,  # a base config's dropout (0.5 in configs/elpv.yaml) is for the CNN
    "optim.name": "adamw",
    "optim.lr": 0.01,
    "optim.weight_decay": 0.0001,
    "optim.epochs": 100,
    "optim.schedule": "cosine",
    "optim.warmup_epochs": 0,
    "data.batch_size": 512,
    "loss.name": "ce",
    "optim.precision": "fp32",  # tiny heads: bf16 buys nothing
}
SCILT = {
    "scilt.enabled": True,
    "loss.name": "logit_adjusted",
    "loss.tau": 1.0,
    "optim.name": "sgd",
    "optim.lr": 0.01,
    "optim.momentum": 0.9,
    "optim.weight_decay": 0.0005,
    "optim.epochs": 20,
    "optim.schedule": "cosine",
    "optim.warmup_epochs": 0,
    "data.batch_size": 128,
    "optim.precision": "fp32",
}

#: group -> {row name: overrides}; the rows of the tables, in order.
SYSTEMS: dict[str, dict[str, dict]] = {
    "probe": {
        "linear probe, v_SAM (CE)": PROBE,
        "linear probe, v_SAM (LA-CE)": {**PROBE, "loss.name": "logit_adjusted", "loss.tau": 1.0},
    },
    "synthetic": {
        "synthetic latent features, Gaussian [ours recipe]": {
            **PROBE, "synthetic.enabled": True, "synthetic.distribution": "gaussian"
        },
        "synthetic latent features, vMF [ours recipe]": {
            **PROBE, "synthetic.enabled": True, "synthetic.distribution": "vmf"
        },
    },
    "scilt": {
        "SciLT fusion stage3+stage4, gate, dual sup. [ours design]": SCILT,
        "SciLT ablation: final stage only (stage4)": {**SCILT, "scilt.levels": ["stage4"]},
        "SciLT ablation: fixed 0.5 average": {**SCILT, "scilt.gate": "fixed"},
        "SciLT variant: stage3 + v_SAM (dim 256)": {**SCILT, "scilt.levels": ["stage3", "vec"], "scilt.dim": 256},
    },
}
GROUPS = (*SYSTEMS, "ifl")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def system_config(base, overrides: dict, user_keys: set[str], **fixed):
    """``base`` with a system's overrides, except the keys the user set, and ``fixed``."""
    from lvmlt.config import replace

    return replace(base, **{k: v for k, v in overrides.items() if k not in user_keys}, **fixed)


def _run_seconds(run_dir: Path) -> float:
    """Wall time of a run's epochs (training and validation), from its history."""
    from lvmlt import rundir

    return float(sum(rec.get("seconds", 0.0) for rec in rundir.read_history(run_dir)))


def _cost(metrics: dict, seconds: list[float], encoder: str) -> dict:
    return {"params": metrics.get("trainable_params"), "seconds": float(np.mean(seconds)), "encoder": encoder}


# ----------------------------------------------------------------------------- feature systems


def run_feature_systems(
    base, bundle, groups, seeds, runs_dir: Path, user_keys: set[str] = frozenset(), progress=False, log=print
) -> tuple[dict, dict]:
    """Every row of ``groups`` for every seed, read or trained; ({row: [test metrics]}, {row: cost})."""
    from lvmlt.experiments.ablate import run_result
    from lvmlt.training.trainer import run_dir_for

    results: dict[str, list[dict]] = {}
    cost: dict[str, dict] = {}
    for g in groups:
        for name, over in SYSTEMS[g].items():
            results[name], secs = [], []
            for s in seeds:
                cfg = system_config(
                    base, over, user_keys, seed=s, out_dir=str(runs_dir), run_name=f"{bundle.name}-{_slug(name)}-seed{s}"
                )
                m = run_result(cfg, progress, bundle=bundle)
                sec = _run_seconds(run_dir_for(cfg))
                results[name].append(
                    m["test"] | {"val_mean_class_acc": m["val"]["mean_class_acc"], "best_epoch": m["best_epoch"], "seed": s}
                )
                secs.append(sec)
                log(
                    f"{name} seed {s}: test top1 {m['test']['top1']:.2f}, mean class "
                    f"{m['test']['mean_class_acc']:.2f} ({sec:.1f} s)"
                )
            cost[name] = _cost(m, secs, "frozen (stored features)")
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


def ifl_variants(backbone: str) -> dict[str, tuple[str, dict]]:
    """Row name -> (run tag, overrides); the IFL settings of the base config apply when enabled."""
    return {
        f"CNN {backbone} + balanced softmax": ("base", {"ifl.enabled": False}),
        f"CNN {backbone} + balanced softmax + IFL": ("ifl", {"ifl.enabled": True}),
        f"CNN {backbone} + balanced softmax + IFL, centre loss only (ifl.env2_cls=false)": (
            "ifl-center",
            {"ifl.enabled": True, "ifl.env2_cls": False},
        ),
    }


def run_ifl_glt(cfg, seeds, runs_dir: Path, epochs: int, progress: bool = False, log=print) -> tuple[dict, dict]:
    """CNN baseline (balanced softmax) with and without IFL on ELPV-GLT.

    Every run is an ordinary trainer run under ``runs_dir`` (read or trained by
    :func:`~lvmlt.experiments.ablate.run_result`) on the GLT training split, its epoch
    selected on the GLT validation split. Both that checkpoint ("best") and the last
    epoch's ("last", no selection at all) are tested on Test-CBL and Test-GBL (kept in the
    run's ``glt_metrics.json``).

    Returns:
        ``({"best"|"last": {"cbl"|"gbl": {row: [metrics per seed]}}}, {row: cost})``.
    """
    from lvmlt import rundir
    from lvmlt.config import replace
    from lvmlt.data import build_data
    from lvmlt.data.glt import elpv_glt_bundles
    from lvmlt.experiments.ablate import run_result
    from lvmlt.training.trainer import run_dir_for

    if cfg.data.name != "elpv":
        raise UserError("the GLT protocol is built for ELPV only", fix="run --systems ifl with --dataset elpv")
    glt = elpv_glt_bundles(build_data(cfg.data))
    tables: dict = {c: {"cbl": {}, "gbl": {}} for c in ("best", "last")}
    cost = {}
    for name, (tag, over) in ifl_variants(cfg.model.backbone).items():
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
            m = run_result(run_cfg, progress, bundle=glt["gbl"])
            rd = run_dir_for(run_cfg)
            done = rd / "glt_metrics.json"
            rec = json.loads(done.read_text()) if done.exists() else {}
            if "last" not in rec:
                for c, ckpt in (("best", rundir.BEST), ("last", rundir.LAST)):
                    rec[c] = _evaluate_checkpoint(run_cfg, rd / ckpt, glt)
                rundir.atomic_write_json(done, rec)
            seconds = _run_seconds(rd)
            for c, tab in tables.items():
                for k in ("cbl", "gbl"):
                    epoch = m["best_epoch"] if c == "best" else epochs - 1  # the checkpoint tested
                    tab[k][name].append(rec[c][k] | {"seed": s, "best_epoch": epoch})
            secs.append(seconds)
            b = rec["best"]
            log(
                f"{name} seed {s}: Test-CBL {b['cbl']['top1']:.2f}, Test-GBL {b['gbl']['top1']:.2f} "
                f"(epoch {m['best_epoch']} on val; {seconds:.0f} s)"
            )
        cost[name] = _cost(m, secs, "none (CNN trained on images)")
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
        params = "?" if c.get("params") is None else f"{c['params']:,}"
        lines.append(f"| {name} | {params} | {c['seconds']:.1f} | {c['encoder']} |")
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
    if standard:
        md += _standard_blocks(dataset, standard, sam_rows, sam_files, thresholds)
    if glt:
        md += _glt_blocks(glt)
    md.append("## Cost\n\n" + _cost_table(cost).rstrip())
    md.append(_REPORT_NOTES)
    text = "\n\n".join(md) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{dataset}.md").write_text(text)
    tables = {"standard": standard}
    if glt:
        for c in ("best", "last"):
            tables |= {f"glt-{c}-test-cbl": glt[c]["cbl"], f"glt-{c}-test-gbl": glt[c]["gbl"]}
    _write_csv(out_dir / f"{dataset}.csv", tables, cost)
    return text


_REPORT_NOTES = (
    "Notes: the synthetic-feature recipe, the SciLT design and the IFL deviations are ours where the "
    "papers are silent (see docs/methods-other.md); every epoch and checkpoint is selected on the "
    "validation split, never on a test set. Seconds are wall time per fit on a shared 2-core CPU "
    "(torch threads = 1), the run's epochs (training and validation) from its history: for the "
    "feature-based systems on stored features (the feature extraction is a one-off cost they share), "
    "for the CNN runs on images. IFL adds no trainable parameter "
    "(its class centres are buffers with their own update)."
)


def _standard_blocks(dataset: str, standard: dict, sam_rows: dict, sam_files: list[Path], thresholds: tuple) -> list[str]:
    """The report's markdown blocks of the standard split: its table, then the SAM-fusion rows."""
    from lvmlt.evaluation.metrics import mean_std_table

    many, few = thresholds
    md = [
        f"## Standard split\n\nMany > {many}, few < {few} training images; many / medium / few are mean "
        "per-class accuracies of the group, top1 (All) the accuracy over all test images, "
        "mean_class_acc the balanced accuracy.",
        mean_std_table(standard, COLUMNS).rstrip(),
    ]
    if sam_rows:
        files = ", ".join(str(p) for p in sam_files)
        md.append(f"SAM-fusion method (rows read from {files}; not re-run here):")
        md.append(mean_std_table(sam_rows, COLUMNS).rstrip())
    else:
        md.append(
            f"SAM-fusion method: no results file for {dataset} existed under benchmarks/results/ when this "
            "table was made, so its rows are absent (they are not run here)."
        )
    return md


def _glt_blocks(glt: dict) -> list[str]:
    """The report's markdown blocks of the GLT protocol: both test sets, best and last checkpoint."""
    from lvmlt.evaluation.metrics import mean_std_table

    cols = (*COLUMNS, "mono_acc", "poly_acc")
    md = [
        "## GLT protocol on ELPV\n\nClass = defect level (4), attribute = cell type (mono / poly); "
        "many > 300, few < 60 training images (Train-GLT counts [1098, 171, 18, 451]); test sets of "
        "24 images per class, so top1 = mean_class_acc. mono_acc / poly_acc: mean per-class accuracy "
        "on the mono / poly images. Checkpoint: the epoch with the best validation balanced accuracy "
        "(48 validation images)."
    ]
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
    return md


# ----------------------------------------------------------------------------- entry point


def scilt_levels(cfg, user_keys: set[str]) -> list[str]:
    """The stored levels the SciLT rows read (``vec`` is v_SAM, in every store)."""
    levels = []
    for over in SYSTEMS["scilt"].values():
        row = cfg.scilt.levels if "scilt.levels" in user_keys else over.get("scilt.levels", cfg.scilt.levels)
        levels += [lv for lv in row if lv != "vec" and lv not in levels]
    return levels


def check_groups(systems: list[str]) -> None:
    unknown = [s for s in systems if s not in GROUPS]
    if unknown:
        raise UserError(f"unknown system group(s) {unknown}", fix=f"choose from: {', '.join(GROUPS)}")


def check_preconditions(cfg, bundle, systems: list[str], store: str | None, user_keys: set[str]) -> dict | None:
    """Everything the comparison needs, checked before any run starts; the store's provenance.

    Raises:
        UserError: an unknown group, IFL on another dataset than ELPV, a feature group without
            a store, a store that does not open or was made for other data, or one without
            the levels the SciLT rows read.
    """
    check_groups(systems)
    if "ifl" in systems and cfg.data.name != "elpv":
        raise UserError(
            f"the ifl group runs the GLT protocol, which is built for ELPV only (this is {cfg.data.name})",
            fix="leave ifl out of --systems, or use --dataset elpv",
        )
    if not [g for g in systems if g != "ifl"]:
        return None
    if not store:
        raise UserError(
            "the feature-based systems need a feature store", fix="pass --store DIR (made by lvmlt extract)"
        )
    from lvmlt.features import FeatureStore

    opened = FeatureStore.open(store)
    opened.check(bundle)
    provenance = opened.manifest["provenance"]
    if "scilt" in systems:
        have = list(provenance.get("levels") or [])
        missing = [lv for lv in scilt_levels(cfg, user_keys) if lv not in have]
        if missing:
            want = ",".join(dict.fromkeys([*have, *missing]))
            raise UserError(
                f"feature store {store} holds the levels {have or 'none'}; the SciLT rows also read {missing}",
                fix=f"extract a store with them (lvmlt extract --dataset {cfg.data.name} --out DIR "
                f"'levels=[{want}]') and pass it as --store, or leave scilt out of --systems",
            )
    return provenance


def run_comparison(
    dataset: str,
    store: str | None,
    seeds=(0, 1, 2),
    systems: list[str] | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
    out: str = DEFAULT_OUT,
    runs_dir: str = DEFAULT_RUNS,
    ifl_epochs: int = IFL_EPOCHS,
    command: str = "",
    extraction_note: str = "",
    progress: bool = False,
    log=print,
) -> str:
    """The comparison as a function (the CLI's body); returns the markdown written.

    Every precondition is checked (:func:`check_preconditions`) before the first run; an
    ``optim.epochs`` in ``overrides`` also sets the IFL runs' epochs (over ``ifl_epochs``).
    """
    from lvmlt.config import load_config
    from lvmlt.data import build_data
    from lvmlt.evaluation.metrics import thresholds

    systems = systems or (list(GROUPS) if dataset == "elpv" else ["probe", "synthetic"])
    check_groups(systems)  # before the data is loaded
    overrides = list(overrides or [])
    user_keys = {o.split("=", 1)[0].strip() for o in overrides}
    cfg = load_config(config, [f"data.name={dataset}", *overrides])
    if "optim.epochs" in user_keys:
        ifl_epochs = cfg.optim.epochs
    bundle = build_data(cfg.data)
    provenance = check_preconditions(cfg, bundle, systems, store, user_keys)
    standard, cost = {}, {}
    feat_groups = [g for g in systems if g != "ifl"]
    if feat_groups:
        from lvmlt.config import replace

        feat = replace(cfg, **{"fusion.store": str(store)})
        standard, cost = run_feature_systems(feat, bundle, feat_groups, seeds, Path(runs_dir), user_keys, progress, log)
    glt = None
    if "ifl" in systems:
        glt, c = run_ifl_glt(cfg, seeds, Path(runs_dir), ifl_epochs, progress, log)
        cost = cost | c
    out_dir = Path(out)
    sam_rows, sam_files = find_sam_fusion_results(dataset, Path("benchmarks/results"), out_dir.resolve())
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
        thresholds(bundle.meta, cfg.eval),
        extraction_note,
    )


def add_parsers(sub) -> None:
    """The ``compare`` subcommand (a module of :data:`lvmlt.cli.COMMAND_MODULES`)."""
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
        help=f"comma-separated groups from {', '.join(GROUPS)} (default: all for elpv, probe,synthetic otherwise)",
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

    from lvmlt.experiments.cli import parse_seeds

    torch.set_num_threads(args.threads)
    command = command_line(args)
    seeds = parse_seeds(args.seeds)
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
    print(md)
    return 0
