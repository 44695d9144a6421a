"""Choosing a recipe on validation: named sets of overrides over one base config, one run each.

Every variant is an ordinary ``lvmlt train`` run (``--out``/``<tag>-<variant>-seed<s>``);
finished runs are reused and a killed one resumes, so the command can be run again until
the table is complete. ``--jobs 2`` trains two runs at once, one thread each (on 2 cores
that is faster than one run on two threads for these small models). The table lists
validation top-1 and mean class accuracy (what the choice is made on) beside test's, and
the wall time of each run; the CPU is named in the note.

    python benchmarks/strong_sweep.py --config configs/elpv.yaml --tag sweep48 \\
        --variant "baseline=" --variant "dihedral=data.dihedral=auto" \\
        --results benchmarks/results/strong/sweep-elpv-48 optim.epochs=40
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from lvmlt import hardware

COLUMNS = ("variant", "seed", "val top1", "val mean class", "test top1", "test mean class", "many", "medium", "few",
           "epochs", "minutes")


def run_dir(out: Path, tag: str, name: str, seed: int) -> Path:
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    return out / f"{tag}-{slug}-seed{seed}"


def command(args, name: str, overrides: list[str], seed: int) -> list[str] | None:
    rd = run_dir(args.out, args.tag, name, seed)
    if (rd / "metrics.json").exists():
        return None
    base = [sys.executable, "-m", "lvmlt", "train"]
    if (rd / "checkpoints" / "last.pt").exists():
        return base + ["--resume", str(rd)]
    return base + ["--config", args.config, *args.overrides, *overrides, f"seed={seed}", f"threads={args.threads}",
                   f"out_dir={args.out}", f"run_name={rd.name}"]


def history(rd: Path) -> list[dict]:
    """The finished epochs of run directory ``rd``."""
    return [json.loads(line) for line in (rd / "history.jsonl").read_text().splitlines() if line.strip()]


def minutes(hist: list[dict]) -> float:
    """Training minutes of a run, as its epochs recorded them."""
    return sum(h["seconds"] for h in hist) / 60


def row(args, name: str, seed: int) -> dict | None:
    rd = run_dir(args.out, args.tag, name, seed)
    try:
        m = json.loads((rd / "metrics.json").read_text())
    except FileNotFoundError:
        return None
    hist = history(rd)
    v, t = m["val"], m["test"]
    return {
        "variant": name, "seed": seed, "val top1": v["top1"], "val mean class": v["mean_class_acc"],
        "test top1": t["top1"], "test mean class": t["mean_class_acc"],
        "many": t["many"], "medium": t["medium"], "few": t["few"],
        "epochs": len(hist), "minutes": minutes(hist),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--variant", action="append", required=True, help="NAME=key=value,key=value (empty: the base)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/strong"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path, help="path prefix of the .md / .csv table")
    ap.add_argument("--note", default="")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    variants = []
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        variants.append((name, [o for o in rest.split(",") if o]))
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = [c for s in seeds for n, o in variants if (c := command(args, n, o, s)) is not None]
    running: list[subprocess.Popen] = []
    t0 = time.time()
    while todo and not args.no_train:
        while todo and len(running) < args.jobs:
            cmd = todo.pop(0)
            print(" ".join(cmd[3:]), flush=True)
            running.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(5)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            print(f"finished (rc {p.returncode}) after {(time.time() - t0) / 60:.1f} min; {len(todo)} left", flush=True)
    for p in running:
        p.wait()
    rows = [r for s in seeds for n, _ in variants if (r := row(args, n, s)) is not None]
    cpu = hardware.cpu_info().describe()
    lines = [f"# {args.tag}: recipe variants, chosen on validation", "",
             (args.note + " " if args.note else "") + f"CPU: {cpu}; {args.jobs} runs at a time, {args.threads} thread each "
             "(minutes are each run's own epochs, slower than alone).", "",
             "Variants: " + "; ".join(f"**{n}**: `{' '.join(o) or '(the base config)'}`" for n, o in variants), "",
             "| " + " | ".join(COLUMNS) + " |", "| --- | " + " | ".join("---:" for _ in COLUMNS[1:]) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.with_suffix(".md").write_text(text)
        with args.results.with_suffix(".csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
