"""Decoupled post-hoc corrections of a trained classifier.

- :func:`logit_adjust`: subtract τ log π from the logits (Menon et al., 2021); τ = 1 is
  the Bayes-optimal correction for a balanced test set ("PC softmax").
- :func:`tau_normalize`: rescale each class's weight vector, W_c / ||W_c||^τ (Kang et
  al., 2020); τ = 0 leaves W unchanged, τ = 1 gives unit-norm rows.
- :func:`fit_lws`: learnable weight scaling, one scalar per class fitted on frozen
  features with class-balanced weighting (Kang et al., 2020).
- :func:`fit_bcts`: bias-corrected temperature scaling (Alexandari et al., ICML 2020),
  z / T + b fitted by NLL on labelled validation logits: the calibration EM-based
  label-shift estimators (MLLS, MAPLS) assume and a plain CE network lacks.

cRT (re-training the classifier with class-balanced sampling) is a training run and lives
with the trainer. Logit adjustment is also registered as the calibrator
``logit_adjust``: subtracting τ log π is the label-shift correction towards the target
prior q ∝ π^(1-τ).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lvmlt.calibration.label_shift import (  # noqa: F401  (apply_bcts: re-exported beside fit_bcts)
    CALIBRATORS,
    LabelShiftEstimate,
    _normalise,
    _safe_log,
    apply_bcts,
)
from lvmlt.models.heads import ClassScale


def _log_prior(class_prior_or_counts) -> np.ndarray:
    p = np.asarray(class_prior_or_counts, dtype=np.float64)
    return _safe_log(_normalise(p))


def fit_bcts(logits, labels, iters: int = 100) -> tuple[float, np.ndarray]:
    """Bias-corrected temperature scaling: (T, b) minimising the NLL of softmax(z / T + b).

    Args:
        logits: validation logits (N, C); labels: (N,) ints in [0, C).
    Returns:
        T > 0 and the per-class biases b (C,), float64; b is centred (softmax ignores a shift).
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t, b], lr=0.5, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z * torch.exp(-log_t) + b, y) + 1e-6 * (b**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    bias = (b - b.mean()).detach().numpy()
    return float(torch.exp(log_t.detach())), bias


def logit_adjust(logits, class_prior, tau: float = 1.0):
    """Post-hoc logit adjustment: ``logits - τ log π``.

    Args:
        logits: shape (N, C); a NumPy array or a torch tensor (returned as the same kind,
            dtype and device).
        class_prior: training prior π or raw class counts (normalised here), shape (C,).
        tau: adjustment strength; 0 returns the logits unchanged.
    """
    log_prior = _log_prior(class_prior)
    if isinstance(logits, torch.Tensor):
        return logits - tau * torch.as_tensor(log_prior, dtype=logits.dtype, device=logits.device)
    logits = np.asarray(logits)
    out = logits - tau * log_prior
    return out.astype(logits.dtype, copy=False) if np.issubdtype(logits.dtype, np.floating) else out


def tau_normalize(weight, tau: float = 1.0, eps: float = 1e-12):
    """τ-normalisation of a classifier's weights: row c becomes W_c / ||W_c||^τ.

    Args:
        weight: shape (C, D) (a ``nn.Linear`` weight); NumPy array or torch tensor.
        tau: 0 = identity, 1 = unit-norm rows. Kang et al. pick τ on a validation split.
        eps: floor on the norms, so an all-zero row stays zero instead of NaN.
    """
    if isinstance(weight, torch.Tensor):
        norms = weight.norm(dim=1, keepdim=True).clamp_min(eps)
        return weight / norms.pow(tau)
    w = np.asarray(weight)
    norms = np.maximum(np.linalg.norm(w, axis=1, keepdims=True), eps)
    return w / norms**tau


def fit_lws(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    steps: int = 200,
    lr: float = 0.05,
    weight_decay: float = 0.0,
) -> torch.Tensor:
    """Learnable weight scaling: per-class scales s with logits ``s * (x Wᵀ + b)``.

    The classifier stays frozen; only s (initialised to 1) is fitted, full batch with
    Adam, minimising class-balanced cross-entropy. The scale is the model's own LWS module
    (:class:`~lvmlt.models.heads.ClassScale`, trained by the trainer under ``stage.lws``). [ours] Kang et al. use class-balanced
    *sampling*; each class's loss is weighted by 1/n_c instead, which has the same
    expectation and is deterministic. Pick ``steps``/``lr`` on a validation split.

    Args:
        features: frozen penultimate features, shape (N, D).
        labels: shape (N,), ints in [0, C).
        weight: classifier weight, shape (C, D).
        bias: classifier bias, shape (C,), or None.

    Returns:
        The scales, shape (C,), detached, on ``weight``'s device.
    """
    with torch.no_grad():
        base = features.to(weight.dtype) @ weight.T
        if bias is not None:
            base = base + bias
    c = weight.shape[0]
    counts = torch.bincount(labels, minlength=c).to(base.dtype)
    class_w = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    class_w = class_w * c / class_w.sum()
    lws = ClassScale(c, device=base.device, dtype=base.dtype)  # the model's LWS (stage.lws)
    opt = torch.optim.Adam(lws.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(lws(base), labels, weight=class_w)
        loss.backward()
        opt.step()
    return lws.scale.detach()


@CALIBRATORS.register("logit_adjust")
def estimate_logit_adjust(
    target_logits: np.ndarray,
    source_prior: np.ndarray,
    *,
    val_logits: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    tau: float = 1.0,
) -> LabelShiftEstimate:
    """Post-hoc logit adjustment as a calibrator: target prior q ∝ π^(1 - τ).

    ``adjust_logits`` then adds log q - log π = -τ log π + const, i.e. exactly
    :func:`logit_adjust` up to a per-row constant that softmax ignores.
    """
    ps = _normalise(source_prior)
    q = _normalise(np.exp((1.0 - tau) * _safe_log(ps)))
    return LabelShiftEstimate(q, ps, "logit_adjust", {"tau": float(tau)})
