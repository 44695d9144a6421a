"""Does ``lvmlt predict --adapt`` help, and from how many images on?

``--adapt mapls|mlls|bbse`` calibrates a run's logits (BCTS fitted on its validation split),
estimates the class prior of the unlabelled batch and re-weights the posterior
(:func:`lvmlt.deploy.predictor.adapt`). This benchmark checks that on finished runs, with
the run's held-back test split as the pool of images:

- **shift study**: the test split (labels < 0 dropped) is resampled, seeded and with
  replacement, to ``N`` images (default ``min(2000, test size)``) under four target priors:
  ``uniform``; ``train`` (the training counts, normalised); ``reversed`` (the long tail
  reversed: the class with the k-th most training images gets the k-th fewest, i.e. the
  count array reversed when it is sorted); ``dirichlet`` (Dirichlet(1), a new prior per
  seed). Each batch is drawn as a multinomial of the prior, then one test image per label.
  Per prior and method: top-1 and mean class accuracy of the raw and the adapted predictions,
  and the L1 distance of the estimated prior to the batch's true label histogram beside the
  training prior's L1 distance to it. ``bcts`` is calibration alone (prior unchanged: the
  validation histogram); 5 seeds, mean ± std.
- **batch-size sweep**: for N in 10 ... 1000 on the ``reversed`` and ``dirichlet`` priors, the
  same measures with ``force=True`` (below :func:`~lvmlt.deploy.predictor.min_adapt_images`)
  over 50 draws: from which N MAPLS's estimate beats the training prior (L1) and its adapted
  top-1 beats raw, per data set; ``train`` is swept too (what adapting costs without shift).

The runs (one short CE run per built-in data set, one at a time; ``runs/`` is git-ignored;
add ``--resume`` to continue a killed one)::

    lvmlt train --config configs/elpv.yaml out_dir=runs/adaptation run_name=elpv-ce threads=1 --quiet
    lvmlt train --config configs/mnist-lt.yaml out_dir=runs/adaptation run_name=mnist-lt-ce threads=1 --quiet
    make fashion-mnist   # the Debian package dataset-fashion-mnist
    lvmlt train --config configs/fashion-mnist-lt.yaml out_dir=runs/adaptation run_name=fashion-mnist-lt-ce \\
        threads=1 --quiet

then (trains nothing itself)::

    python benchmarks/adaptation.py --runs runs/adaptation/elpv-ce runs/adaptation/mnist-lt-ce \\
        runs/adaptation/fashion-mnist-lt-ce --out benchmarks/results/adaptation

Writes ``adaptation.md`` (tables, verdicts, the recommended minimum batch) and
``adaptation.csv`` (one row per data set, study, prior, method, seed and N).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small NumPy products: one core is enough

import argparse
import csv
import datetime
import math
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_study import _ms  # noqa: E402

PRIORS = ("uniform", "train", "reversed", "dirichlet")
SHIFTED = ("reversed", "dirichlet")  # where the minimum batch is read off
SWEEP_PRIORS = (*SHIFTED, "train")  # train: what a small batch costs when there is no shift
METHODS = ("mapls", "mlls", "bbse")
ROW_METHODS = ("bcts", *METHODS)  # bcts: calibration alone, the prior left as the validation histogram
SWEEP_NS = (10, 20, 50, 100, 200, 500, 1000)
MEASURES = ("raw_top1", "adapted_top1", "raw_mca", "adapted_mca", "l1_est", "l1_train", "l1_uniform")
CSV_FIELDS = ("dataset", "classes", "study", "prior", "method", "seed", "n", *MEASURES)
TRAIN = {  # run directory name -> the command that made it
    "elpv-ce": "lvmlt train --config configs/elpv.yaml out_dir=runs/adaptation run_name=elpv-ce threads=1 --quiet",
    "mnist-lt-ce": "lvmlt train --config configs/mnist-lt.yaml out_dir=runs/adaptation run_name=mnist-lt-ce "
    "threads=1 --quiet",
    "fashion-mnist-lt-ce": "lvmlt train --config configs/fashion-mnist-lt.yaml out_dir=runs/adaptation "
    "run_name=fashion-mnist-lt-ce threads=1 --quiet",
}
_PRIOR_KEY = {p: i for i, p in enumerate(PRIORS)}


# ---------------------------------------------------------------------------------------
# Priors, batches, scores
# ---------------------------------------------------------------------------------------
def target_prior(name: str, train_counts: np.ndarray, present: np.ndarray, seed: int) -> np.ndarray:
    """The prior ``name`` over the C classes, zero on classes absent from the test pool."""
    counts = np.asarray(train_counts, dtype=np.float64)
    if name == "uniform":
        p = np.ones_like(counts)
    elif name == "train":
        p = counts.copy()
    elif name == "reversed":
        order = np.argsort(-counts, kind="stable")  # most to fewest training images
        p = np.empty_like(counts)
        p[order] = counts[order[::-1]]
    elif name == "dirichlet":
        p = np.random.default_rng((seed, 7919)).dirichlet(np.ones(len(counts)))
    else:
        raise ValueError(f"unknown prior {name!r}")
    p = np.where(present, p, 0.0)
    return p / p.sum()


def draw(by_class: list[np.ndarray], prior: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` pool images: labels drawn from ``prior``, an image per label, with replacement."""
    y = rng.choice(len(prior), size=n, p=prior)
    idx = np.empty(n, dtype=np.int64)
    for c in np.unique(y):
        at = np.flatnonzero(y == c)
        idx[at] = by_class[c][rng.integers(len(by_class[c]), size=len(at))]
    return idx


