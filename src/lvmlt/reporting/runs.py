"""Reading finished run directories into :class:`RunRecord`s, their provenance, and grouping
runs that differ only by seed.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lvmlt import rundir
from lvmlt.errors import UserError

SEED_KEYS = ("seed", "run_name", "out_dir")
_CHUNK_ROWS = 4096  # test logits are reduced in chunks: a 100k x 8k float64 copy would not fit
GROUP_COLORS = (  # one per group, in order
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
_RUN_HINT = "pass a directory made by `lvmlt train` (it holds config.yaml and metrics.json)"
_NOT_A_RUN = (("manifest.json", "it is a feature store or an exported bundle"),)


def expand_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """``paths`` with every folder that is not a run but holds runs replaced by those runs
    (sorted by name; its other entries, such as a feature store, are left out), each once."""
    out: list[Path] = []
    for p in map(Path, paths):
        inner = [] if rundir.is_run_dir(p) or not p.is_dir() else sorted(
            c for c in p.iterdir() if c.is_dir() and rundir.is_run_dir(c)
        )  # fmt: skip
        out += inner or [p]
    return list(dict.fromkeys(p.resolve() for p in out))

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
        manifest: the feature store's ``manifest.json`` when the run's model read stored
            features (:attr:`uses_store`) and it could be read (by the store's reader,
            :func:`lvmlt.features.store.read_manifest`); its fields are looked up defensively.
        manifest_path: where that manifest was found (or first looked for).
        classes: class names in label order (``model.json``); None for a run of an older
            lvmlt, whose classes are shown by index.
        uses_store: whether the model read stored SAM features (``model.json``'s inputs,
            else the config's fusion / SciLT switches); a ``fusion.store`` that a plain CNN
            run carries along is not provenance of that run.
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
    classes: list[str] | None = None
    uses_store: bool = False
    notes: list[str] = field(default_factory=list)

    def class_name(self, k: int) -> str:
        """The name of class ``k`` ("3" when the run does not name its classes)."""
        return self.classes[k] if self.classes is not None and 0 <= k < len(self.classes) else str(k)

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
    cfg_file = path / rundir.CONFIG
    if not cfg_file.is_file():
        what = next((w for f, w in _NOT_A_RUN if (path / f).is_file()), "no config.yaml")
        fix = (f"pass the folder that holds the runs ({path.parent}) to take every run in it, or name the runs"
               if any(rundir.is_run_dir(p) for p in path.parent.iterdir() if p.is_dir()) else _RUN_HINT)
        raise UserError(f"{path} is not a run directory ({what})", fix=fix)
    try:
        saved = yaml.safe_load(cfg_file.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f"{cfg_file} line {line + 1}" if line is not None else str(cfg_file)
        raise UserError("config.yaml is not valid YAML", where=where, fix=_RUN_HINT) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise UserError(f"{cfg_file} is not a run config (no 'config' section)", fix=_RUN_HINT)
    metrics_file = path / rundir.METRICS
    if not metrics_file.is_file():
        raise UserError(
            f"run {path} has not finished (no metrics.json)",
            fix="finish it with `lvmlt train --resume`, or leave it out of the report",
        )
    metrics = rundir.read_metrics(path)  # a damaged or binary file is one line naming it
    if not isinstance(metrics, dict) or not isinstance(metrics.get("test"), dict):
        raise UserError(
            f"{metrics_file} has no test metrics", fix="re-evaluate with `lvmlt evaluate RUN_DIR`"
        )

    run = RunRecord(path=path, name=path.name, saved=saved, metrics=metrics)
    run.history = _read_history(path / rundir.HISTORY, run.notes)
    _read_predictions(path / rundir.PREDICTIONS, run)
    inputs = _read_description(path, run)
    run.uses_store = _uses_store(run.config, inputs)
    if run.uses_store:
        run.manifest, run.manifest_path = _read_manifest(path, run.config, run.notes)
    return run


def _read_description(path: Path, run: RunRecord) -> list[str] | None:
    """Class names into ``run.classes``; returns the model's inputs (None without model.json)."""
    f = path / rundir.DESCRIPTION
    if not f.is_file():
        return None  # an older run: classes by index, store use from the config
    try:
        spec = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        run.notes.append(f"{rundir.DESCRIPTION} is unreadable ({type(e).__name__}): classes shown by index")
        return None
    classes = spec.get("classes") if isinstance(spec, dict) else None
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        run.classes = classes
    inputs = spec.get("inputs") if isinstance(spec, dict) else None
    return [str(i) for i in inputs] if isinstance(inputs, list) else None


