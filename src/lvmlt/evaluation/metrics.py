"""Long-tailed classification metrics and the tables that report them.

Classes are grouped by their number of *training* images n_c:

    many    n_c >  many_threshold            (default: more than 100)
    medium  few_threshold <= n_c <= many_threshold   (default: 20..100 inclusive)
    few     n_c <  few_threshold             (default: fewer than 20, zero included)

A group's accuracy is the mean of the per-class accuracies of its classes (not the
accuracy over its samples), so every class counts once, as in Liu et al. 2019 (OLTR).
Classes that have no sample in the evaluation set have no accuracy; they are left out of
every per-class statistic and a group none of whose classes is evaluated reports ``None``.

All accuracies, F1 and ECE are percentages in [0, 100]; NLL is in nats per sample.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from lvmlt.config import FEW_THRESHOLD, MANY_THRESHOLD, class_group
from lvmlt.outputs import Z_CNN, Z_SAM, mix_branches

GROUPS = ("many", "medium", "few")
DEFAULT_COLUMNS = ("many", "medium", "few", "top1")
SUMMARY_COLUMNS = (*DEFAULT_COLUMNS, "mean_class_acc")  # the commands' printed and saved tables


def _to_numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16: go through float32 first.
        x = x.float() if x.is_floating_point() else x
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def group_classes(
    train_counts, many: int | None = MANY_THRESHOLD, few: int | None = FEW_THRESHOLD
) -> list[str]:
    """Group of each class by its training image count.

    Args:
        train_counts: training images per class, shape (C,).
        many: a class with more than ``many`` images is "many".
        few: a class with fewer than ``few`` images is "few"; the rest are "medium".
            ``None`` for either threshold means the default (100 and 20).

    Returns:
        One of "many", "medium", "few" per class, length C.
    """
    many = MANY_THRESHOLD if many is None else many
    few = FEW_THRESHOLD if few is None else few
    if few > many + 1:
        raise ValueError(f"few threshold ({few}) must be at most many threshold + 1 ({many + 1})")
    counts = _to_numpy(train_counts, np.float64)
    if counts.ndim != 1:
        raise ValueError(f"train_counts must be 1-D, got shape {counts.shape}")
    return [class_group(n, many, few) for n in counts.tolist()]


def compute_metrics(
    logits,
    labels,
    train_counts,
    many_threshold: int | None = MANY_THRESHOLD,
    few_threshold: int | None = FEW_THRESHOLD,
    ece_bins: int = 15,
) -> dict:
    """Accuracy by group, per-class statistics, calibration and the confusion matrix.

    Args:
        logits: N x C scores (numpy or torch, any float dtype); predictions are the argmax
            and confidences the max softmax probability.
        labels: N true classes. Negative labels (``-1`` marks an unreadable image that was
            skipped) are left out of every metric.
        train_counts: training images per class, shape (C,); only used for the groups.
        many_threshold: classes with more training images than this are "many".
        few_threshold: classes with fewer training images than this are "few".
            ``None`` for either threshold means the default (100 and 20).
        ece_bins: number of equal-width confidence bins (lower, upper] on [0, 1] for ECE.

    Returns:
        A JSON-serialisable dict (plain Python numbers and lists):

        - "top1": accuracy over all samples, %.
        - "many", "medium", "few": mean per-class accuracy over the evaluated classes of
          the group, %; ``None`` when the group has no evaluated class.
        - "mean_class_acc", "worst_class_acc", "hmean_class_acc", "gmean_class_acc":
          arithmetic mean, minimum, harmonic and geometric mean of the per-class
          accuracies, %. The harmonic and geometric means are 0 when a class scores 0.
        - "macro_f1": mean per-class F1 (2 TP / (2 TP + FP + FN)), %.
        - "per_class_acc": length C, % or ``None`` for a class absent from the eval set.
        - "ece": expected calibration error, sum_b n_b / N * |acc_b - conf_b|, %.
        - "nll": mean negative log-likelihood of the true class, nats.
        - "group_sizes": {"many": k, "medium": k, "few": k}, classes per group by
          training counts (whether or not they are in the eval set).
        - "groups": group name per class, length C.
        - "num_samples": number of samples used (negative labels excluded).
        - "confusion": C x C counts, ``confusion[true][predicted]``.

        The per-class statistics ("mean_class_acc" ... "macro_f1") are over the classes
        with at least one evaluation sample.

    Raises:
        ValueError: mismatched shapes, labels >= C, non-finite logits or no samples.
    """
    logits, labels, groups = _checked_inputs(logits, labels, train_counts, many_threshold, few_threshold, ece_bins)
    num_classes = logits.shape[1]
    n = len(labels)

    # Log-softmax in float64, shifted by the row max for stability.
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    pred = logits.argmax(axis=1)
    correct = pred == labels
    confidence = np.exp(log_probs.max(axis=1))

    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class, f1, group_acc = _class_scores(confusion, groups)
    acc = per_class[~np.isnan(per_class)]

    return {
        "top1": float(100.0 * correct.mean()),
        **group_acc,
        "mean_class_acc": float(acc.mean()),
        "per_class_acc": [None if math.isnan(a) else float(a) for a in per_class.tolist()],
        "macro_f1": float(f1.mean()),
        "worst_class_acc": float(acc.min()),
        "hmean_class_acc": 0.0 if (acc == 0).any() else float(len(acc) / (1.0 / acc).sum()),
        "gmean_class_acc": 0.0 if (acc == 0).any() else float(np.exp(np.log(acc).mean())),
        "ece": _ece(confidence, correct, ece_bins),
        "nll": float(-log_probs[np.arange(n), labels].mean()),
        "group_sizes": {g: groups.count(g) for g in GROUPS},
        "groups": groups,
        "num_samples": int(n),
        "confusion": confusion.tolist(),
    }


def _checked_inputs(logits, labels, train_counts, many_threshold, few_threshold, ece_bins):
    """(logits float64, labels int64, group per class), the negative labels dropped, checked as
    :func:`compute_metrics` documents."""
    logits = _to_numpy(logits, np.float64)
    labels = _to_numpy(labels, np.int64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be N x C, got shape {logits.shape}")
    n_all, num_classes = logits.shape
    if labels.shape != (n_all,):
        raise ValueError(f"labels must have shape ({n_all},) to match logits, got {labels.shape}")
    groups = group_classes(train_counts, many_threshold, few_threshold)
    if len(groups) != num_classes:
        raise ValueError(f"train_counts has {len(groups)} classes but logits have {num_classes}")
    if ece_bins < 1:
        raise ValueError(f"ece_bins must be >= 1, got {ece_bins}")

    keep = labels >= 0
    logits, labels = logits[keep], labels[keep]
    if len(labels) == 0:
        raise ValueError("no samples to evaluate (empty set, or every label is negative)")
    if labels.max() >= num_classes:
        raise ValueError(f"label {int(labels.max())} is out of range for {num_classes} classes")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contain NaN or inf (did training diverge?)")
    return logits, labels, groups


def _class_scores(confusion: np.ndarray, groups: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-class accuracy in % (NaN for a class without samples), the F1 of the classes with
    samples, and the mean accuracy of each group's classes with samples (None: no such class)."""
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    tp = np.diag(confusion)
    present = support > 0

    per_class = np.full(confusion.shape[0], np.nan)
    per_class[present] = 100.0 * tp[present] / support[present]
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); support > 0 for present classes.
    f1 = 200.0 * tp[present] / (support[present] + predicted[present])

    group_arr = np.asarray(groups)
    group_acc: dict[str, float | None] = {}
    for g in GROUPS:
        sel = (group_arr == g) & present
        group_acc[g] = float(per_class[sel].mean()) if sel.any() else None
    return per_class, f1, group_acc


