"""One finished run directory read into a :class:`RunRecord`: its config, metrics, history,
test predictions (top-1 confidence and correctness), described classes and inputs, and the
feature store's manifest when the run read stored features.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvmlt import rundir
from lvmlt.errors import UserError

_CHUNK_ROWS = 4096  # test logits are reduced in chunks: a 100k x 8k float64 copy would not fit
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
        confusion: the test confusion matrix ``[true][predicted]``, C x C counts, from the
            predictions (None without them).
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
    confusion: np.ndarray | None = None
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
    saved = rundir.read_config(path)  # YAML's safe loader; damaged, binary or not a config: one line
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
        from lvmlt.config import from_saved
        from lvmlt.errors import UserError

        try:
            cfg = from_saved(config)  # older runs' mode flags read as their system
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
    for line in path.read_bytes().splitlines():  # bytes: a damaged line is skipped, not a decode error
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):  # a run killed mid-write leaves a partial last line
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
    c = counts.shape[0]  # the test confusion matrix (metrics.json keeps no C x C matrix)
    run.confusion = np.bincount(labels[keep] * c + logits[keep].argmax(1), minlength=c * c).reshape(c, c)


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

