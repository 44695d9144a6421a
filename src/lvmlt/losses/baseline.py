"""Baseline long-tailed losses: CE, balanced softmax, logit adjustment, LDAM-DRW, focal, CB.

All losses share :class:`ClassCountLoss`: they take ``logits`` (B x C, any float dtype,
possibly produced under bf16/fp16 autocast) and ``targets`` (B, integer class indices),
compute in float32 with autocast off, skip samples whose target is negative (the data
pipeline marks unreadable images with ``-1``) and return a scalar.

Classes with zero training images: wherever a formula needs ``log(n_c)``, ``n_c^(-1/4)``
or ``beta^n_c`` in a denominator, the count is clamped to 1, i.e. such a class is treated
as if it had one image (the rarest possible class). This keeps the loss and its gradients
finite; it never changes the result for classes that do have images.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvmlt.config.sections import LossConfig
from lvmlt.errors import UserError
from lvmlt.registry import Registry

LossBuilder = Callable[[LossConfig, np.ndarray, int], nn.Module]

#: name -> ``builder(cfg: LossConfig, class_counts: np.ndarray, epochs: int) -> nn.Module``
LOSSES: Registry[LossBuilder] = Registry("loss")

IGNORE_INDEX = -1  # target of a skipped sample; any negative target is ignored
CB_BASES = ("ce", "focal")  # the losses the class-balanced weights apply to (loss.cb_base)


# ----------------------------------------------------------------------------- helpers


def check_class_counts(class_counts) -> np.ndarray:
    """Validate class counts and return them as a float64 array of shape (C,)."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D array, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"class_counts must be finite and non-negative, got {counts.tolist()}")
    return counts


def log_prior(class_counts) -> np.ndarray:
    """log of the training label prior, shape (C,); zero counts are clamped to 1."""
    counts = np.maximum(check_class_counts(class_counts), 1.0)
    return np.log(counts / counts.sum())


def ldam_margins(class_counts, max_margin: float) -> np.ndarray:
    """LDAM per-class margins m_c proportional to n_c^(-1/4), the largest equal to ``max_margin``.

    Zero counts are clamped to 1, so a class without images gets the largest margin.
    """
    counts = np.maximum(check_class_counts(class_counts), 1.0)
    m = counts**-0.25
    return m * (max_margin / m.max())