def accuracies(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(top-1, mean class accuracy over the classes in ``labels``), %."""
    hit = np.asarray(logits).argmax(1) == labels
    classes = np.unique(labels)
    return 100.0 * hit.mean(), 100.0 * float(np.mean([hit[labels == c].mean() for c in classes]))


def score_batch(spec: dict, preds: dict, idx: np.ndarray, methods=ROW_METHODS, force: bool = False) -> list[dict]:
    """One record per method for the test images ``idx`` (``preds`` as :func:`load_run` gives)."""
    from lvmlt.deploy.predictor import adapt

    logits, labels = preds["logits"][idx], preds["labels"][idx]
    c = len(spec["classes"])
    true = np.bincount(labels, minlength=c) / len(labels)
    l1_train = float(np.abs(preds["train_prior"] - true).sum())
    l1_uniform = float(np.abs(1.0 / c - true).sum())
    raw_top1, raw_mca = accuracies(logits, labels)
    ests = {m: adapt(spec, logits, m, preds["val_logits"], preds["val_labels"], force=force)
            for m in methods if m != "bcts"}
    out = []
    for method in methods:
        if method == "bcts":  # the calibration every method shares, with the prior left alone
            est = next(iter(ests.values()), None) or adapt(spec, logits, "mlls", preds["val_logits"],
                                                           preds["val_labels"], force=force)
            prior, adapted = est.source_prior, est.calibrated(logits)
        else:
            prior, adapted = ests[method].prior, ests[method].adapted(logits)
        top1, mca = accuracies(adapted, labels)
        out.append({"method": method, "n": len(idx), "raw_top1": raw_top1, "adapted_top1": top1, "raw_mca": raw_mca,
                    "adapted_mca": mca, "l1_est": float(np.abs(prior - true).sum()), "l1_train": l1_train,
                    "l1_uniform": l1_uniform})
    return out


def load_run(run_dir: str | Path) -> tuple[dict, dict]:
    """(spec, predictions) of a finished run: test logits and labels (labels < 0 dropped),
    validation logits and labels, the training prior."""
    from lvmlt.rundir import read_description, read_predictions

    spec, _ = read_description(run_dir)
    return spec, pool(read_predictions(run_dir))


def pool(arrays: dict) -> dict:
    keep = np.asarray(arrays["test_labels"]) >= 0
    counts = np.asarray(arrays["train_counts"], dtype=np.float64)
    return {"logits": np.asarray(arrays["test_logits"], dtype=np.float64)[keep],
            "labels": np.asarray(arrays["test_labels"], dtype=np.int64)[keep],
            "val_logits": np.asarray(arrays["val_logits"]), "val_labels": np.asarray(arrays["val_labels"]),
            "train_counts": counts, "train_prior": counts / counts.sum()}


def study(spec: dict, preds: dict, n: int | None = None, seeds=range(5), priors=PRIORS,
          sweep_ns=SWEEP_NS, sweep_reps: int = 50, sweep_priors=SWEEP_PRIORS) -> list[dict]:
    """Every record of one run: the shift study (``n`` images, default ``min(2000, pool)``) and the
    batch-size sweep. Each record: study, prior, method, seed, n and :data:`MEASURES`."""
    c = len(spec["classes"])
    labels = preds["labels"]
    by_class = [np.flatnonzero(labels == k) for k in range(c)]
    present = np.array([len(b) > 0 for b in by_class])
    n = n or min(2000, len(labels))
    plan = [("shift", p, s, n, False) for p in priors for s in seeds]
    plan += [("sweep", p, r, m, True) for m in sweep_ns for p in sweep_priors for r in range(sweep_reps)]
    rows = []
    for name, prior_name, seed, size, force in plan:
        prior = target_prior(prior_name, preds["train_counts"], present, seed)
        rng = np.random.default_rng((seed, size, _PRIOR_KEY[prior_name], int(name == "sweep")))
        methods = ROW_METHODS if name == "shift" else METHODS
        for r in score_batch(spec, preds, draw(by_class, prior, size, rng), methods, force):
            rows.append({"study": name, "prior": prior_name, "seed": seed, **r})
    return rows


# ---------------------------------------------------------------------------------------
# Tables and verdicts
# ---------------------------------------------------------------------------------------
def _select(rows: list[dict], **where) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def _mean(rows: list[dict], key: str, **where) -> float:
    return float(np.mean([r[key] for r in _select(rows, **where)]))


def _l1(values) -> str:
    v = np.array(list(values), dtype=float)
    return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def shift_table(rows: list[dict]) -> list[str]:
    out = ["| prior | method | raw top-1 | adapted top-1 | raw MCA | adapted MCA | L1 estimate | L1 training prior "
           "| L1 uniform |", "| --- | --- |" + " ---: |" * 7]
    for p in PRIORS:
        for m in ROW_METHODS:
            sel = _select(rows, study="shift", prior=p, method=m)
            if sel:
                cells = [_ms(r[k] for r in sel) for k in MEASURES[:4]] + [_l1(r[k] for r in sel) for k in MEASURES[4:]]
                out.append(f"| {p} | {m} | " + " | ".join(cells) + " |")
    return out


def crossing(rows: list[dict], prior: str, criterion: str = "l1", method: str = "mapls") -> int | None:
    """The smallest swept N from which on (and at every larger N) ``method`` wins on the mean over
    the draws: ``l1``, its estimate's L1 error is below the training prior's; ``top1``, its
    adapted top-1 is above the raw top-1. None if it does not win at the largest N."""
    found = None
    for n in sorted({r["n"] for r in _select(rows, study="sweep", prior=prior)}, reverse=True):
        sel = _select(rows, study="sweep", prior=prior, method=method, n=n)
        a, b = ("l1_train", "l1_est") if criterion == "l1" else ("adapted_top1", "raw_top1")
        if _mean(sel, a) <= _mean(sel, b):
            break
        found = n
    return found


def sweep_table(rows: list[dict], c: int) -> list[str]:
    out = ["| prior | N | N / C | L1 training prior | L1 uniform | L1 MAPLS | L1 MLLS | L1 BBSE | raw top-1 "
           "| MAPLS top-1 | MLLS top-1 | BBSE top-1 |", "| --- | ---: |" + " ---: |" * 10]
    for p in SWEEP_PRIORS:
        for n in sorted({r["n"] for r in _select(rows, study="sweep", prior=p)}):
            sel = _select(rows, study="sweep", prior=p, n=n)
            cells = [str(n), f"{n / c:.1f}", *(f"{_mean(sel, k, method='mapls'):.3f}" for k in ("l1_train", "l1_uniform"))]
            cells += [f"{_mean(sel, 'l1_est', method=m):.3f}" for m in METHODS]
            cells += [f"{_mean(sel, 'raw_top1', method='mapls'):.1f}"]
            cells += [f"{_mean(sel, 'adapted_top1', method=m):.1f}" for m in METHODS]
            out.append(f"| {p} | " + " | ".join(cells) + " |")
    return out


def _gain(rows: list[dict], key: str, **where) -> np.ndarray:
    return np.array([r[f"adapted_{key}"] - r[f"raw_{key}"] for r in _select(rows, study="shift", **where)])


def verdict(rows: list[dict]) -> list[str]:
    """Plain words: adapted minus raw per prior and method (mean over seeds, and on how many
    seeds adapted is better), then every place where adaptation loses on the mean."""
    lines, losses = [], []
    for p in PRIORS:
        cells = []
        for m in ROW_METHODS:
            parts, lost = [], []
            for key, word in (("top1", "top-1"), ("mca", "MCA")):
                d = _gain(rows, key, prior=p, method=m)
                if len(d):
                    parts.append(f"{word} {d.mean():+.2f} ({int((d > 0).sum())}/{len(d)} better)")
                    lost += [f"{word} {d.mean():+.2f}"] if d.mean() < 0 else []
            if parts:
                cells.append(f"{m} " + ", ".join(parts))
            if lost:
                losses.append(f"{m} on {p} ({', '.join(lost)})")
        if cells:
            lines.append(f"- {p}: " + "; ".join(cells))
    rev = []
    for m in METHODS:
        t, c = (_gain(rows, k, prior="reversed", method=m) for k in ("top1", "mca"))
        if len(t):
            word = "beats" if t.mean() > 0 and c.mean() > 0 else "beats in top-1 only" if t.mean() > 0 else "loses"
            rev.append(f"{m} {word} ({t.mean():+.2f} top-1, {c.mean():+.2f} MCA)")
    head = ["On the reversed tail, adapted vs raw: " + "; ".join(rev) + "."] if rev else []
    tail = ["", "Adaptation loses (adapted below raw on the mean; bcts = calibration alone): "
            + ("; ".join(losses) if losses else "nowhere") + "."]
    return [*head, "", "Adapted minus raw, points (seeds on which adapted is better):", "", *lines, *tail]


# ---------------------------------------------------------------------------------------
# The machine, the runs, the report
# ---------------------------------------------------------------------------------------
def cpu_name() -> str:
    """``lscpu``'s model name, family and model (the platform's processor name without lscpu)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or platform.machine()
    f = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
    return f"{f.get('Model name', '?')} (family {f.get('CPU family', '?')}, model {f.get('Model', '?')}; {os.cpu_count()} CPUs)"


