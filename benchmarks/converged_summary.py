"""Does the paper's direction survive convergence? The committed short-budget tables against
the same rows at the converged budget, per data set.

Reads ``benchmarks/results/ablation-<dataset>-<loss>.csv`` (the committed budget) and
``benchmarks/results/converged/ablation-<dataset>-<loss>-e<E>.csv`` (written by
``benchmarks/run_converged.sh``), one line per seed, and writes
``benchmarks/results/converged/summary.md``: for each data set and baseline loss the mean ±
std over seeds of the baseline, the full method (+SAM features + L_proto) and the SAM-latent
probe at both budgets, and the full method's gain with its spread. From
``baselines-<dataset>.csv`` and ``converged/baselines-<dataset>-e<E>.csv`` it does the same for
each baseline row against its "+SAM features + L_proto" twin. "The direction holds" when
the full method's mean beats the baseline's in top-1 and mean class accuracy by more than
the larger of the two rows' standard deviations, and its gain on the rarest group present
(few, else medium) is at least its gain on many-shot classes. A last section puts CE and the
full method side by side where the same configs and seeds ran on both CPU kinds
(``MACHINES``), with the verdict on each.

    python benchmarks/converged_summary.py
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lvmlt.evaluation.metrics import read_csv

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BASE, FULL, PROBE = "baseline", "+SAM features+L_proto (ours)", "SAM latent feature only"
SAM_TWIN = f" {FULL}"  # a baselines table's row with SAM: "<row> +SAM features+L_proto (ours)"
# Where the same configs and seeds of CE and the full method ran on both CPU kinds (from the
# tables' notes): (data set, epochs, ((machine, CSV, CE row, full-method row), ...)).
_AMD, _XEON = "AMD EPYC (AVX512-BF16)", "Intel Xeon (AMX)"
MACHINES = (
    ("elpv", 40, ((_AMD, "converged/ablation-elpv-ce-e40.csv", BASE, FULL),
                  (_XEON, "converged/baselines-elpv-e40.csv", "CE", f"CE{SAM_TWIN}"))),
    ("mnist-lt", 24, ((_AMD, "converged/ablation-mnist-lt-ce-e24.csv", BASE, FULL),
                      (_XEON, "converged/machines/ablation-mnist-lt-ce-e24-xeon.csv", BASE, FULL))),
)
OLD_BUDGET = {"elpv": 10, "mnist-lt": 6, "fashion-mnist-lt": 6}
METRICS = ("top1", "mean_class_acc", "many", "medium", "few")


def read(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{row: {metric: values over seeds}}`` of a table's CSV; {} if it does not exist."""
    if not path.exists():
        return {}
    return {
        name: {m: np.array([float(r[m]) for r in lines if r.get(m) is not None]) for m in METRICS}
        for name, lines in read_csv(path).items()
    }


def _ms(v: np.ndarray) -> str:
    if len(v) == 0:
        return "-"
    return f"{v.mean():.2f}" if len(v) == 1 else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def _std(v: np.ndarray) -> float:
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0


def verdict(table: dict, base: str = BASE, full: str = FULL) -> str:
    """Whether row ``full`` beats row ``base`` of ``table`` as the paper says (see the module)."""
    if base not in table or full not in table:
        return "rows missing"
    b, f = table[base], table[full]
    gains = {m: f[m].mean() - b[m].mean() for m in METRICS if len(b[m]) and len(f[m])}
    spread = {m: max(_std(b[m]), _std(f[m])) for m in gains}
    tail = "few" if "few" in gains else "medium"
    beats = all(gains[m] > spread[m] for m in ("top1", "mean_class_acc"))
    tail_most = tail in gains and gains[tail] >= gains.get("many", 0.0)
    words = ", ".join(f"{m} {gains[m]:+.2f} (spread {spread[m]:.2f})" for m in gains)
    if beats and tail_most:
        return f"holds: {words}; the {tail} group gains most"
    if all(gains[m] > 0 for m in ("top1", "mean_class_acc")):
        return f"same sign, inside the spread or not most on the tail: {words}"
    return f"does not hold: {words}"


