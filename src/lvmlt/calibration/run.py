"""``lvmlt calibrate RUN_DIR --method ...``: post-hoc label-shift correction of a saved run.

Reads ``RUN_DIR/predictions.npz`` (written by the trainer), estimates the test prior from
the *unlabelled* test logits (test labels are used only to score the result), and adds
the calibrated metrics to ``RUN_DIR/metrics.json`` beside the originals::

    {"val": {...}, "test": {...},
     "calibrated": {"mapls": {"test": {...}, "estimated_prior": [...], ...}}}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lvmlt import rundir
from lvmlt.calibration import posthoc  # noqa: F401  (registers "logit_adjust")
from lvmlt.calibration.label_shift import CALIBRATORS, bcts_source_prior, resolve_source_prior
from lvmlt.errors import UserError

#: Estimators that read the model's posteriors: calibrated (BCTS) first unless asked otherwise.
NEEDS_CALIBRATION = ("mapls", "mlls", "bbse")
PREDICTION_KEYS = ("val_logits", "val_labels", "test_logits", "test_labels", "train_counts")


def load_predictions(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays of ``RUN_DIR/predictions.npz``, checked for keys and shapes."""
    path = Path(run_dir) / rundir.PREDICTIONS
    arrays = rundir.read_predictions(run_dir, PREDICTION_KEYS)
    c = arrays["train_counts"].shape[0]
    for split in ("val", "test"):
        logits, labels = arrays[f"{split}_logits"], arrays[f"{split}_labels"]
        if logits.ndim != 2 or logits.shape[1] != c or logits.shape[0] != labels.shape[0]:
            raise UserError(
                f"{path}: {split}_logits has shape {logits.shape}, expected (len({split}_labels)={labels.shape[0]}, {c})"
            )
    return arrays


def _default_thresholds(run_dir: Path, metrics: dict) -> tuple[int | None, int | None]:
    """Many/few thresholds the run was evaluated with, if the run directory records them."""
    th = metrics.get("thresholds") or (metrics.get("test") or {}).get("thresholds")
    if isinstance(th, dict):
        return th.get("many"), th.get("few")
    if "many_threshold" in metrics or "few_threshold" in metrics:
        return metrics.get("many_threshold"), metrics.get("few_threshold")
    if (run_dir / rundir.CONFIG).is_file():
        saved = rundir.read_config(run_dir, partial=True)
        ev = (saved.get("config") or saved).get("eval") or {}
        return ev.get("many_threshold"), ev.get("few_threshold")
    return None, None


def _check_options(method: str, estimator: Callable, opts: dict) -> None:
    params = inspect.signature(estimator).parameters
    allowed = sorted(
        n
        for n, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in ("val_logits", "val_labels")
    )
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise UserError(
            f"calibrator {method!r} has no option {', '.join(map(repr, unknown))}",
            fix=f"its options are: {', '.join(allowed) or '(none)'}",
        )