def run_command(run_dir: Path) -> str:
    from lvmlt.rundir import read_config

    cfg = read_config(run_dir)
    c = cfg["config"]
    made = (f"{c['data']['name']}, {c['model']['backbone']}, loss {c['loss']['name']}, {c['optim']['epochs']} epochs, "
            f"seed {cfg.get('seed', '?')}")
    return f"`{TRAIN.get(run_dir.name, f'(run {run_dir.name})')}` ({made})"


def recommendation(per_ds: list[tuple[str, int, list[dict]]]) -> list[str]:
    """Per data set: from which N MAPLS's estimate beats the training prior and its adapted top-1
    beats raw on the shifted priors, and from which N adapting costs no top-1 without shift; the
    minimum batch rule that covers every data set where such an N exists."""
    lines, need, unsafe = [], [], []
    for ds, c, rows in per_ds:
        smallest = min((r["n"] for r in rows if r["study"] == "sweep"), default=0)

        def words(n, c=c, smallest=smallest):
            return f"from N = {n} ({n / c:.1f} per class{', the smallest swept' if n == smallest else ''})" \
                if n else "at no swept N"

        got = []
        for p in SHIFTED:
            l1, top1 = crossing(rows, p, "l1"), crossing(rows, p, "top1")
            lines.append(f"- {ds} (C = {c}), {p}: the estimate beats the training prior {words(l1)}; adapted top-1 "
                         f"beats raw {words(top1)}")
            got += [l1, top1]
        train = _select(rows, study="sweep", prior="train", method="mapls")
        if train:
            cost = ", ".join(f"{n}: {_mean(train, 'adapted_top1', n=n) - _mean(train, 'raw_top1', n=n):+.1f}"
                             for n in sorted({r["n"] for r in train}))
            safe = crossing(rows, "train", "top1")
            lines.append(f"- {ds}, no shift (train prior): adapted top-1 beats raw {words(safe)}; adapted minus raw "
                         f"by N: {cost}")
            got += [safe] if safe else []
            unsafe += [] if safe else [ds]
        need.append((ds, c, max(got) if all(got[:4]) else None))
    ok = [(c, n) for _, c, n in need if n]
    if not ok:
        return [*lines, "", "Under shift, adaptation does not win at the largest swept N of any data set: no "
                "minimum batch is recommended from these runs."]
    per_class = max(math.ceil(n / c) for c, n in ok)
    floor = max(n for _, n in ok)
    cs = sorted({c for c, _ in ok})
    left = [ds for ds, _, n in need if not n]
    return [*lines, "",
            f"Supported rule: at least **max({floor}, {per_class} x C)** images: the largest N any data set needed "
            "for the estimate and the adapted top-1 to win under shift, and for adapting to cost no top-1 without "
            "shift where some swept N achieves that (absolute, and per class). The crossings are on the swept grid, "
            "so each is an upper bound (the true one lies above the next smaller N). The data sets have "
            f"C = {', '.join(map(str, cs))} classes, too close to tell an absolute floor from a per-class rule."
            + (f" Left out (adaptation does not win under shift): {', '.join(left)}." if left else ""),
            *(["", f"Without shift, adapting costs top-1 at every swept N on {', '.join(unsafe)}: a larger batch "
               "shrinks the loss but does not remove it, so no minimum batch protects an unshifted batch there."]
              if unsafe else [])]