def _ece(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """Expected calibration error in %, over equal-width confidence bins (lower, upper]."""
    # Digitize against the inner edges gives 0..bins-1.
    inner_edges = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    bin_idx = np.digitize(confidence, inner_edges, right=True)
    gap = np.zeros(bins)
    np.add.at(gap, bin_idx, correct.astype(np.float64) - confidence)
    return float(100.0 * np.abs(gap).sum() / len(confidence))


# ----------------------------------------------------------------------------- tables


def thresholds(meta: Mapping, ev=None) -> tuple[int, int]:
    """The (many, few) group thresholds: ``ev`` (a run's ``cfg.eval``) where set, else the
    dataset's own (``meta``), else 100 and 20."""
    many = getattr(ev, "many_threshold", None)
    few = getattr(ev, "few_threshold", None)
    many = meta.get("many_threshold", MANY_THRESHOLD) if many is None else many
    few = meta.get("few_threshold", FEW_THRESHOLD) if few is None else few
    return many, few


def score(logits, labels, train_counts, meta: Mapping, ev=None) -> dict:
    """The metrics of one scored split, with the group thresholds of :func:`thresholds`.

    The one scorer of every system (the trainer, the feature-only systems, the GLT runs).

    Args:
        logits: N x C (numpy or torch). labels: N, ``-1`` for skipped images (left out).
        train_counts: training images per class (the groups).
        meta: the bundle's meta (its default thresholds).
        ev: a run's ``cfg.eval`` (:class:`~lvmlt.config.EvalConfig`): thresholds set there
            win over the dataset's, and its ``ece_bins``; None = the dataset's defaults.

    Returns:
        :func:`compute_metrics`'s dict plus ``"thresholds": {"many", "few"}``.
    """
    logits = _to_numpy(logits, np.float32)
    labels = _to_numpy(labels, np.int64)
    keep = labels >= 0
    many, few = thresholds(meta, ev)
    bins = getattr(ev, "ece_bins", 15)
    m = compute_metrics(logits[keep], labels[keep], train_counts, many, few, bins)
    m["thresholds"] = {"many": many, "few": few}
    return m


#: The alphas ``fusion.alpha_select=val`` tries: 0 (z_SAM alone) to 1 (z_CNN alone) in steps of 0.05.
ALPHA_GRID = tuple(round(0.05 * i, 2) for i in range(21))


def choose_alpha(z_cnn, z_sam, labels, train_counts, meta: Mapping, ev=None, prefer: float = 0.5):
    """The alpha of ``(1 - alpha) z_SAM + alpha z_CNN`` with the best mean class accuracy on these
    (validation) logits, the metric checkpoints are chosen on; a tie goes to the alpha closest
    to ``prefer`` (the trained one).

    Returns:
        ``(alpha, {alpha: mean class accuracy})`` over :data:`ALPHA_GRID`.
    """
    z_cnn, z_sam = _to_numpy(z_cnn, np.float32), _to_numpy(z_sam, np.float32)
    curve = {a: score(mix_branches(z_cnn, z_sam, a), labels, train_counts, meta, ev)["mean_class_acc"] for a in ALPHA_GRID}
    best = max(curve.values())
    return min((a for a, v in curve.items() if v == best), key=lambda a: abs(a - prefer)), curve


def alpha_on_val(cfg, model, scored: dict, bundle) -> dict | None:
    """The ``cnn`` system's hook after training (:mod:`lvmlt.systems`): with
    ``fusion.alpha_select=val``, alpha is chosen on the validation branch logits and every
    split's logits (``scored[split][0]``) are mixed again with it; the model predicts with it
    from now on (the config keeps the trained one). Returns the record for metrics.json."""
    if not (cfg.fusion.latent and cfg.fusion.alpha_select == "val"):
        return None
    _, labels, z = scored["val"]
    trained = model.alpha
    alpha, curve = choose_alpha(z[Z_CNN], z[Z_SAM], labels, bundle.train_counts, bundle.meta, cfg.eval, trained)
    model.alpha = alpha
    for s in scored.values():
        s[0] = mix_branches(s[2][Z_CNN], s[2][Z_SAM], alpha)
    return {"alpha": {"trained": trained, "chosen": alpha, "val_mean_class_acc": {str(a): v for a, v in curve.items()}}}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.2f}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown(header: Sequence[str], body: list[list[str]], left: int = 1) -> str:
    align = ["---"] * left + ["---:"] * (len(header) - left)
    lines = [header, align, *body]
    return "\n".join("| " + " | ".join(_cell(c) for c in line) + " |" for line in lines) + "\n"


