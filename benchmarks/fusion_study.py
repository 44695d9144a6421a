"""Beyond the paper: a fused model never worse than its best part, chosen on validation.

For each data set at its converged budget (``benchmarks/results/convergence/<dataset>.md``)
and over the seeds that have finished, compares on test the CNN alone (CE), the SAM-latent
probe and settings of the fused model (map + latent + L_proto):

- the paper's fixed alpha = 0.5;
- alpha chosen on validation from the saved branch logits after training (no retraining;
  a run trained before the branches were saved is re-evaluated once to save them);
- dual supervision (``fusion.aux_weight=1``: the loss on z_CNN and on z_SAM too), at
  alpha 0.5 and with alpha chosen on validation (``fusion.alpha_select=val``).

Alpha is chosen on validation mean class accuracy, the metric checkpoints are chosen on.
Writes ``benchmarks/results/fusion/never-worse.{md,csv}``. The runs are those of
``benchmarks/run_converged.sh`` (``<out>/<dataset>-e<E>-ce-<variant>-seed<s>``).

    python benchmarks/fusion_study.py [--datasets elpv mnist-lt] [--epochs fashion-mnist-lt=96]

The CSV is the record: a data set left out of ``--datasets``, or with no finished runs under
``--out``, keeps the section and per-seed rows it has there (so one data set can be redone
where the others' runs are not at hand).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("elpv", "mnist-lt", "fashion-mnist-lt")  # the default, and the order of the sections
CNN, PROBE = "CNN alone (CE)", "SAM-latent probe"
FULL, DUAL = "sam_features_l_proto__ours", "sam_features_l_proto_dual_val_alpha"
#: row -> (run variant slug, alpha: "run" = the run's own logits, a number, or "val" = chosen on validation)
ROWS = {
    CNN: ("baseline", "run"),
    PROBE: ("sam_latent_feature_only", "run"),
    "fused, paper (alpha 0.5)": (FULL, "run"),
    "fused, alpha chosen on val": (FULL, "val"),
    "fused + dual supervision, alpha 0.5": (DUAL, 0.5),
    "fused + dual supervision, alpha chosen on val (option)": (DUAL, "run"),
}
COLUMNS = ("val_top1", "val_mca", "top1", "mean_class_acc", "many", "medium", "few", "alpha")


def converged_budget(dataset: str) -> int | None:
    text = (ROOT / "benchmarks" / "results" / "convergence" / f"{dataset}.md").read_text()
    m = re.search(r"in CE's validation top-1\): \*\*(\d+)", text)
    return int(m.group(1)) if m else None


def _branches(run_dir: Path) -> dict:
    p = run_dir / "predictions.npz"
    arrays = dict(np.load(p)) if p.exists() else {}
    if "val_z_cnn" not in arrays:  # trained before the branches were saved: score its best checkpoint again
        from lvmlt.training.trainer import evaluate_run

        evaluate_run(run_dir, progress=False)
        arrays = dict(np.load(p))
    return arrays


def row_result(run_dir: Path, alpha) -> dict | None:
    """Val and test metrics of one run at the row's alpha; None if the run has not finished."""
    from lvmlt.evaluation.metrics import choose_alpha, compute_metrics
    from lvmlt.outputs import mix_branches

    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if alpha == "run":
        out = {"alpha": m.get("alpha", {}).get("chosen")}
        val, test = m["val"], m["test"]
    else:
        a = _branches(run_dir)
        th = m["test"]["thresholds"]
        if alpha == "val":
            meta = {"many_threshold": th["many"], "few_threshold": th["few"]}
            alpha, _ = choose_alpha(a["val_z_cnn"], a["val_z_sam"], a["val_labels"], a["train_counts"], meta)
        out = {"alpha": alpha}
        val, test = (
            compute_metrics(
                mix_branches(a[f"{s}_z_cnn"], a[f"{s}_z_sam"], alpha),
                a[f"{s}_labels"],
                a["train_counts"],
                th["many"],
                th["few"],
            )
            for s in ("val", "test")
        )
    out.update(val_top1=val["top1"], val_mca=val["mean_class_acc"])
    out.update({k: test.get(k) for k in ("top1", "mean_class_acc", "many", "medium", "few")})
    return out


def collect(out: Path, dataset: str, epochs: int, seeds: list[int]) -> dict[str, list[dict]]:
    table: dict[str, list[dict]] = {}
    for row, (slug, alpha) in ROWS.items():
        for s in seeds:
            r = row_result(out / f"{dataset}-e{epochs}-ce-{slug}-seed{s}", alpha)
            if r is not None:
                table.setdefault(row, []).append({"seed": s, **r})
    return table