def effective_number_weights(class_counts, beta: float) -> np.ndarray:
    """Class-balanced weights (1 - beta) / (1 - beta^n_c) (Cui et al. 2019), summing to C.

    ``beta = 0`` gives equal weights; ``beta -> 1`` tends to inverse class frequency, which
    is what ``beta = 1`` returns (the formula itself is 0/0 there). Zero counts are clamped
    to 1, so a class without images gets the weight of a one-image class.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    counts = np.maximum(check_class_counts(class_counts), 1.0)
    if beta == 0.0:
        w = np.ones_like(counts)  # 0^n = 0 for every n >= 1
    elif beta == 1.0:
        w = 1.0 / counts
    else:
        # -expm1(n log beta) = 1 - beta^n without cancellation for beta close to 1.
        w = (1.0 - beta) / -np.expm1(counts * math.log(beta))
    return w * (len(w) / w.sum())


def _autocast_off(device_type: str):
    # Under autocast, CPU log_softmax stays in bf16; losses over many classes need fp32.
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _buffer(values: np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


def _focal_per_sample(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """-(1 - p_t)^gamma * log p_t for softmax probabilities, shape (B,)."""
    logp_t = logits.log_softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
    # 1 - p_t via expm1 keeps precision when p_t is close to 1; the clamp keeps the
    # gradient of (1 - p_t)^gamma finite for 0 < gamma < 1 when p_t rounds to exactly 1.
    one_minus_p = (-torch.expm1(logp_t)).clamp_min(1e-12)
    return -(one_minus_p**gamma) * logp_t


# ----------------------------------------------------------------------------- base


class ClassCountLoss(nn.Module):
    """Base for losses over logits, integer targets and training class counts.

    Subclasses implement :meth:`per_sample` (and may override :meth:`reduce`); the base
    handles input checks, float32 computation and ignored targets.

    Args:
        class_counts: training images per class, shape (C,).
    """

    def __init__(self, class_counts):
        super().__init__()
        self.num_classes = len(check_class_counts(class_counts))

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each (0-based) epoch; a no-op by default."""

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Loss per sample, shape (B,), from float32 logits (B x C) and valid targets (B,)."""
        raise NotImplementedError

    def reduce(self, losses: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
        """Mean of ``losses`` (B,) over the valid samples; 0 (with grad) if there are none."""
        # torch.where rather than boolean indexing: no host-device sync per step.
        total = torch.where(valid, losses, losses.new_zeros(())).sum()
        return total / valid.sum().clamp_min(1)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Loss for a batch.

        Args:
            logits: B x C, any floating dtype (computed in float32).
            targets: B, integer class indices; negative entries (``-1``) are ignored.

        Returns:
            Scalar float32 tensor: the mean loss over non-ignored samples, or 0 (still
            attached to the graph) when every sample is ignored.
        """
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must be B x {self.num_classes} (one column per class), got {tuple(logits.shape)}"
            )
        if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
            raise ValueError(
                f"targets must have shape ({logits.shape[0]},) to match logits, got {tuple(targets.shape)}"
            )
        if targets.is_floating_point():
            raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
        with _autocast_off(logits.device.type):
            logits = logits.float()
            targets = targets.long()
            valid = targets >= 0
            # Ignored rows still go through per_sample with a dummy class 0 (cheaper than
            # indexing) and are zeroed in reduce().
            safe = torch.where(valid, targets, torch.zeros_like(targets))
            return self.reduce(self.per_sample(logits, safe), safe, valid)


# ----------------------------------------------------------------------------- losses


class CrossEntropyLoss(ClassCountLoss):
    """Plain softmax cross-entropy; class counts only fix C.

    Args:
        label_smoothing: the target puts ``1 - eps + eps / C`` on the true class and
            ``eps / C`` on every other (``F.cross_entropy``'s smoothing).
    """

    def __init__(self, class_counts, label_smoothing: float = 0.0):
        super().__init__(class_counts)
        self.label_smoothing = float(label_smoothing)

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.label_smoothing)