def format_table(rows: Mapping[str, Mapping], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """Markdown table, one row per run, numbers with 2 decimals, ``-`` for None or missing.

    Args:
        rows: run name -> metrics dict (e.g. from :func:`compute_metrics`).
        columns: metric keys to show, in order.

    Returns:
        The table text, ending with a newline. Example::

            | run | many | medium | few | top1 |
            | --- | ---: | ---: | ---: | ---: |
            | ce | 70.00 | 40.50 | - | 55.25 |
    """
    body = [[name, *(_fmt(m.get(c)) for c in columns)] for name, m in rows.items()]
    return _markdown(["run", *columns], body)


def mean_std_table(rows: Mapping[str, Sequence[Mapping]], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """Markdown table of "mean ± std" over seeds, one row per run name.

    The std is the sample standard deviation (n - 1 in the denominator); with a single
    value only the mean is shown. ``None`` or missing values are left out of a column
    (``-`` if none remain). Column "n" is the number of runs (seeds) in the row.

    Args:
        rows: run name -> list of metrics dicts, one per seed.
        columns: metric keys to show, in order.
    """
    body = []
    for name, runs in rows.items():
        cells = [name, str(len(runs))]
        for c in columns:
            values = np.array([float(r[c]) for r in runs if r.get(c) is not None], dtype=np.float64)
            if len(values) == 0:
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.2f}")
            else:
                cells.append(f"{values.mean():.2f} ± {values.std(ddof=1):.2f}")
        body.append(cells)
    return _markdown(["run", "n", *columns], body)


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_))


