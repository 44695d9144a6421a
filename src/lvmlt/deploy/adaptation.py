"""``--adapt``: estimate the class mix of the classified images and re-weight their logits.

The logits are calibrated first (bias-corrected temperature scaling fitted on the run's
validation logits), the source prior is what the calibrated model describes (the
validation label histogram), and ``mapls`` / ``mlls`` / ``bbse`` of
:mod:`lvmlt.calibration.label_shift` estimate the target prior. Imports neither torch nor
anything of lvmlt that does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvmlt.errors import UserError

ADAPT_METHODS = ("none", "mapls", "mlls", "bbse")
#: Adaptation needs at least this many images per class in the batch (and MIN_ADAPT_IMAGES in
#: all). Measured (benchmarks/results/adaptation/, CE runs on ELPV, MNIST-LT and
#: Fashion-MNIST-LT, 8 and 10 classes): under a shifted mix MAPLS's estimate is closer to the
#: truth than the training prior from 10 images on (the smallest batch swept), and without a
#: shift adapting stops costing top-1 on MNIST-LT from 20 on; the rule keeps a margin above both.
ADAPT_IMAGES_PER_CLASS = 2
MIN_ADAPT_IMAGES = 20


def min_adapt_images(num_classes: int) -> int:
    """The smallest batch :func:`adapt` estimates a prior from."""
    return max(MIN_ADAPT_IMAGES, ADAPT_IMAGES_PER_CLASS * num_classes)


@dataclass
class Adaptation:
    """The class prior estimated on the classified images, and how logits are re-weighted."""

    method: str
    prior: np.ndarray  # estimated target prior (C,)
    source_prior: np.ndarray  # what the calibrated model assumes (C,)
    temperature: float
    bias: np.ndarray
    info: dict = field(default_factory=dict)

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        from lvmlt.calibration.label_shift import apply_bcts

        return apply_bcts(logits, self.temperature, self.bias)

    def adapted(self, logits: np.ndarray) -> np.ndarray:
        """Logits of the adapted posterior: calibrated + log q - log p_s."""
        return self.calibrated(logits) + np.log(np.maximum(self.prior, 1e-12)) - np.log(self.source_prior)


def adapt(spec: dict, logits: np.ndarray, method: str, val_logits: np.ndarray, val_labels: np.ndarray,
          force: bool = False) -> Adaptation:
    """Estimate the class prior of ``logits`` (unlabelled) with ``method``, after bias-corrected
    temperature scaling fitted on the validation split (the run's ``calibration``).

    The source prior is the validation label histogram (+0.5 per class), the distribution
    the calibrated model describes.

    Raises:
        UserError: too few images for an estimate that means anything (unless ``force``),
            or a run without validation predictions.
    """
    from lvmlt.calibration.label_shift import CALIBRATORS, apply_bcts, bcts_source_prior

    c = len(spec["classes"])
    need = min_adapt_images(c)
    if logits.shape[0] < need and not force:
        raise UserError(
            f"--adapt {method} needs at least {need} images to estimate the class mix of {c} classes, "
            f"and {logits.shape[0]} were classified (below that the estimated mix is noise: "
            "benchmarks/results/adaptation measures where it starts to beat the training prior)",
            fix="classify more images at once, or use --adapt none",
        )
    cal = spec.get("calibration")
    if not cal:
        raise UserError("adaptation needs the run's validation predictions, and this run has none",
                        fix="use --adapt none")
    t, b = float(cal["temperature"]), np.asarray(cal["bias"], dtype=np.float64)
    ps = bcts_source_prior(cal["val_label_counts"])
    keep = val_labels >= 0
    val_cal, target = apply_bcts(val_logits[keep], t, b), apply_bcts(logits, t, b)
    fit = CALIBRATORS.get(method)
    est = fit(target, ps, val_logits=val_cal, val_labels=val_labels[keep])
    out = Adaptation(method, est.target_prior, ps, t, b, dict(est.info))
    resamples = BOOTSTRAP if target.size <= BOOTSTRAP_CELLS else BOOTSTRAP // 3  # large batches: fewer
    lo, hi = bootstrap_interval(lambda rows: fit(target[rows], ps, val_logits=val_cal, val_labels=val_labels[keep])
                                .target_prior, len(target), resamples)
    out.info["prior_interval_90"] = [[float(x), float(y)] for x, y in zip(lo, hi, strict=True)]
    out.info["warnings"] = adaptation_warnings(spec["classes"], out.prior, lo, hi, logits.argmax(1),
                                               out.adapted(logits).argmax(1))
    return out


#: Bootstrap resamples of the batch for the estimate's interval, and the warning thresholds.
BOOTSTRAP = 30
BOOTSTRAP_CELLS = 2_000_000  # images x classes above which a third of the resamples are drawn
UNSTABLE_WIDTH = 0.2  # a class share whose 90 % interval is wider than this is not known
CHANGED_SHARE = 0.5  # adapted labels differing from the raw ones on more than this share of images


def bootstrap_interval(estimate, n: int, resamples: int = BOOTSTRAP, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """5th and 95th percentiles per class of ``estimate(rows)`` over ``resamples`` bootstrap
    draws of the ``n`` images (seeded: the same batch gives the same interval)."""
    rng = np.random.default_rng(seed)
    draws = np.stack([estimate(rng.integers(0, n, n)) for _ in range(resamples)])
    return np.percentile(draws, 5, axis=0), np.percentile(draws, 95, axis=0)


def adaptation_warnings(classes, prior, lo, hi, raw_top1, adapted_top1) -> list[str]:
    """One line per reason to distrust an adaptation: an unstable estimate, or adapted labels
    that differ from the raw ones on most images (what a one-class batch or a wrong estimate
    does)."""
    out = []
    width = np.asarray(hi) - np.asarray(lo)
    if width.max() > UNSTABLE_WIDTH:
        k = int(width.argmax())
        out.append(f"the estimated mix is unstable: the share of {classes[k]!r} is {prior[k]:.2f} with a 90 % "
                   f"bootstrap interval {lo[k]:.2f}-{hi[k]:.2f} over this batch")
    changed = float(np.mean(np.asarray(raw_top1) != np.asarray(adapted_top1))) if len(raw_top1) else 0.0
    if changed > CHANGED_SHARE:
        out.append(f"adapting changed the predicted class of {changed:.0%} of the images: the estimated mix may "
                   "be wrong for this batch (compare with --adapt none)")
    return out


def write_prior(path: Path, classes, est: Adaptation, n: int) -> None:
    """The estimated class mix, beside the rows (``preds.prior.json``), written atomically."""
    rec = {"method": est.method, "images": n,
           "estimated_prior": {c: float(p) for c, p in zip(classes, est.prior, strict=True)},
           "source_prior": {c: float(p) for c, p in zip(classes, est.source_prior, strict=True)},
           "info": est.info}
    from lvmlt import rundir

    with rundir.writing(path, then="free space, or choose another --out"):
        rundir.atomic_write_json(path, rec, indent=1)