class LogitAdjustedLoss(ClassCountLoss):
    """Cross-entropy on ``logits + tau * log(prior)`` (Menon et al. 2021).

    With ``tau = 1`` this is the balanced softmax of Ren et al. 2020. The adjustment is
    used for training only: predict with the raw logits.

    Args:
        class_counts: training images per class, shape (C,); zero counts clamped to 1.
        tau: adjustment strength; 0 gives plain cross-entropy.
        label_smoothing: as in :class:`CrossEntropyLoss`, on the adjusted logits.
    """

    def __init__(self, class_counts, tau: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(class_counts)
        self.tau = float(tau)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("log_prior", _buffer(log_prior(class_counts)))

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        adjusted = logits + self.tau * self.log_prior.float()
        return F.cross_entropy(adjusted, targets, reduction="none", label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, tau={self.tau}"


class LDAMDRWLoss(ClassCountLoss):
    """LDAM with deferred re-weighting (Cao et al. 2019).

    The true-class logit is lowered by a margin m_c proportional to n_c^(-1/4) (the
    largest margin, for the rarest class, is ``max_margin``), then all logits are multiplied
    by ``scale`` before the cross-entropy: ``CE(scale * (z - m_y * onehot(y)), y)``.

    The scale (30 by default) assumes a cosine classifier (``model.cosine_head=true``)
    whose logits are cosine similarities in [-1, 1]; on an unnormalised linear head the
    scaled logits explode and the margins become negligible.

    Deferred re-weighting: for epochs ``< drw_epoch`` (0-based, as passed to
    :meth:`set_epoch`) every class weighs 1; from ``drw_epoch`` on, class c weighs
    w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to C. As in the reference
    implementation (``F.cross_entropy(weight=w)``) the weighted loss is normalised by
    the weights of the batch, sum_i w_{y_i} l_i / sum_i w_{y_i}, so switching DRW on
    changes the balance between classes, not the overall scale of the loss.

    Args:
        class_counts: training images per class, shape (C,); zero counts clamped to 1.
        max_margin: margin of the rarest class.
        scale: logit multiplier s.
        drw_epoch: first (0-based) epoch with re-weighting.
        drw_beta: effective-number beta for the DRW weights.
    """

    def __init__(
        self,
        class_counts,
        max_margin: float = 0.5,
        scale: float = 30.0,
        drw_epoch: int = 0,
        drw_beta: float = 0.9999,
    ):
        super().__init__(class_counts)
        self.scale = float(scale)
        self.drw_epoch = int(drw_epoch)
        self.register_buffer("margins", _buffer(ldam_margins(class_counts, max_margin)))
        self.register_buffer("drw_weights", _buffer(effective_number_weights(class_counts, drw_beta)))
        self.epoch = 0
        self.drw_active = self.drw_epoch <= 0

    def set_epoch(self, epoch: int) -> None:
        """Switch the DRW weights on once ``epoch >= drw_epoch`` (and off again before it)."""
        self.epoch = int(epoch)
        self.drw_active = self.epoch >= self.drw_epoch

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        margin = self.margins.float()[targets]  # (B,)
        onehot = F.one_hot(targets, self.num_classes).to(logits.dtype)
        return F.cross_entropy(self.scale * (logits - margin[:, None] * onehot), targets, reduction="none")

    def reduce(self, losses: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
        if not self.drw_active:
            return super().reduce(losses, targets, valid)
        w = torch.where(valid, self.drw_weights.float()[targets], losses.new_zeros(()))
        # Weights are > 0, so the denominator is 0 only when every sample is ignored
        # (and then the numerator is 0 too).
        return (w * losses).sum() / w.sum().clamp_min(torch.finfo(torch.float32).tiny)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, scale={self.scale}, drw_epoch={self.drw_epoch}, "
            f"drw_active={self.drw_active}"
        )


class FocalLoss(ClassCountLoss):
    """Softmax focal loss -(1 - p_t)^gamma log p_t (Lin et al. 2017); gamma = 0 is CE.

    Args:
        class_counts: training images per class, shape (C,); only C is used.
        gamma: focusing parameter, >= 0.
    """

    def __init__(self, class_counts, gamma: float = 2.0):
        super().__init__(class_counts)
        self.gamma = float(gamma)

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return _focal_per_sample(logits, targets, self.gamma)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, gamma={self.gamma}"


class ClassBalancedLoss(ClassCountLoss):
    """Class-balanced loss (Cui et al. 2019): w_{y} * base loss, with effective-number weights.

    w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to C. Following the paper's
    reference code the batch loss is the plain mean of w_{y_i} * l_i over the batch, so a
    class-uniform batch keeps the scale of the base loss.

    Args:
        class_counts: training images per class, shape (C,); zero counts clamped to 1.
        beta: effective-number beta in [0, 1]; 0 gives the unweighted base loss.
        base: "ce" or "focal".
        gamma: focal gamma, used when ``base == "focal"``.
    """

    def __init__(self, class_counts, beta: float = 0.9999, base: str = "ce", gamma: float = 2.0):
        super().__init__(class_counts)
        if base not in CB_BASES:
            raise ValueError(f"base must be 'ce' or 'focal', got {base!r}")
        self.base = base
        self.gamma = float(gamma)
        self.register_buffer("weights", _buffer(effective_number_weights(class_counts, beta)))

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.base == "focal":
            losses = _focal_per_sample(logits, targets, self.gamma)
        else:
            losses = F.cross_entropy(logits, targets, reduction="none")
        return self.weights.float()[targets] * losses

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, base={self.base!r}, gamma={self.gamma}"


# ----------------------------------------------------------------------------- builders


def _check_beta(value: float, key: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"config key 'loss.{key}' is {value}", fix="it must be in [0, 1], e.g. 0.9999")


def _check_positive(value: float, key: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"config key 'loss.{key}' is {value}", fix="it must be a positive number")


def _check_gamma(value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"config key 'loss.focal_gamma' is {value}", fix="it must be >= 0")


@LOSSES.register("ce")
def build_ce(cfg: LossConfig, class_counts: np.ndarray, epochs: int) -> nn.Module:
    return CrossEntropyLoss(class_counts, label_smoothing=cfg.label_smoothing)


@LOSSES.register("balanced_softmax")
def build_balanced_softmax(cfg: LossConfig, class_counts: np.ndarray, epochs: int) -> nn.Module:
    return LogitAdjustedLoss(class_counts, tau=1.0, label_smoothing=cfg.label_smoothing)


@LOSSES.register("logit_adjusted")
def build_logit_adjusted(cfg: LossConfig, class_counts: np.ndarray, epochs: int) -> nn.Module:
    if not math.isfinite(cfg.tau):
        raise UserError(f"config key 'loss.tau' is {cfg.tau}", fix="it must be a finite number, e.g. 1.0")
    return LogitAdjustedLoss(class_counts, tau=cfg.tau, label_smoothing=cfg.label_smoothing)


@LOSSES.register("ldam_drw")
def build_ldam_drw(cfg: LossConfig, class_counts: np.ndarray, epochs: int) -> nn.Module:
    _check_positive(cfg.ldam_max_margin, "ldam_max_margin")
    _check_positive(cfg.ldam_scale, "ldam_scale")
    _check_beta(cfg.drw_beta, "drw_beta")
    if cfg.drw_epoch < -1:
        raise UserError(
            f"config key 'loss.drw_epoch' is {cfg.drw_epoch}",
            fix="use -1 (80% of the epochs) or a 0-based epoch number",
        )
    drw_epoch = int(0.8 * epochs) if cfg.drw_epoch == -1 else cfg.drw_epoch
    return LDAMDRWLoss(
        class_counts,
        max_margin=cfg.ldam_max_margin,
        scale=cfg.ldam_scale,
        drw_epoch=drw_epoch,
        drw_beta=cfg.drw_beta,
    )


@LOSSES.register("focal")
def build_focal(cfg: LossConfig, class_counts: np.ndarray, epochs: int) -> nn.Module:
    _check_gamma(cfg.focal_gamma)
    return FocalLoss(class_counts, gamma=cfg.focal_gamma)


@LOSSES.register("class_balanced")
def build_class_balanced(cfg: LossConfig, class_counts: np.ndarray, epochs: int) -> nn.Module:
    _check_beta(cfg.cb_beta, "cb_beta")
    if cfg.cb_base not in CB_BASES:
        raise UserError(f"config key 'loss.cb_base' is {cfg.cb_base!r}", fix=f"choose one of: {', '.join(CB_BASES)}")
    if cfg.cb_base == "focal":
        _check_gamma(cfg.focal_gamma)
    return ClassBalancedLoss(class_counts, beta=cfg.cb_beta, base=cfg.cb_base, gamma=cfg.focal_gamma)


# ----------------------------------------------------------------------------- entry points


def build_loss(cfg: LossConfig, class_counts: np.ndarray, epochs: int) -> nn.Module:
    """Build the loss named by ``cfg.name``.

    Args:
        cfg: the ``loss`` section of the run config.
        class_counts: training images per class, shape (C,), non-negative integers.
            Classes with zero images are allowed (see each loss for how they are handled).
        epochs: total training epochs; DRW uses it to resolve ``drw_epoch=-1``.

    Returns:
        A module with ``forward(logits: B x C, targets: B) -> scalar`` and
        ``set_epoch(epoch: int)``.

    Raises:
        UserError: unknown loss name or an invalid loss setting.
        ValueError: class counts that are not a 1-D array of finite non-negative numbers.
    """
    builder = LOSSES.get(cfg.name)
    return builder(cfg, check_class_counts(class_counts), int(epochs))