def summary(per_ds: list[tuple[str, int, list[dict]]]) -> list[str]:
    """One line per data set: the reversed tail with MAPLS, and MAPLS on the training prior."""
    out = ["| data set | C | raw top-1 | MAPLS top-1 | raw MCA | MAPLS MCA | L1 MAPLS | L1 training prior "
           "| MAPLS minus raw top-1, no shift |", "| --- | ---: |" + " ---: |" * 7]
    for ds, c, rows in per_ds:
        rev = _select(rows, study="shift", prior="reversed", method="mapls")
        if rev:
            cells = [_ms(r[k] for r in rev) for k in MEASURES[:4]] + [_l1(r[k] for r in rev) for k in MEASURES[4:6]]
            out.append(f"| {ds} | {c} | " + " | ".join(cells) + f" | {_ms(_gain(rows, 'top1', prior='train', method='mapls'))} |")
    return out


def report(per_ds: list[tuple[str, int, list[dict]]], runs: list[Path], notes: list[str], facts: dict,
           seeds: int, reps: int) -> str:
    md = ["# Label-shift adaptation (`lvmlt predict --adapt`): does it help, and from how many images?", "",
          f"CPU: {cpu_name()}. Date: {datetime.date.today().isoformat()}. "
          "Command: `python benchmarks/adaptation.py --runs " + " ".join(f"runs/adaptation/{r.name}" for r in runs)
          + " --out benchmarks/results/adaptation`.", "", "Runs (plain CE, trained one at a time, `threads=1`):", ""]
    md += [f"- {run_command(r)}" for r in runs]
    md += ["", "Per run, the held-back test split (labels < 0 dropped) is the pool: it is resampled, seeded and with "
           "replacement, to N = min(2000, pool size) images under each target prior (labels drawn from the prior, one "
           "pool image per label). *uniform*; *train* = the training counts normalised; *reversed* = the long tail "
           "reversed (the class with the k-th most training images gets the k-th fewest); *dirichlet* = "
           "Dirichlet(1), a new prior per seed. *raw* = the run's logits (`--adapt none`); *adapted* = "
           "BCTS-calibrated logits + log q - log p_s with q estimated on the batch by the method; *bcts* = "
           "calibration alone (q = p_s, the validation histogram). MCA = mean class accuracy over the classes in "
           "the batch. L1 = sum |q - true| against the batch's label histogram (0 to 2); *L1 training prior* and "
           "*L1 uniform* are the same for the normalised training counts and for the uniform prior (what an "
           "estimate that only shrinks towards uniform would score). Accuracies in %, mean ± std over "
           f"{seeds} seeds (on *dirichlet* the std includes the spread of the {seeds} priors). The batch-size sweep "
           f"uses `force=True` and {reps} draws per N (a new Dirichlet prior per draw); *train* is swept too, to "
           "show what adapting costs when there is no shift. Where a run's validation split is balanced (the counts "
           "below), the calibrated model already describes a uniform prior: BCTS alone then removes most of the "
           "long-tail bias, and the *bcts* rows show how much of a gain is the calibration's.", *notes, "",
           "Summary, reversed tail with MAPLS (the last column: on the training prior, i.e. without shift):", "",
           *summary(per_ds)]
    for ds, c, rows in per_ds:
        md += ["", f"## {ds} ({c} classes, N = {rows[0]['n']})", "", facts[ds], "", *shift_table(rows),
               "", *verdict(rows), "", f"### Batch-size sweep ({ds}, mean over {reps} draws)", "",
               *sweep_table(rows, c)]
    md += ["", "## Minimum batch for `--adapt`", "",
           "From which swept N on (and at every larger N) MAPLS's mean L1 error is below the training prior's, and "
           "its mean adapted top-1 above raw (`lvmlt.deploy.predictor` refuses batches below max(50, 10 x C) when "
           "this is written):", "", *recommendation(per_ds)]
    return "\n".join(md) + "\n"