def kept_rows(path: Path) -> dict[str, tuple[int, dict[str, list[dict]]]]:
    """Per data set: (epochs, row -> per-seed records) read back from an earlier CSV."""
    kept: dict[str, tuple[int, dict[str, list[dict]]]] = {}
    if not path.exists():
        return kept
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rec = {"seed": int(r["seed"]), **{c: float(r[c]) if r[c] else None for c in COLUMNS}}
            kept.setdefault(r["dataset"], (int(r["epochs"]), {}))[1].setdefault(r["row"], []).append(rec)
    return kept


def _ms(values) -> str:
    v = np.array([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return "-"
    return f"{v.mean():.2f}" if len(v) == 1 else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def verdict(table: dict) -> list[str]:
    """Per candidate, over the seeds where it, the CNN and the probe all finished: its test mean
    minus the better part's mean, in top-1 and mean class accuracy, and on how many of those
    seeds it is at least as good as both parts of the same seed."""
    if CNN not in table or PROBE not in table:
        return ["CNN or probe runs missing: no verdict."]
    cnn, probe = ({r["seed"]: r for r in table[k]} for k in (CNN, PROBE))
    lines = []
    for row, runs in table.items():
        if row in (CNN, PROBE):
            continue
        paired = [r for r in runs if r["seed"] in cnn and r["seed"] in probe]
        if not paired:
            continue
        cells = []
        for key, name in (("top1", "top-1"), ("mean_class_acc", "mean class")):
            parts = [np.mean([d[r["seed"]][key] for r in paired]) for d in (cnn, probe)]
            wins = sum(r[key] >= max(cnn[r["seed"]][key], probe[r["seed"]][key]) for r in paired)
            cells.append(f"{name} {np.mean([r[key] for r in paired]) - max(parts):+.2f} ({wins}/{len(paired)} seeds ≥ both)")
        lines.append(f"- {row}: " + "; ".join(cells))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--epochs", nargs="*", default=[], help="DATASET=E for a data set whose study has not converged")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="runs/convergence", help="where the runs are")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "fusion" / "never-worse"))
    args = ap.parse_args(argv)
    budgets = dict(kv.split("=") for kv in args.epochs)
    seeds = [int(s) for s in args.seeds.split(",")]
    md = [
        "# A fused model never worse than its best part (test %, mean ± std over seeds)",
        "",
        "Each data set at its converged budget; every alpha and checkpoint chosen on validation "
        "(mean class accuracy). \"≥ both\" counts the seeds on which the row is at least as good as the "
        "CNN alone and the probe of the same seed. Command: `python benchmarks/fusion_study.py` "
        "(the runs: `bash benchmarks/run_converged.sh`).",
    ]
    rows_csv = []
    results = Path(args.results)
    kept = kept_rows(results.with_suffix(".csv"))
    for ds in sorted({*args.datasets, *kept}, key=lambda d: (DATASETS.index(d) if d in DATASETS else len(DATASETS), d)):
        table = {}
        if ds in args.datasets:
            e = int(budgets.get(ds) or converged_budget(ds) or 0)
            if not e:
                md += ["", f"## {ds}", "", "not converged and no --epochs given"]
                continue
            table = collect(Path(args.out), ds, e, seeds)
        if not table and ds in kept:
            if ds in args.datasets:
                print(f"{ds}: no finished runs under {args.out}; its rows are kept from {results.with_suffix('.csv')}")
            e, table = kept[ds]
        md += ["", f"## {ds}, {e} epochs", "", "| row | n | " + " | ".join(COLUMNS) + " |",
               "| --- | ---: |" + " ---: |" * len(COLUMNS)]  # fmt: skip
        for row, runs in table.items():
            md.append(f"| {row} | {len(runs)} | " + " | ".join(_ms(r[c] for r in runs) for c in COLUMNS) + " |")
            rows_csv += [{"dataset": ds, "epochs": e, "row": row, **r} for r in runs]
        md += ["", "Against the better part (difference of the means over the seeds all three have):", "", *verdict(table)]
    results.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(md) + "\n"
    results.with_suffix(".md").write_text(text)
    with open(results.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["dataset", "epochs", "row", "seed", *COLUMNS])
        w.writeheader()
        w.writerows(rows_csv)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
