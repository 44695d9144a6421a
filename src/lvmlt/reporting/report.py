"""``lvmlt report``: one self-contained HTML page for a set of finished runs, plus markdown tables.

The page opens offline: every figure is a PNG rendered with matplotlib's Agg renderer and
embedded as base64, the style sheet is inline, and there is no script and no external link.
The same tables are written as markdown next to it (``report.md`` for ``report.html``).

Runs whose configs are equal except for ``seed``, ``run_name`` and ``out_dir`` form one
*group* (one experiment over several seeds) and get one row with mean ± std over seeds;
every run also gets its own row. What the page shows:

- the Many / Medium / Few / All (top-1), mean class accuracy and ECE table of the test
  split (best epoch chosen on validation), with calibrated metrics as extra rows;
- per-class test accuracy against the class's training count (log scale), one series per
  group (mean over its seeds);
- a reliability diagram per group (the test predictions of its seeds pooled);
- the confusion matrix of the first run of each group;
- training curves: every loss term, the validation accuracies and the learning rate;
- each run's provenance (git commit, seed, encoder, weights sha256, data fingerprints of
  the feature store when it used one) and its full config.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from lvmlt.errors import UserError
from lvmlt.evaluation.metrics import format_table, mean_std_table
from lvmlt.rundir import atomic_write_text as _write_atomic  # a reader never sees a half-written page

COLUMNS = ("many", "medium", "few", "top1", "mean_class_acc", "ece")
# Config keys that differ between the seeds of one experiment; everything else must match.
SEED_KEYS = ("seed", "run_name", "out_dir")
ANNOTATE_MAX_CLASSES = 20  # beyond this, numbers in confusion-matrix cells are unreadable
TICK_LABEL_MAX_CLASSES = 40
_CHUNK_ROWS = 4096  # test logits are reduced in chunks: a 100k x 8k float64 copy would not fit
_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
_LINESTYLES = ("-", "--", ":", "-.")
_RUN_HINT = "pass a directory made by `lvmlt train` (it holds config.yaml and metrics.json)"


# ---------------------------------------------------------------------------------------
# Reading run directories
# ---------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What a report shows about one run directory.

    Attributes:
        path: the run directory.
        name: display name: the directory name, with parent folders when names collide.
        saved: ``config.yaml``: {"config": {...}, "git_commit": str | None, "seed": int}.
        metrics: ``metrics.json``: {"best_epoch", "selected_on", "val", "test", ...}.
        history: one dict per finished epoch from ``history.jsonl``, sorted by epoch.
        train_counts: training images per class, shape (C,); None without predictions.
        confidence: top-1 softmax probability of each evaluated test image, shape (N,),
            in [0, 1] (images with label -1, i.e. skipped, are left out).
        correct: whether each of those top-1 predictions is right, shape (N,), bool.
        manifest: the feature store's ``manifest.json`` when the run used a store and it
            could be read; its schema belongs to :mod:`lvmlt.features`, so it is read
            defensively.
        manifest_path: where that manifest was found (or first looked for).
        notes: problems met while reading, shown on the page instead of failing.
    """

    path: Path
    name: str
    saved: dict
    metrics: dict
    history: list[dict] = field(default_factory=list)
    train_counts: np.ndarray | None = None
    confidence: np.ndarray | None = None
    correct: np.ndarray | None = None
    manifest: dict | None = None
    manifest_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict:
        return self.saved["config"]

    @property
    def seed(self):
        return self.saved.get("seed", self.config.get("seed"))

    @property
    def test(self) -> dict:
        return self.metrics["test"]


