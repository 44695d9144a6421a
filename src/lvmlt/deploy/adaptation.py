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
    est = CALIBRATORS.get(method)(target, ps, val_logits=val_cal, val_labels=val_labels[keep])
    return Adaptation(method, est.target_prior, ps, t, b, dict(est.info))


def write_prior(path: Path, classes, est: Adaptation, n: int) -> None:
    """The estimated class mix, beside the rows (``preds.prior.json``), written atomically."""
    rec = {"method": est.method, "images": n,
           "estimated_prior": {c: float(p) for c, p in zip(classes, est.prior, strict=True)},
           "source_prior": {c: float(p) for c, p in zip(classes, est.source_prior, strict=True)},
           "info": est.info}
    from lvmlt import rundir

    with rundir.writing(path, then="free space, or choose another --out"):
        rundir.atomic_write_json(path, rec, indent=1)