def reuse(preds: dict, c: int, n: int | None) -> float:
    """How often, at most over the classes, one pool image is drawn into a reversed-prior batch."""
    counts = np.bincount(preds["labels"], minlength=c)
    prior = target_prior("reversed", preds["train_counts"], counts > 0, 0)
    n = n or min(2000, len(preds["labels"]))
    return float(np.max(n * prior / np.maximum(counts, 1)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, help="finished run directories (nothing is trained)")
    ap.add_argument("--out", default="benchmarks/results/adaptation")
    ap.add_argument("--n", type=int, default=None, help="batch size of the shift study (default min(2000, test size))")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sweep-reps", type=int, default=50)
    ap.add_argument("--note", action="append", default=[], help="a paragraph added under the method text")
    args = ap.parse_args(argv)
    per_ds, csv_rows, sizes, runs = [], [], {}, [Path(r) for r in args.runs]
    for run in runs:
        spec, preds = load_run(run)
        ds, c = run.name, len(spec["classes"])
        rows = study(spec, preds, args.n, range(args.seeds), sweep_reps=args.sweep_reps)
        per_ds.append((ds, c, rows))
        cal = spec["calibration"]
        sizes[ds] = (f"Images per class: training {preds['train_counts'].astype(int).tolist()}; validation (the "
                     f"calibrated model's prior p_s) {list(cal['val_label_counts'])}; test pool "
                     f"{np.bincount(preds['labels'], minlength=c).tolist()} ({len(preds['labels'])} images). BCTS "
                     f"temperature {float(cal['temperature']):.2f}. Under the reversed prior each test image of a "
                     f"class is drawn up to {reuse(preds, c, args.n):.1f} times per batch on average.")
        csv_rows += [{"dataset": ds, "classes": c, **r} for r in rows]
        print(f"{ds}: {len(rows)} records", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = report(per_ds, runs, [x for n in args.note for x in ("", n)], sizes, args.seeds, args.sweep_reps)
    (out / "adaptation.md").write_text(text)
    with open(out / "adaptation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in csv_rows)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
