"""The ELPV table of issue "field-level accuracy": every system's test accuracy, mean ± std over
the seeds that finished, with the wall time per run and the CPU, against what the field reports.

Rows come from committed tables (the old CE baseline and its SAM twin at the converged budget,
the frozen MobileSAM probe) and from finished run directories (the recipe chosen on validation,
with and without the SAM features, and the fine-tuned encoder). Nothing is trained here.

    python benchmarks/strong_summary.py --runs runs/strong --out benchmarks/results/strong/elpv
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from strong_sweep import history, minutes  # noqa: E402

from lvmlt import hardware  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("top1", "mean_class_acc", "many", "medium", "few")

#: (row label, glob of run directories under --runs, how it was made)
RUN_ROWS = (
    ("recipe chosen on validation: CE + weight balancing", "elpv-strong-ce-baseline-seed*",
     "configs/elpv-strong.yaml"),
    ("recipe chosen on validation + SAM features + L_proto", "elpv-strong-ce-sam_features_l_proto__ours-seed*",
     "configs/elpv-strong.yaml fusion.map=true fusion.latent=true proto.enabled=true"),
    ("MobileSAM, last stage fine-tuned at 256 px, CE", "ft-last_stage__CE-seed*", "configs/elpv-finetune.yaml"),
    ("MobileSAM, last stage fine-tuned at 256 px, balanced softmax", "ft-last_stage__balanced_softmax-seed*",
     "configs/elpv-finetune.yaml loss.name=balanced_softmax"),
)


def committed(csv_path: Path, run: str, key: str = "run") -> list[dict]:
    with csv_path.open() as f:
        return [{c: float(r[c]) for c in COLUMNS} for r in csv.DictReader(f) if r[key] == run]


def from_runs(runs: Path, pattern: str) -> tuple[list[dict], list[float]]:
    rows, spent = [], []
    for d in sorted(runs.glob(pattern)):
        try:
            m = json.loads((d / "metrics.json").read_text())
        except FileNotFoundError:
            continue
        if "unfinished" in m:
            continue
        rows.append({c: m["test"][c] for c in COLUMNS})
        spent.append(minutes(history(d)))
    return rows, spent


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/strong"))
    ap.add_argument("--out", type=Path, default=RESULTS / "strong" / "elpv")
    args = ap.parse_args(argv)
    table = [
        ("old baseline: CE, ResNet-18 at 48 px, 40 epochs", committed(RESULTS / "converged/ablation-elpv-ce-e40.csv",
         "baseline"), [], "benchmarks/results/converged/ablation-elpv-ce-e40.md (AMD EPYC)"),
        ("old baseline + SAM features + L_proto", committed(RESULTS / "converged/ablation-elpv-ce-e40.csv",
         "+SAM features+L_proto (ours)"), [], "the same table"),
        ("balanced softmax, 40 epochs", committed(RESULTS / "converged/ablation-elpv-bs-e40.csv", "baseline"), [],
         "benchmarks/results/converged/ablation-elpv-bs-e40.md"),
        ("frozen MobileSAM, linear probe (CE)", committed(RESULTS / "other-systems/elpv.csv",
         "linear probe, v_SAM (CE)", key="system"), [], "benchmarks/results/other-systems/elpv.md"),
    ]
    for label, pattern, how in RUN_ROWS:
        rows, spent = from_runs(args.runs, pattern)
        table.append((label, rows, spent, f"`{how}`"))
    cpu = hardware.cpu_info().describe()
    lines = [
        "# ELPV: the recipe chosen on validation, the SAM features on top of it, and the fine-tuned encoder",
        "",
        "Test split of lvmlt's ELPV protocol (657 images; many > 150, few < 60 training images), mean ± std over "
        "the seeds listed (n); every checkpoint chosen on validation mean class accuracy. Minutes are each run's "
        "training epochs as its history records them (runs shared the 2 cores, so alone they take less). "
        f"Runs of this session: {cpu}. Command: `python benchmarks/strong_summary.py` after "
        "`LOSSES=ce bash benchmarks/run_strong.sh` and the fine-tune runs of "
        "`benchmarks/results/strong/sweep-elpv-finetune.md`.",
        "",
        "The field on the same 2,624 images (other splits; 4 defect levels unless said): a fine-tuned VGG-19 88.4 % "
        "(Deitsch et al., 2019), a lightweight CNN trained on a CPU 83.5 %, an ImageNet-pretrained ResNet-152 with "
        "over-sampling 90.1 % (also reported for 8 classes). No ImageNet-pretrained weights can be installed here.",
        "",
        "| system | n | top1 | mean class | many | medium | few | minutes per run | source |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    out_rows = []
    for label, rows, spent, how in table:
        cells = [cell([r[c] for r in rows]) for c in COLUMNS]
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(cells) + f" | {cell(spent)} | {how} |")
        out_rows.append({"system": label, "n": len(rows), **dict(zip(COLUMNS, cells, strict=True)),
                         "minutes": cell(spent)})
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    with args.out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["system", "n", *COLUMNS, "minutes"])
        w.writeheader()
        w.writerows(out_rows)


if __name__ == "__main__":
    main()