def write_csv(
    path: str | Path,
    rows: Mapping[str, Mapping | Sequence[Mapping]],
    columns: Sequence[str] | None = None,
) -> Path:
    """Write metrics to CSV: a "run" column, then one column per metric.

    Args:
        path: output file; parent folders are created.
        rows: run name -> metrics dict, or -> list of metrics dicts (one CSV row each,
            e.g. one per seed, all with the same run name).
        columns: metric keys to write; default every scalar key (lists and dicts such as
            "per_class_acc" or "confusion" are skipped), in order of first appearance.

    Returns:
        The path written. ``None`` is written as an empty cell; floats at full precision.
    """
    flat: list[tuple[str, Mapping]] = []
    for name, value in rows.items():
        for m in [value] if isinstance(value, Mapping) else value:
            flat.append((name, m))
    if columns is None:
        seen: dict[str, None] = {}
        for _, m in flat:
            for k, v in m.items():
                if _is_scalar(v):
                    seen.setdefault(k, None)
        columns = list(seen)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", *columns])
        for name, m in flat:
            writer.writerow([name, *("" if m.get(c) is None else m[c] for c in columns)])
    return path


def read_csv(path: str | Path) -> dict[str, list[dict]]:
    """Read back a CSV of :func:`write_csv`: run name -> list of metrics dicts, one per line.

    Whole numbers come back as ints, other numbers as floats, empty cells as ``None``,
    anything else as text (so writing it again gives the same file); the file is parsed
    as data only.
    """
    from lvmlt.errors import UserError

    def value(text: str):
        if text == "":
            return None
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    rows: dict[str, list[dict]] = {}
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        if "run" not in (reader.fieldnames or []):
            raise UserError("not a results table (no 'run' column)", where=str(path))
        for n, line in enumerate(reader, start=2):
            if None in line or None in line.values():
                raise UserError(f"line {n} has {'more' if None in line else 'fewer'} cells than the header",
                                where=str(path))
            name = line.pop("run")
            rows.setdefault(name, []).append({k: value(v) for k, v in line.items()})
    return rows