def _to_jsonable(x):
    if isinstance(x, dict):
        return {str(k): _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def _apply_bcts(arrays: dict[str, np.ndarray], run_dir: Path) -> tuple[np.ndarray, dict]:
    """Fit BCTS on the validation split and apply it to the val and test logits of ``arrays``
    (in place); returns the source prior it implies (the validation label histogram, every
    class + 0.5) and the fitted ``{"temperature", "bias"}``."""
    from lvmlt.calibration.posthoc import apply_bcts, fit_bcts

    val_labels = arrays["val_labels"]
    if val_labels.shape[0] == 0:
        raise UserError("bcts needs validation predictions", where=str(run_dir))
    t, b = fit_bcts(arrays["val_logits"], val_labels)
    for split in ("val", "test"):
        arrays[f"{split}_logits"] = apply_bcts(arrays[f"{split}_logits"], t, b)
    counts = np.bincount(val_labels.astype(np.int64), minlength=arrays["train_counts"].shape[0])
    return bcts_source_prior(counts), {"temperature": t, "bias": b}


def calibrate_run(
    run_dir: str | Path,
    method: str,
    *,
    source_prior: str = "train",
    name: str | None = None,
    many_threshold: int | None = None,
    few_threshold: int | None = None,
    metrics_fn: Callable[..., dict] | None = None,
    bcts: bool | None = None,
    **opts,
) -> dict:
    """Calibrate a run's test predictions with a registered label-shift method.

    Args:
        run_dir: a run directory with ``predictions.npz`` (and usually ``metrics.json``).
        method: a name in :data:`CALIBRATORS` (``mapls``, ``mlls``, ``bbse``, ``pc``,
            ``logit_adjust``).
        source_prior: ``"train"`` (plain CE model), ``"uniform"`` (a model trained with a
            balanced loss or sampler) or ``"soft"``; see
            :func:`~lvmlt.calibration.label_shift.resolve_source_prior`.
        name: key under ``metrics["calibrated"]``; default ``method``.
        many_threshold, few_threshold: group thresholds for the metrics; default what the
            run directory records, else the metric function's own default.
        metrics_fn: ``fn(logits, labels, train_counts, many_threshold, few_threshold) ->
            dict``; default :func:`lvmlt.evaluation.metrics.compute_metrics`.
        bcts: first calibrate the logits with bias-corrected temperature scaling fitted on
            the validation split (Alexandari et al. 2020); the source prior is then the
            validation split's label histogram (the distribution the calibrated model
            describes), whatever ``source_prior`` says. Stored under ``METHOD+bcts``.
            None (the default) = on for the estimators that read the model's posteriors
            (:data:`NEEDS_CALIBRATION`): an over-confident network's raw softmax sends EM to
            a degenerate prior (ELPV's CE run: test top-1 59.06 -> 1.98 without it).
        **opts: passed to the estimator (e.g. ``lam=0.5`` for MAPLS, ``mode="hard"``).

    Returns:
        The entry written to ``metrics["calibrated"][name]``: calibrated ``test`` metrics,
        ``estimated_prior``, ``source_prior`` (the vector), ``prior_l1_error`` (L1 distance
        to the test labels' histogram, scored with labels after the fact) and ``info``.
    """
    run_dir = Path(run_dir)
    estimator = CALIBRATORS.get(method)
    if bcts is None:
        bcts = method in NEEDS_CALIBRATION
    _check_options(method, estimator, opts)
    arrays = load_predictions(run_dir)
    metrics = rundir.read_metrics(run_dir)
    if metrics_fn is None:
        from lvmlt.evaluation.metrics import compute_metrics as metrics_fn  # lazy: heavy imports
    if many_threshold is None and few_threshold is None:
        many_threshold, few_threshold = _default_thresholds(run_dir, metrics)

    _drop_skipped_test_images(arrays)
    counts = arrays["train_counts"]
    ps = resolve_source_prior(source_prior, counts, arrays["val_logits"])
    scaling = None
    if bcts:
        ps, scaling = _apply_bcts(arrays, run_dir)
        source_prior = "val (after BCTS)"
    est = estimator(
        arrays["test_logits"], ps, val_logits=arrays["val_logits"], val_labels=arrays["val_labels"], **opts
    )
    calibrated = est.adjust_logits(arrays["test_logits"]).astype(np.float32)
    labels = arrays["test_labels"]
    test_metrics = metrics_fn(calibrated, labels, counts, many_threshold, few_threshold)
    true_prior = np.bincount(labels.astype(np.int64), minlength=counts.shape[0]) / labels.shape[0]
    entry = _entry(test_metrics, method, source_prior, opts, est, true_prior, scaling)
    _write_entry(run_dir, metrics, name or (method + ("+bcts" if bcts else "")), entry)
    return entry


def _entry(test_metrics: dict, method: str, source_prior: str, opts: dict, est, true_prior, scaling) -> dict:
    """The JSON entry of one calibration (``est`` a LabelShiftEstimate; ``true_prior`` the
    test labels' histogram, to score the estimate after the fact)."""
    return _to_jsonable(
        {
            "test": test_metrics,
            "method": method,
            "source_prior_mode": source_prior,
            "options": opts,
            "estimated_prior": est.target_prior,
            "source_prior": est.source_prior,
            "prior_l1_error": float(np.abs(est.target_prior - true_prior).sum()),
            "info": est.info,
            "bcts": scaling,
        }
    )


def _drop_skipped_test_images(arrays: dict[str, np.ndarray]) -> None:
    """Leave out the test images the run skipped (unreadable ones carry label -1), in place."""
    keep = arrays["test_labels"] >= 0
    arrays["test_logits"], arrays["test_labels"] = arrays["test_logits"][keep], arrays["test_labels"][keep]


def _write_entry(run_dir: Path, metrics: dict, key: str, entry: dict) -> None:
    """Put ``entry`` under ``metrics.json["calibrated"][key]``, keeping the other entries."""
    entries = dict(metrics.get("calibrated") or {})
    entries[key] = entry
    from lvmlt import locks

    with locks.hold(run_dir):  # not while a trainer or evaluate rewrites metrics.json
        rundir.write_metrics(run_dir, {"calibrated": entries})