def _uses_store(config: dict, inputs: list[str] | None) -> bool:
    """Whether the run read stored features: its described inputs, else what its system reads."""
    if inputs is None:
        from lvmlt import systems
        from lvmlt.config import Config, _build, without_retired
        from lvmlt.errors import UserError

        try:
            cfg = _build(Config, without_retired(config))  # older runs' mode flags read as their system
            inputs = sorted(systems.of(cfg).inputs(cfg)) if cfg.fusion.store else []
        except (UserError, TypeError, ValueError):
            return False
    return any(i != "image" for i in inputs)


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
        with np.load(path, allow_pickle=False) as z:
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
    from lvmlt.features.store import MANIFEST, read_manifest  # the store's reader owns its schema

    store = (config.get("fusion") or {}).get("store")
    if not store:
        return None, None
    p = Path(str(store)).expanduser()
    # A relative store path is relative to where training ran; next to the run is a good guess too.
    candidates = [p] if p.is_absolute() else [p, run_dir.parent / p, run_dir / p]
    for c in candidates:
        f = c / MANIFEST
        if not f.is_file():
            continue
        try:
            return read_manifest(c), f
        except (OSError, UserError) as e:
            notes.append(f"feature-store manifest {f} is unreadable ({getattr(e, 'what', e)})")
            return None, f
    notes.append(f"feature store {store} is not on this machine: its provenance is not shown")
    return None, candidates[0] / MANIFEST


# ---------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------
def is_scalar(v) -> bool:
    return v is None or isinstance(v, str | bool | int | float)


def _lookup(d: dict, *paths: Sequence[str]):
    """The first scalar found at one of the key paths (the manifest schema may change)."""
    for path in paths:
        cur: Any = d
        for k in path:
            cur = cur.get(k) if isinstance(cur, dict) else None
        if cur is not None and is_scalar(cur):
            return cur
    return None


def _fingerprints(manifest: dict) -> dict[str, str]:
    splits = manifest.get("splits")
    out = {}
    if isinstance(splits, dict):
        for name, s in splits.items():
            if isinstance(s, dict) and is_scalar(s.get("fingerprint")) and s.get("fingerprint"):
                out[str(name)] = str(s["fingerprint"])
    for key in ("fingerprint", "data_fingerprint"):
        if is_scalar(manifest.get(key)) and manifest.get(key):
            out.setdefault("data", str(manifest[key]))
    return out


def provenance(run: RunRecord) -> dict[str, Any]:
    """Where a run came from: commit, seed, backbone and, when its model read stored
    features, the store and its encoder.

    Returns:
        {"git_commit", "seed", "backbone", "feature_store", "encoder", "img_size",
        "weights_sha256", "fingerprints": {split: sha}}; unknown values are None.
    """
    m = run.manifest or {}
    return {
        "git_commit": run.saved.get("git_commit"),
        "seed": run.seed,
        "backbone": (run.config.get("model") or {}).get("backbone"),
        "feature_store": (run.config.get("fusion") or {}).get("store") if run.uses_store else None,
        "encoder": _lookup(m, ("provenance", "encoder"), ("encoder", "name"), ("encoder",)),
        "img_size": _lookup(m, ("provenance", "img_size"), ("encoder", "img_size"), ("img_size",)),
        "weights_sha256": _lookup(
            m, ("provenance", "weights_sha256"), ("encoder", "weights_sha256"), ("weights_sha256",)
        ),
        # the trainer records every split's fingerprint; a feature store states its own
        "fingerprints": {**(run.saved.get("data_fingerprint") or {}), **_fingerprints(m)},
    }


def flatten(d: dict, prefix: str = "", depth: int = 3) -> dict[str, Any]:
    """Dotted keys -> scalar values; short lists of scalars are joined, the rest left out."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            if depth > 1:
                out.update(flatten(v, key + ".", depth - 1))
        elif isinstance(v, list | tuple):
            if len(v) <= 8 and all(is_scalar(x) for x in v):
                out[key] = "[" + ", ".join(str(x) for x in v) + "]"
        elif is_scalar(v):
            out[key] = v
    return out


def short_id(value, n: int = 12) -> str | None:
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
    reference = flatten({k: v for k, v in members[0][0].config.items() if k not in SEED_KEYS}, depth=4)
    diffs = []
    for rs in members:
        flat = flatten({k: v for k, v in rs[0].config.items() if k not in SEED_KEYS}, depth=4)
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
        RunGroup(label, rs, d or "-", GROUP_COLORS[i % len(GROUP_COLORS)])
        for i, (label, rs, d) in enumerate(zip(labels, members, diffs, strict=True))
    ]


def unique_names(runs: Sequence[RunRecord]) -> None:
    """Directory names, with as many parent folders as it takes to tell them apart."""
    for depth in range(1, 1 + max(len(r.path.resolve().parts) for r in runs)):
        names = ["/".join(r.path.resolve().parts[-depth:]) for r in runs]
        if len(set(names)) == len(names):
            for r, n in zip(runs, names, strict=True):
                r.name = n
            return