def section(title: str, names, *budgets: tuple, key: str = "budget") -> list[str]:
    """A summary section: each row name in each (label, table) that has it, mean ± std over
    seeds; ``key`` names the label's column (an epoch budget, or a machine)."""
    if key == "budget":
        title = f"{title}: {budgets[0][0]} epochs against {budgets[-1][0]}"
    lines = ["", f"## {title}", "",
             f"| row | {key} | n | " + " | ".join(METRICS) + " |", "| --- | ---: | ---: |" + " ---: |" * len(METRICS)]  # fmt: skip
    for name in names:
        for budget, table in budgets:
            if name in table:
                t = table[name]
                lines.append(f"| {name} | {budget} | {len(t['top1'])} | " + " | ".join(_ms(t[k]) for k in METRICS) + " |")
    return lines


def machines_section(ds: str, epochs: int, *tables: tuple) -> list[str]:
    """CE and CE + SAM features + L_proto with the same configs and seeds on two CPUs:
    ``tables`` are (machine, CSV under benchmarks/results, CE row, full-method row)."""
    ce, full = "CE", f"CE{SAM_TWIN}"
    labelled = []
    for machine, path, base, ours in tables:
        t = read(RESULTS / path)
        labelled.append((machine, {ce: t[base], full: t[ours]} if base in t and ours in t else {}))
    title = f"{ds} at {epochs} epochs, the same configs and seeds on two CPUs"
    lines = section(title, (ce, full), *labelled, key="machine")
    return lines + [""] + [f"- {machine}: {verdict(t, ce, full)}" for machine, t in labelled]


def main() -> int:
    lines = [
        "# The committed budget against the converged budget (test %, mean ± std over seeds)",
        "",
        "Command: `python benchmarks/converged_summary.py` (after `bash benchmarks/run_converged.sh`). "
        "A verdict \"holds\" needs the full method to beat the baseline by more than the larger "
        "standard deviation in top-1 and mean class accuracy, and to gain most on the rarest group.",
    ]
    for new in sorted((RESULTS / "converged").glob("ablation-*-e*.csv")):
        m = re.fullmatch(r"ablation-(.+)-(ce|bs)-e(\d+)", new.stem)
        if not m:
            continue
        ds, loss, e = m.group(1), m.group(2), int(m.group(3))
        old, cur = read(RESULTS / f"ablation-{ds}-{loss}.csv"), read(new)
        lines += section(f"{ds}, {loss.upper()}", (BASE, FULL, PROBE), (OLD_BUDGET.get(ds, "?"), old), (e, cur))
        lines += ["", f"- committed budget: {verdict(old)}", f"- converged budget: {verdict(cur)}"]
    for new in sorted((RESULTS / "converged").glob("baselines-*-e*.csv")):
        m = re.fullmatch(r"baselines-(.+)-e(\d+)", new.stem)
        if not m:
            continue
        ds, e = m.group(1), int(m.group(2))
        old, cur = read(RESULTS / f"baselines-{ds}.csv"), read(new)
        plain = [r for r in cur if not r.endswith(SAM_TWIN)]
        names = [n for r in plain for n in (r, f"{r}{SAM_TWIN}")]
        lines += section(f"{ds}, each baseline and its +SAM twin", names, (OLD_BUDGET.get(ds, "?"), old), (e, cur))
        lines += [""] + [f"- {r}, {which} budget: {verdict(t, r, f'{r}{SAM_TWIN}')}"
                         for r in plain for which, t in (("committed", old), ("converged", cur))]  # fmt: skip
    lines += [
        "",
        "The tables above were made on two kinds of CPU (each table's note names its machine), whose "
        "bfloat16 kernels round differently; where the same configs and seeds ran on both, the CE "
        "baseline and the full method compare as follows.",
    ]
    for ds, epochs, tables in MACHINES:
        lines += machines_section(ds, epochs, *tables)
    text = "\n".join(lines) + "\n"
    (RESULTS / "converged" / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