def read_run(run_dir: str | Path) -> RunRecord:
    """Read a finished run directory.

    Args:
        run_dir: a directory written by ``lvmlt train``.

    Returns:
        Its :class:`RunRecord`. Missing optional files (history, predictions, feature
        store) are recorded in ``notes``.

    Raises:
        UserError: the path is not a run directory, or the run has not finished.
    """
    path = Path(run_dir)
    if not path.exists():
        raise UserError(f"run directory {path} does not exist", fix=_RUN_HINT)
    if not path.is_dir():
        raise UserError(f"{path} is not a run directory (it is a file)", fix=_RUN_HINT)
    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        inner = sorted(p.name for p in path.iterdir() if (p / "config.yaml").is_file())
        fix = f"it holds {len(inner)} run directories: pass them, e.g. {path}/*" if inner else _RUN_HINT
        raise UserError(f"{path} is not a run directory (no config.yaml)", fix=fix)
    try:
        saved = yaml.safe_load(cfg_file.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f"{cfg_file} line {line + 1}" if line is not None else str(cfg_file)
        raise UserError("config.yaml is not valid YAML", where=where, fix=_RUN_HINT) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise UserError(f"{cfg_file} is not a run config (no 'config' section)", fix=_RUN_HINT)
    metrics_file = path / "metrics.json"
    if not metrics_file.is_file():
        raise UserError(
            f"run {path} has not finished (no metrics.json)",
            fix="finish it with `lvmlt train --resume`, or leave it out of the report",
        )
    try:
        metrics = json.loads(metrics_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(
            f"{metrics_file} is not valid JSON (line {e.lineno})",
            fix="re-evaluate with `lvmlt evaluate RUN_DIR`",
        ) from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("test"), dict):
        raise UserError(
            f"{metrics_file} has no test metrics", fix="re-evaluate with `lvmlt evaluate RUN_DIR`"
        )

    run = RunRecord(path=path, name=path.name, saved=saved, metrics=metrics)
    run.history = _read_history(path / "history.jsonl", run.notes)
    _read_predictions(path / "predictions.npz", run)
    run.manifest, run.manifest_path = _read_manifest(path, run.config, run.notes)
    return run


def _read_history(path: Path, notes: list[str]) -> list[dict]:
    if not path.is_file():
        notes.append("no history.jsonl: no training curves")
        return []
    by_epoch: dict[int, dict] = {}
    bad = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
            by_epoch[rec["epoch"]] = rec  # a resumed run may log an epoch twice: the last counts
        else:
            bad += 1
    if bad:
        notes.append(f"history.jsonl: {bad} unreadable line(s) skipped")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _read_predictions(path: Path, run: RunRecord) -> None:
    if not path.is_file():
        run.notes.append("no predictions.npz: no reliability diagram or per-class plot")
        return
    try:
        with np.load(path) as z:
            counts = np.asarray(z["train_counts"])
            logits, labels = z["test_logits"], np.asarray(z["test_labels"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        run.notes.append(f"predictions.npz is unreadable ({e}): no reliability diagram or per-class plot")
        return
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[1] != counts.shape[0]:
        run.notes.append(
            f"predictions.npz: test_logits has shape {logits.shape}, which does not match the labels"
        )
        return
    keep = labels >= 0  # -1 marks an unreadable test image that was skipped
    run.train_counts = counts
    run.confidence, run.correct = top1_confidence(logits[keep], labels[keep])


def top1_confidence(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 softmax probability and correctness, computed as :func:`compute_metrics` does.

    Args:
        logits: N x C scores.
        labels: N true classes (all >= 0).

    Returns:
        ``confidence`` (N,) float64 in [0, 1] and ``correct`` (N,) bool.
    """
    n = logits.shape[0]
    confidence, correct = np.empty(n), np.empty(n, dtype=bool)
    for s in range(0, n, _CHUNK_ROWS):
        x = np.asarray(logits[s : s + _CHUNK_ROWS], dtype=np.float64)
        x = x - x.max(axis=1, keepdims=True)
        # The same float64 arithmetic as compute_metrics, so that images on a bin edge land
        # in the same bin and the ECE here equals the one in metrics.json.
        confidence[s : s + _CHUNK_ROWS] = np.exp(-np.log(np.exp(x).sum(axis=1)))
        correct[s : s + _CHUNK_ROWS] = x.argmax(axis=1) == labels[s : s + _CHUNK_ROWS]
    return confidence, correct


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> dict:
    """Equal-width confidence bins (lower, upper] on [0, 1], as used for ECE.

    Args:
        confidence: (N,) top-1 probabilities.
        correct: (N,) bool.
        n_bins: number of bins.

    Returns:
        {"edges": (n_bins + 1,), "count": (n_bins,) int, "confidence": (n_bins,) mean
        confidence, "accuracy": (n_bins,) fraction correct (both NaN for empty bins),
        "ece": sum_b n_b / N * |acc_b - conf_b| in %}.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.digitize(confidence, edges[1:-1], right=True)
    count = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=confidence, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, acc = sum_conf / count, sum_acc / count
    ece = 100.0 * np.abs(sum_acc - sum_conf).sum() / max(1, len(confidence))
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc, "ece": float(ece)}


def _read_manifest(run_dir: Path, config: dict, notes: list[str]) -> tuple[dict | None, Path | None]:
    store = (config.get("fusion") or {}).get("store")
    if not store:
        return None, None
    p = Path(str(store)).expanduser()
    # A relative store path is relative to where training ran; next to the run is a good guess too.
    candidates = [p] if p.is_absolute() else [p, run_dir.parent / p, run_dir / p]
    for c in candidates:
        f = c / "manifest.json"
        if not f.is_file():
            continue
        try:
            manifest = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            notes.append(f"feature-store manifest {f} is unreadable ({e})")
            return None, f
        if not isinstance(manifest, dict):
            notes.append(f"feature-store manifest {f} is not a JSON object")
            return None, f
        return manifest, f
    notes.append(f"feature store {store} is not on this machine: its provenance is not shown")
    return None, candidates[0] / "manifest.json"


# ---------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------
def _is_scalar(v) -> bool:
    return v is None or isinstance(v, str | bool | int | float)


def _lookup(d: dict, *paths: Sequence[str]):
    """The first scalar found at one of the key paths (the manifest schema may change)."""
    for path in paths:
        cur: Any = d
        for k in path:
            cur = cur.get(k) if isinstance(cur, dict) else None
        if cur is not None and _is_scalar(cur):
            return cur
    return None


def _fingerprints(manifest: dict) -> dict[str, str]:
    splits = manifest.get("splits")
    out = {}
    if isinstance(splits, dict):
        for name, s in splits.items():
            if isinstance(s, dict) and _is_scalar(s.get("fingerprint")) and s.get("fingerprint"):
                out[str(name)] = str(s["fingerprint"])
    for key in ("fingerprint", "data_fingerprint"):
        if _is_scalar(manifest.get(key)) and manifest.get(key):
            out.setdefault("data", str(manifest[key]))
    return out


def provenance(run: RunRecord) -> dict[str, Any]:
    """Where a run came from: commit, seed, backbone and, with a feature store, its encoder.

    Returns:
        {"git_commit", "seed", "backbone", "feature_store", "encoder", "img_size",
        "weights_sha256", "fingerprints": {split: sha}}; unknown values are None.
    """
    m = run.manifest or {}
    return {
        "git_commit": run.saved.get("git_commit"),
        "seed": run.seed,
        "backbone": (run.config.get("model") or {}).get("backbone"),
        "feature_store": (run.config.get("fusion") or {}).get("store"),
        "encoder": _lookup(m, ("provenance", "encoder"), ("encoder", "name"), ("encoder",)),
        "img_size": _lookup(m, ("provenance", "img_size"), ("encoder", "img_size"), ("img_size",)),
        "weights_sha256": _lookup(
            m, ("provenance", "weights_sha256"), ("encoder", "weights_sha256"), ("weights_sha256",)
        ),
        # the trainer records every split's fingerprint; a feature store states its own
        "fingerprints": {**(run.saved.get("data_fingerprint") or {}), **_fingerprints(m)},
    }


def _flatten(d: dict, prefix: str = "", depth: int = 3) -> dict[str, Any]:
    """Dotted keys -> scalar values; short lists of scalars are joined, the rest left out."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            if depth > 1:
                out.update(_flatten(v, key + ".", depth - 1))
        elif isinstance(v, list | tuple):
            if len(v) <= 8 and all(_is_scalar(x) for x in v):
                out[key] = "[" + ", ".join(str(x) for x in v) + "]"
        elif _is_scalar(v):
            out[key] = v
    return out


def _short(value, n: int = 12) -> str | None:
    return None if value is None else str(value)[:n]


# ---------------------------------------------------------------------------------------
# Grouping runs that differ only by seed
# ---------------------------------------------------------------------------------------
@dataclass
class RunGroup:
    """Runs of one experiment (equal configs but for the seed).

    Attributes:
        label: short display name.
        runs: its runs, in the order given.
        differences: config keys whose values differ from the first group's, "k=v, ...".
        color: matplotlib colour of the group in every figure.
    """

    label: str
    runs: list[RunRecord]
    differences: str
    color: str

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]


def group_key(config: dict) -> str:
    """The part of a config that defines an experiment: all but seed, run_name and out_dir."""
    return json.dumps({k: v for k, v in config.items() if k not in SEED_KEYS}, sort_keys=True, default=str)


def _strip_seed(name: str) -> str:
    stripped = re.sub(r"(^|[-_.])seed[-_=]?\d+", "", name, flags=re.IGNORECASE).strip("-_.")
    return stripped or name


def group_runs(runs: Sequence[RunRecord]) -> list[RunGroup]:
    """Group runs by :func:`group_key`, in order of first appearance."""
    keyed: dict[str, list[RunRecord]] = {}
    for r in runs:
        keyed.setdefault(group_key(r.config), []).append(r)
    members = list(keyed.values())
    reference = _flatten({k: v for k, v in members[0][0].config.items() if k not in SEED_KEYS}, depth=4)
    diffs = []
    for rs in members:
        flat = _flatten({k: v for k, v in rs[0].config.items() if k not in SEED_KEYS}, depth=4)
        changed = [
            f"{k}={flat.get(k)}"
            for k in dict.fromkeys([*flat, *reference])
            if flat.get(k) != reference.get(k)
        ]
        if len(changed) > 6:  # runs of unrelated setups: the first few say enough
            changed = [*changed[:6], f"... {len(changed) - 6} more"]
        diffs.append(", ".join(changed))
    labels = [_strip_seed(rs[0].name) for rs in members]
    for i, label in enumerate(labels):
        if labels.count(label) > 1 and diffs[i]:
            short = diffs[i] if len(diffs[i]) <= 60 else diffs[i][:57] + "..."
            labels[i] = f"{label} ({short})"
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # still equal (e.g. two reference-like groups): number them
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    diffs[0] = "(reference)"
    return [
        RunGroup(label, rs, d or "-", _COLORS[i % len(_COLORS)])
        for i, (label, rs, d) in enumerate(zip(labels, members, diffs, strict=True))
    ]


def _unique_names(runs: Sequence[RunRecord]) -> None:
    """Directory names, with as many parent folders as it takes to tell them apart."""
    for depth in range(1, 1 + max(len(r.path.resolve().parts) for r in runs)):
        names = ["/".join(r.path.resolve().parts[-depth:]) for r in runs]
        if len(set(names)) == len(names):
            for r, n in zip(runs, names, strict=True):
                r.name = n
            return


# ---------------------------------------------------------------------------------------
# Tables (markdown from lvmlt.evaluation.metrics, turned into HTML for the page)
# ---------------------------------------------------------------------------------------
def _rename_first_header(md: str, name: str) -> str:
    first, _, rest = md.partition("\n")
    return re.sub(r"^\| [^|]+ \|", f"| {name} |", first, count=1) + "\n" + rest


def _calibrated(run: RunRecord) -> dict[str, dict]:
    cal = run.metrics.get("calibrated")
    if not isinstance(cal, dict):
        return {}
    return {
        str(k): v["test"] for k, v in cal.items() if isinstance(v, dict) and isinstance(v.get("test"), dict)
    }


def summary_table(groups: Sequence[RunGroup]) -> str:
    """Mean ± std over seeds per group (test split), each calibration method as an extra row."""
    rows: dict[str, list[dict]] = {}
    for g in groups:
        rows[g.label] = [r.test for r in g.runs]
        methods = dict.fromkeys(m for r in g.runs for m in _calibrated(r))
        for m in methods:
            rows[f"{g.label} +{m}"] = [_calibrated(r)[m] for r in g.runs if m in _calibrated(r)]
    return _rename_first_header(mean_std_table(rows, COLUMNS), "group")


def runs_table(groups: Sequence[RunGroup]) -> str:
    """One row per run (test split), calibrated metrics as extra rows."""
    rows: dict[str, dict] = {}
    for g in groups:
        for r in g.runs:
            rows[r.name] = {"group": g.label, "seed": r.seed, **r.test}
            for m, test in _calibrated(r).items():
                rows[f"{r.name} +{m}"] = {"group": g.label, "seed": r.seed, **test}
    return format_table(rows, ("group", "seed", *COLUMNS))


def groups_table(groups: Sequence[RunGroup]) -> str:
    rows = {
        g.label: {
            "runs": len(g.runs),
            "seeds": ", ".join(str(s) for s in g.seeds),
            "config vs. first group": g.differences,
        }
        for g in groups
    }
    return _rename_first_header(format_table(rows, ("runs", "seeds", "config vs. first group")), "group")


def provenance_table(groups: Sequence[RunGroup]) -> str:
    rows = {}
    for g in groups:
        for r in g.runs:
            p = provenance(r)
            fps = p["fingerprints"]
            epochs = (r.config.get("optim") or {}).get("epochs")
            best = r.metrics.get("best_epoch")  # 0-based in metrics.json, 1-based on screen
            if best is not None:
                best = f"{best + 1}/{epochs}" if epochs else best + 1
            rows[r.name] = {
                "seed": p["seed"],
                "git commit": _short(p["git_commit"]),
                "backbone": p["backbone"],
                "encoder": p["encoder"],
                "weights sha256": _short(p["weights_sha256"]),
                "data fingerprint": ", ".join(f"{k} {v[:12]}" for k, v in fps.items()) or None,
                "best epoch": best,
            }
    cols = ("seed", "git commit", "backbone", "encoder", "weights sha256", "data fingerprint", "best epoch")
    return format_table(rows, cols)


_NUMBER = re.compile(r"^[-+]?\d[\d.]*(e[-+]?\d+)?( ± \d[\d.]*)?$|^\d+/\d+$")


def _md_to_html(md: str, colors: dict[str, str] | None = None) -> str:
    """An HTML table from a markdown table written by :mod:`lvmlt.evaluation.metrics`.

    Columns whose cells are all numbers (or "-") are right-aligned; text columns stay left.
    """

    def cells(line: str) -> list[str]:
        inner = line.strip()[2:-2]
        return [c.replace("\\|", "|") for c in re.split(r"(?<!\\) \| ", inner)]

    lines = md.strip().splitlines()
    header, body = cells(lines[0]), [cells(line) for line in lines[2:]]
    numeric = [
        i > 0 and all(_NUMBER.match(row[i]) or row[i] == "-" for row in body if i < len(row))
        for i in range(len(header))
    ]
    out = ['<div class="scroll"><table>', "<thead><tr>"]
    out += [
        f'<th class="{"num" if n else ""}">{html.escape(h)}</th>'
        for h, n in zip(header, numeric, strict=True)
    ]
    out.append("</tr></thead><tbody>")
    for row in body:
        out.append("<tr>")
        for i, c in enumerate(row):
            text = html.escape(c)
            if i == 0 and colors:
                color = next((v for k, v in colors.items() if c == k or c.startswith(k + " +")), None)
                if color:
                    text = f'<span class="swatch" style="background:{color}"></span>{text}'
            out.append(f'<td class="{"num" if i < len(numeric) and numeric[i] else ""}">{text}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


# ---------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot state, so notebooks keep their backend)
# ---------------------------------------------------------------------------------------
def _png_base64(fig: Figure) -> str:
    buf = io.BytesIO()
    # No "Software" metadata: the page must not carry even an embedded URL.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _thresholds(runs: Iterable[RunRecord]) -> tuple[Any, Any]:
    for r in runs:
        t = r.test.get("thresholds")
        if isinstance(t, dict):
            return t.get("many"), t.get("few")
    return None, None


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():  # a class absent from every seed's test set stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def figure_per_class(groups: Sequence[RunGroup]) -> Figure | None:
    """Per-class test accuracy (mean over seeds) against training images per class."""
    fig = Figure(figsize=(9.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    plotted, has_zero = False, False
    for g in groups:
        runs = [
            r for r in g.runs
            if r.train_counts is not None and len(r.test.get("per_class_acc") or []) == len(r.train_counts)
        ]  # fmt: skip
        if not runs:
            continue
        counts = runs[0].train_counts
        runs = [r for r in runs if np.array_equal(r.train_counts, counts)]
        acc = np.array([[np.nan if a is None else float(a) for a in r.test["per_class_acc"]] for r in runs])
        mean = _nanmean(acc, axis=0)
        ok = ~np.isnan(mean)
        x, y = counts[ok].astype(np.float64), mean[ok]
        has_zero |= bool((x == 0).any())
        ax.scatter(x, y, s=16 if len(x) <= 200 else 6, color=g.color, alpha=0.5, linewidths=0)
        # The line follows the mean over classes with the same count, so ties do not zigzag.
        ux = np.unique(x)
        ax.plot(ux, [y[x == u].mean() for u in ux], color=g.color, lw=1.6, label=f"{g.label} (n={len(runs)})")
        plotted = True
    if not plotted:
        return None
    # log(0) is undefined; symlog keeps a class with no training image visible at 0.
    if has_zero:
        ax.set_xscale("symlog", linthresh=1)
    else:
        ax.set_xscale("log")
    # Plain counts ("10", "100") read faster than powers of ten.
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    many, few = _thresholds(r for g in groups for r in g.runs)
    if many is not None and few is not None:
        for t in (few, many):
            ax.axvline(t, color="0.45", ls="--", lw=0.9)
        ax.plot(
            [], [], color="0.45", ls="--", lw=0.9, label=f"groups: few < {few} <= medium <= {many} < many"
        )
    ax.set_ylim(-3, 103)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def figure_reliability(groups: Sequence[RunGroup]) -> tuple[Figure | None, dict[str, float]]:
    """One reliability diagram per group, the test predictions of its seeds pooled.

    Returns:
        The figure (None when no run has predictions) and the pooled ECE (%) per group label.
    """
    items = []
    for g in groups:
        runs = [r for r in g.runs if r.confidence is not None]
        if runs:
            bins = int((runs[0].config.get("eval") or {}).get("ece_bins") or 15)
            conf = np.concatenate([r.confidence for r in runs])
            correct = np.concatenate([r.correct for r in runs])
            items.append((g, runs, reliability_bins(conf, correct, bins)))
    if not items:
        return None, {}
    cols = min(len(items), 3)
    rows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(3.8 * cols, 3.9 * rows), layout="constrained")
    pooled = {}
    for i, (g, runs, rb) in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1)
        edges, has = rb["edges"], rb["count"] > 0
        centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        acc, conf = rb["accuracy"][has], rb["confidence"][has]
        ax.bar(
            centers[has],
            acc,
            width=width[has],
            color=g.color,
            alpha=0.85,
            edgecolor="white",
            label="accuracy",
        )
        ax.bar(
            centers[has], conf - acc, bottom=acc, width=width[has], fill=False, hatch="//",
            edgecolor="#d62728", lw=0.6, label="gap to confidence",
        )  # fmt: skip
        ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1)
        ece = np.array([r.test["ece"] for r in runs if r.test.get("ece") is not None], dtype=np.float64)
        seeds = (
            f"{ece.mean():.2f} ± {ece.std(ddof=1):.2f}"
            if len(ece) > 1
            else (f"{ece[0]:.2f}" if len(ece) else "-")
        )
        pooled[g.label] = rb["ece"]
        ax.set_title(f"{g.label}\nECE {seeds}% (n={len(runs)}); pooled {rb['ece']:.2f}%", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_ylabel("accuracy")
        ax.set_aspect("equal")
        if i == 0:
            ax.legend(fontsize=7, loc="upper left")
    return fig, pooled


def figure_confusion(run: RunRecord, group: RunGroup) -> Figure | None:
    """Row-normalised test confusion matrix (% of each true class), classes head to tail."""
    matrix = np.asarray(run.test.get("confusion") or [], dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[0] != matrix.shape[1]:
        return None
    c = matrix.shape[0]
    counts = run.train_counts
    # Sorted by training count, so the head-to-tail structure shows as a gradient along the diagonal.
    order = np.argsort(-counts, kind="stable") if counts is not None and len(counts) == c else np.arange(c)
    m = matrix[order][:, order]
    support = m.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(support > 0, 100.0 * m / support, np.nan)
    side = min(8.5, max(4.2, 0.3 * c + 2.5))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(
        pct, cmap="Blues", vmin=0, vmax=100, interpolation="nearest" if c <= 300 else "antialiased"
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="% of the true class's test images")
    if c <= TICK_LABEL_MAX_CLASSES:
        ticks, labels = np.arange(c), [str(i) for i in order]
        ax.set_xticks(ticks, labels, fontsize=7, rotation=90 if c > 12 else 0)
        ax.set_yticks(ticks, labels, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if c <= ANNOTATE_MAX_CLASSES:
        for i in range(c):
            for j in range(c):
                if m[i, j] > 0:
                    ax.text(
                        j, i, f"{pct[i, j]:.0f}", ha="center", va="center", fontsize=7 if c > 10 else 8,
                        color="white" if pct[i, j] > 60 else "black",
                    )  # fmt: skip
    how = "class index, sorted by training count (head first)" if counts is not None else "class index"
    ax.set_xlabel(f"predicted {how}")
    ax.set_ylabel("true class")
    ax.set_title(f"{group.label}: {run.name}", fontsize=10)
    return fig


def _curve_keys(runs: Sequence[RunRecord]) -> list[str]:
    keys = dict.fromkeys(k for r in runs for h in r.history for k in h)
    train = [k for k in keys if k.startswith("train/")]
    train.sort(key=lambda k: k != "train/total")  # the total first, then the terms as logged
    val = [k for k in keys if k.startswith("val/")]
    return train + val + (["lr"] if "lr" in keys else [])


def figure_curves(groups: Sequence[RunGroup]) -> Figure | None:
    """Loss terms, validation accuracies and learning rate by epoch; one line per run."""
    runs = [r for g in groups for r in g.runs if r.history]
    keys = _curve_keys(runs)
    if not keys:
        return None
    cols = min(len(keys), 3)
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.3 * cols, 2.9 * rows + 0.6), layout="constrained")
    axes = {k: fig.add_subplot(rows, cols, i + 1) for i, k in enumerate(keys)}
    for g in groups:
        for j, r in enumerate(g.runs):
            best = r.metrics.get("best_epoch")
            for k, ax in axes.items():
                pts = [(h["epoch"] + 1, h[k]) for h in r.history if isinstance(h.get(k), int | float)]
                pts = [(e, v) for e, v in pts if math.isfinite(v)]
                if not pts:
                    continue
                e, v = zip(*pts, strict=True)
                ax.plot(
                    e, v, color=g.color, ls=_LINESTYLES[j % len(_LINESTYLES)], lw=1.3,
                    marker="o" if len(e) <= 15 else None, ms=3, label=g.label if j == 0 else None,
                )  # fmt: skip
                if k == r.metrics.get("selected_on") and best in [x - 1 for x in e]:
                    ax.plot(
                        best + 1, v[e.index(best + 1)], marker="*", ms=11, color=g.color, mec="black", mew=0.5
                    )
    for k, ax in axes.items():
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss" if k.startswith("train/") else ("%" if k.startswith("val/") else k))
        ax.grid(alpha=0.3)
    handles, labels = next(iter(axes.values())).get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------
_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d2329; background: #fff; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 24px; margin: 4px 0 2px; } h2 { font-size: 19px; margin: 30px 0 8px;
     border-bottom: 2px solid #e3e8ee; padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
.meta, .note, figcaption { color: #56606b; font-size: 13px; }
nav a { margin-right: 14px; color: #1f5fa8; text-decoration: none; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid #d9dee4; padding: 4px 9px; text-align: left; white-space: nowrap; }
th { background: #f1f4f7; } tbody tr:nth-child(even) { background: #f9fafb; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 6px; border-radius: 2px; }
figure { margin: 10px 0 22px; } img { max-width: 100%; height: auto; border: 1px solid #eef1f4; }
details { margin: 6px 0; border: 1px solid #e3e8ee; border-radius: 4px; padding: 4px 10px; }
summary { cursor: pointer; font-weight: 600; }
pre { background: #f6f8fa; padding: 8px 10px; overflow: auto; font-size: 12px; max-height: 420px; }
.warn { color: #8a4b00; }
.figrow { display: flex; flex-wrap: wrap; gap: 0 18px; align-items: flex-start; }
"""


def _kv_table(items: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape('-' if v is None else str(v))}</td></tr>"
        for k, v in items.items()
    )
    return f'<div class="scroll"><table><tbody>{rows}</tbody></table></div>'


def _run_details(run: RunRecord, group: RunGroup) -> str:
    p = provenance(run)
    best = run.metrics.get("best_epoch")
    info: dict[str, Any] = {
        "run directory": str(run.path.resolve()),
        "group": group.label,
        "seed": p["seed"],
        "git commit": p["git_commit"],
        "best epoch (1-based)": None if best is None else best + 1,
        "selected on": run.metrics.get("selected_on"),
        "skipped images": run.metrics.get("skipped_images"),
    }
    # Fields later versions add to config.yaml (e.g. a data fingerprint) show up without code changes.
    info.update(
        {
            k: v
            for k, v in _flatten(run.saved, depth=2).items()
            if not k.startswith("config.") and k not in ("git_commit", "seed")
        }
    )
    if p["feature_store"]:
        info["feature store"] = p["feature_store"]
        info["store manifest"] = str(run.manifest_path) if run.manifest_path else None
        info["encoder"] = p["encoder"]
        info["encoder img_size"] = p["img_size"]
        info["encoder weights sha256"] = p["weights_sha256"]
        for split, fp in p["fingerprints"].items():
            info[f"data fingerprint ({split})"] = fp
    parts = [
        f'<details id="run-{html.escape(_slug(run.name))}"><summary><span class="swatch" '
        f'style="background:{group.color}"></span>{html.escape(run.name)} '
        f'<span class="meta">seed {html.escape(str(p["seed"]))}, commit {html.escape(_short(p["git_commit"]) or "-")}'
        "</span></summary>",
        _kv_table(info),
    ]
    if run.notes:
        parts.append("<ul>" + "".join(f'<li class="warn">{html.escape(n)}</li>' for n in run.notes) + "</ul>")
    if run.manifest is not None:
        top = {k: v for k, v in run.manifest.items() if _is_scalar(v)}
        parts += ["<h3>Feature store manifest (top-level fields)</h3>", _kv_table(top)]
        parts += [
            "<h3>Feature store manifest (all scalar fields)</h3>",
            _kv_table(_flatten(run.manifest, depth=3)),
        ]
    cfg_text = yaml.safe_dump(run.config, sort_keys=False)
    parts += ["<h3>Config</h3>", f"<pre>{html.escape(cfg_text)}</pre>", "</details>"]
    return "".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def _figure_html(fig_id: str, b64: str, alt: str, caption: str) -> str:
    return (
        f'<figure id="fig-{fig_id}"><img alt="{html.escape(alt)}" data-figure="{html.escape(fig_id)}" '
        f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def write_report(run_dirs: Sequence[str | Path], out: str | Path, title: str | None = None) -> dict:
    """Write the HTML report of ``run_dirs`` to ``out`` and its tables to ``out`` with ``.md``.

    Args:
        run_dirs: finished run directories (``lvmlt train`` output). A directory given
            twice counts once.
        out: the HTML file to write (parent folders are created).
        title: page title; default "lvmlt report (N runs)".

    Returns:
        {"html": Path, "markdown": Path, "table": summary markdown (mean ± std per group),
        "figures": figure ids in page order (one ``<img>`` each), "groups": [{"label",
        "runs": [Path], "seeds": [...], "ece_pooled": % or None}], "notes": {run: [...]}}.

    Raises:
        UserError: no run given, a path that is not a finished run directory, or ``out``
            is a directory.
    """
    if not run_dirs:
        raise UserError("no run directory given", fix="pass one or more directories made by `lvmlt train`")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory", fix="give a file name, e.g. report.html")
    md_path = out.with_suffix(".md")
    if md_path == out:
        raise UserError(
            f"--out {out} ends in .md, which is where the markdown tables go", fix="use report.html"
        )
    paths = list(dict.fromkeys(Path(p).resolve() for p in run_dirs))
    runs = [read_run(p) for p in paths]
    _unique_names(runs)
    groups = group_runs(runs)
    title = title or f"lvmlt report ({len(runs)} run{'s' if len(runs) != 1 else ''})"
    colors = {g.label: g.color for g in groups}

    tables = {
        "summary": summary_table(groups),
        "groups": groups_table(groups),
        "runs": runs_table(groups),
        "provenance": provenance_table(groups),
    }
    many, few = _thresholds(runs)
    distinct = {json.dumps(r.test.get("thresholds"), sort_keys=True) for r in runs}
    scope = (
        "Test split at the epoch chosen on validation; accuracies and ECE in %. "
        + (f"Groups by training images per class: many > {many}, few < {few}. " if many is not None else "")
        + ("Runs use different group thresholds (see metrics.json). " if len(distinct) > 1 else "")
    )

    figures: list[tuple[str, str, str, str]] = []  # (id, base64 png, alt, caption)
    fig = figure_per_class(groups)
    if fig is not None:
        figures.append(("per_class", _png_base64(fig), "per-class accuracy against training count",
                        "Per-class test accuracy against the class's training images (log scale); "
                        "dots are classes (mean over seeds), lines the mean over classes of equal count."))  # fmt: skip
    fig, pooled = figure_reliability(groups)
    if fig is not None:
        figures.append(("reliability", _png_base64(fig), "reliability diagrams",
                        "Reliability diagrams of the test split, seeds of a group pooled; ECE as mean ± std "
                        "over seeds (as in the table) and of the pooled predictions."))  # fmt: skip
    for i, g in enumerate(groups):
        fig = figure_confusion(g.runs[0], g)
        if fig is not None:
            figures.append((f"confusion_{i}", _png_base64(fig), f"confusion matrix of {g.runs[0].name}",
                            f"Confusion matrix of {g.runs[0].name} (first run of {g.label}), rows normalised."))  # fmt: skip
    fig = figure_curves(groups)
    if fig is not None:
        figures.append(("training_curves", _png_base64(fig), "training curves",
                        "Training loss terms (mean over the epoch), validation accuracy and learning rate by "
                        "epoch; one line per run (line style = seed), a star at the epoch chosen on validation."))  # fmt: skip

    notes = {r.name: r.notes for r in runs if r.notes}
    stamp = datetime.now().isoformat(timespec="seconds")
    by_id = {f[0]: f for f in figures}

    def fig_section(sec_id: str, heading: str, ids: list[str], missing: str) -> str:
        body = "".join(_figure_html(i, *by_id[i][1:]) for i in ids if i in by_id)
        body = f'<div class="figrow">{body}</div>' if body else f'<p class="note">{missing}</p>'
        return f'<section id="{sec_id}"><h2>{heading}</h2>{body}</section>'

    sections = [
        '<section id="summary"><h2>Summary: mean ± std over seeds</h2>'
        f'<p class="note">{html.escape(scope)}n is the number of seeds in the row.</p>'
        f"{_md_to_html(tables['summary'], colors)}</section>",
        f'<section id="groups"><h2>Groups</h2>{_md_to_html(tables["groups"], colors)}</section>',
        f'<section id="runs"><h2>Runs</h2>{_md_to_html(tables["runs"])}</section>',
        fig_section("per-class", "Per-class accuracy", ["per_class"], "No run has predictions.npz."),
        fig_section("reliability", "Calibration", ["reliability"], "No run has predictions.npz."),
        fig_section(
            "confusion",
            "Confusion matrices",
            [f"confusion_{i}" for i in range(len(groups))],
            "No confusion matrix.",
        ),
        fig_section("curves", "Training curves", ["training_curves"], "No run has history.jsonl."),
        f'<section id="provenance"><h2>Provenance and configs</h2>{_md_to_html(tables["provenance"])}'
        + "".join(_run_details(r, g) for g in groups for r in g.runs)
        + "</section>",
    ]
    nav = "".join(
        f'<a href="#{s}">{t}</a>'
        for s, t in [("summary", "Summary"), ("runs", "Runs"), ("per-class", "Per-class"),
                     ("reliability", "Calibration"), ("confusion", "Confusion"), ("curves", "Curves"),
                     ("provenance", "Provenance")]
    )  # fmt: skip
    note_html = ""
    if notes:
        items = "".join(f"<li>{html.escape(k)}: {html.escape('; '.join(v))}</li>" for k, v in notes.items())
        note_html = f'<ul class="warn">{items}</ul>'
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body><main>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="meta">{len(runs)} run(s) in {len(groups)} group(s); written {stamp}</p>'
        f"<nav>{nav}</nav>{note_html}" + "\n".join(sections) + "</main></body></html>\n"
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, page)
    md = (
        f"# {title}\n\n{len(runs)} run(s) in {len(groups)} group(s); written {stamp}. "
        f"Figures: {out.name}.\n\n{scope}\n\n"
        f"## Summary: mean ± std over seeds\n\n{tables['summary']}\n"
        f"## Groups\n\n{tables['groups']}\n## Runs\n\n{tables['runs']}\n"
        f"## Provenance\n\n{tables['provenance']}"
    )
    _write_atomic(md_path, md)
    return {
        "html": out,
        "markdown": md_path,
        "table": tables["summary"],
        "figures": [f[0] for f in figures],
        "groups": [
            {
                "label": g.label,
                "runs": [r.path for r in g.runs],
                "seeds": g.seeds,
                "ece_pooled": pooled.get(g.label),
            }
            for g in groups
        ],
        "notes": notes,
    }
