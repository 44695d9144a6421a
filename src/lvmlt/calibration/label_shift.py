"""Label-shift correction: estimate the test label prior, then re-weight the posterior.

A classifier trained on a long-tailed source learns p_s(y|x) under the source prior p_s(y).
If at test time only the prior changes to an unknown q(y) (p(x|y) fixed), then

    q(y|x) ∝ p_s(y|x) · w_y,   w_y = q(y) / p_s(y),

i.e. ``logits + log q - log p_s`` before the softmax. The estimators below find q from the
model's predictions on *unlabelled* target data:

- ``bbse``: black-box shift estimation (Lipton et al., 2018): solve C q = μ with the
  confusion matrix C of held-out labelled source data (our validation split).
- ``mlls``: maximum-likelihood EM (Saerens et al., 2002).
- ``mapls``: MAP EM under a Dirichlet prior with adaptive prior learning (Ye et al.,
  WACV 2024); the paper's "Label Shift" rows.

Every estimator is registered in :data:`CALIBRATORS` with one signature (see
:class:`Estimator`), so callers never branch on a method's name. All arithmetic is NumPy
float64 in log space (K may be 1000). Source: the authors' MAPLS repository; what it does
and where we deviate is in docs/implementation-notes.md, "Label shift"; choices of ours are
marked ``[ours]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from lvmlt.errors import UserError
from lvmlt.registry import Registry

# Floor before taking logs: MLLS can drive a class to 0, and 0 is absorbing in EM.
PRIOR_FLOOR = 1e-12

SOURCE_PRIOR_MODES = ("train", "uniform", "soft")


class Estimator(Protocol):
    def __call__(
        self,
        target_logits: np.ndarray,
        source_prior: np.ndarray,
        *,
        val_logits: np.ndarray | None = None,
        val_labels: np.ndarray | None = None,
        **opts,
    ) -> LabelShiftEstimate: ...


CALIBRATORS: Registry[Estimator] = Registry("calibrator")


@dataclass(frozen=True)
class LabelShiftEstimate:
    """An estimated target prior and the re-weighting it implies.

    Attributes:
        target_prior: q, shape (C,), sums to 1.
        source_prior: p_s, the prior the classifier was trained under, shape (C,).
        method: registry name of the estimator.
        info: method-specific diagnostics (e.g. MAPLS's ``lambda``), JSON-serialisable.
    """

    target_prior: np.ndarray
    source_prior: np.ndarray
    method: str
    info: dict = field(default_factory=dict)

    @property
    def log_weights(self) -> np.ndarray:
        """log w = log q - log p_s, shape (C,)."""
        return _safe_log(self.target_prior) - _safe_log(self.source_prior)

    @property
    def weights(self) -> np.ndarray:
        """w = q / p_s, shape (C,)."""
        return np.exp(self.log_weights)

    def adjust_logits(self, logits: np.ndarray) -> np.ndarray:
        """Logits of q(y|x): ``logits + log w``, shape (N, C), float64."""
        return np.asarray(logits, dtype=np.float64) + self.log_weights

    def adjust_probs(self, probs: np.ndarray) -> np.ndarray:
        """q(y|x) from p_s(y|x): multiply by w and renormalise each row, shape (N, C)."""
        p = np.asarray(probs, dtype=np.float64) * self.weights
        return p / p.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- helpers
def apply_bcts(logits, temperature: float, bias: np.ndarray) -> np.ndarray:
    """Logits calibrated by bias-corrected temperature scaling: ``logits / T + b``, float64."""
    return np.asarray(logits, dtype=np.float64) / temperature + bias


def bcts_source_prior(val_label_counts) -> np.ndarray:
    """The prior a BCTS-calibrated model describes: the validation label histogram, every
    class + 0.5 (so no class has prior 0), normalised."""
    hist = np.asarray(val_label_counts, dtype=np.float64) + 0.5
    return hist / hist.sum()



def _safe_log(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(p, dtype=np.float64), PRIOR_FLOOR))


def _normalise(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    s = p.sum()
    if not np.isfinite(s) or s <= 0:
        raise ValueError("cannot normalise a prior that is zero everywhere")
    return p / s


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64, shape (N, C)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _check_logits(logits: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(logits)
    if a.ndim != 2 or a.shape[0] == 0:
        raise UserError(f"{name} must be a non-empty N x C array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise UserError(f"{name} contains NaN or inf", fix="check the model's predictions")
    return a


def resolve_source_prior(
    mode: str, train_counts: np.ndarray, val_logits: np.ndarray | None = None
) -> np.ndarray:
    """The prior p_s(y) the classifier was trained under, shape (C,).

    Args:
        mode: ``"train"``: training class frequencies n_k / Σn (a plain-CE model);
            ``"uniform"``: 1/C (a model trained with a balanced loss or sampler);
            ``"soft"``: mean softmax of the validation logits, the model's own implicit
            prior [ours: the authors average over the training loader, which our run
            directories do not store; the validation split is drawn from the same pool].
        train_counts: training images per class, shape (C,).
        val_logits: needed for ``"soft"``, shape (N_val, C).
    """
    counts = np.asarray(train_counts, dtype=np.float64)
    if mode == "train":
        return _normalise(np.maximum(counts, 0.0))
    if mode == "uniform":
        return np.full(counts.shape[0], 1.0 / counts.shape[0])
    if mode == "soft":
        if val_logits is None:
            raise UserError("source_prior='soft' needs validation logits")
        return _normalise(np.exp(log_softmax(val_logits)).mean(axis=0))
    raise UserError(f"unknown source_prior {mode!r}", fix=f"choose one of: {', '.join(SOURCE_PRIOR_MODES)}")


def divergence(p: np.ndarray, q: np.ndarray, name: str = "kl") -> float:
    """KL(p || q) (with 1e-8 added to q, as in the authors' code) or Jensen-Shannon."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if name == "kl":
        mask = p > 0
        return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(q[mask] + 1e-8))))
    if name == "js":
        m = 0.5 * (p + q)
        return 0.5 * divergence(p, m, "kl") + 0.5 * divergence(q, m, "kl")
    raise UserError(f"unknown divergence {name!r}", fix="choose one of: kl, js")


# --------------------------------------------------------------------------- EM core


def _map_em(
    log_probs: np.ndarray,
    source_prior: np.ndarray,
    lam: float,
    prior_mean: np.ndarray,
    max_iter: int,
    init: np.ndarray,
    tol: float,
) -> tuple[np.ndarray, int]:
    """EM for the target prior; lam = 1 is MLLS, lam < 1 shrinks to ``prior_mean`` (MAPLS).

    E-step: r_ik ∝ p_s(k|x_i) q_k / p_s(k) (log space). M-step: the Dirichlet-posterior
    mode q = lam · mean_i r_i + (1 - lam) · m, the convex form of
    (S_k + α_k - 1) / (N + Σ(α_j - 1)) with α_k - 1 = a m_k, lam = N / (N + a).
    """
    log_ps = _safe_log(source_prior)
    q = init
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        log_r = log_probs + (_safe_log(q) - log_ps)
        log_r -= log_r.max(axis=1, keepdims=True)
        r = np.exp(log_r)
        r /= r.sum(axis=1, keepdims=True)
        q_new = _normalise(lam * r.mean(axis=0) + (1.0 - lam) * prior_mean)
        delta = np.abs(q_new - q).sum()
        q = q_new
        if tol > 0 and delta < tol:
            break
    return q, iterations


def _init_prior(init: str, source_prior: np.ndarray) -> np.ndarray:
    if init == "identical":
        return source_prior.copy()
    if init == "uniform":
        return np.full_like(source_prior, 1.0 / source_prior.shape[0])
    raise UserError(f"unknown EM init {init!r}", fix="choose one of: identical, uniform")


def _saturate(d: float, d0: float, level: float) -> float:
    """g(d; γ) = γd / (1 + γd) with γ = level / ((1 - level) d0), so that g(d0) = level."""
    # [ours] numeric guard: level -> 1 (a uniform source prior) would make γ infinite.
    level = min(max(level, 0.0), 1.0 - 1e-12)
    gamma = level / ((1.0 - level) * d0)
    return gamma * d / (1.0 + gamma * d)


def apl_lambda(mlls_prior: np.ndarray, source_prior: np.ndarray, dvg: str = "kl") -> float:
    """MAPLS adaptive prior learning: the shrinkage weight λ ∈ (0, 1) from an MLLS estimate.

    λ is large when the MLLS estimate is far from uniform (trust the data) and small when
    it is close to uniform; constants 0.5, 0.2, 0.9, 0.1 are the authors' hard-coded ones.
    """
    c = source_prior.shape[0]
    u = np.full(c, 1.0 / c)
    d_tu = divergence(mlls_prior, u, dvg)
    d_ts = divergence(mlls_prior, source_prior, dvg)
    d_su = divergence(source_prior, u, dvg)
    c_su = 1.0 - _saturate(d_su, 0.5, 0.2)
    c_tu = _saturate(d_tu, 0.5, c_su)
    c_ts = _saturate(d_ts, 0.5, c_su)
    return 0.9 * c_tu + 0.1 * (1.0 - c_ts)


# --------------------------------------------------------------------------- estimators


@CALIBRATORS.register("mlls")
def estimate_mlls(
    target_logits: np.ndarray,
    source_prior: np.ndarray,
    *,
    val_logits: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    max_iter: int = 100,
    init: str = "identical",
    tol: float = 0.0,
) -> LabelShiftEstimate:
    """MLLS / EM of Saerens et al. (2002).

    Args:
        target_logits: unlabelled target predictions, shape (N, C).
        source_prior: p_s, shape (C,).
        val_logits, val_labels: unused (uniform estimator signature).
        max_iter: EM iterations (the authors run a fixed 100, no tolerance).
        init: ``"identical"`` (start at p_s) or ``"uniform"``.
        tol: stop early once the L1 change of q is below ``tol`` (0 = never) [ours].
    """
    log_probs = log_softmax(_check_logits(target_logits, "target logits"))
    ps = _normalise(source_prior)
    q, it = _map_em(log_probs, ps, 1.0, ps, max_iter, _init_prior(init, ps), tol)
    return LabelShiftEstimate(q, ps, "mlls", {"iterations": it})


@CALIBRATORS.register("mapls")
def estimate_mapls(
    target_logits: np.ndarray,
    source_prior: np.ndarray,
    *,
    val_logits: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    lam: float | None = None,
    max_iter: int = 100,
    init: str = "identical",
    prior_mean: str = "uniform",
    dvg: str = "kl",
    tol: float = 0.0,
) -> LabelShiftEstimate:
    """MAPLS (Ye et al., WACV 2024): MAP EM under a Dirichlet prior on q.

    Args:
        target_logits: unlabelled target predictions, shape (N, C).
        source_prior: p_s, shape (C,).
        val_logits, val_labels: unused (uniform estimator signature).
        lam: shrinkage weight in (0, 1]; None = adaptive prior learning (the default,
            from an MLLS run with the same settings). 1 reproduces MLLS.
        max_iter: EM iterations (authors: 100).
        init: ``"identical"`` or ``"uniform"`` EM start.
        prior_mean: Dirichlet mean m: ``"uniform"`` (authors) or ``"source"`` (their
            commented-out alternative).
        dvg: divergence for APL: ``"kl"`` (authors' default) or ``"js"``.
        tol: early-stop tolerance on the L1 change of q (0 = fixed iterations) [ours].
    """
    log_probs = log_softmax(_check_logits(target_logits, "target logits"))
    ps = _normalise(source_prior)
    c = ps.shape[0]
    if prior_mean == "uniform":
        m = np.full(c, 1.0 / c)
    elif prior_mean == "source":
        m = ps
    else:
        raise UserError(f"unknown MAPLS prior_mean {prior_mean!r}", fix="choose one of: uniform, source")
    q0 = _init_prior(init, ps)
    info: dict = {}
    if lam is None:
        q_mlls, _ = _map_em(log_probs, ps, 1.0, m, max_iter, q0, tol)
        lam = apl_lambda(q_mlls, ps, dvg)
        info["lambda_source"] = "apl"
    elif not 0.0 < lam <= 1.0:
        raise UserError(f"MAPLS lam={lam} is outside (0, 1]", fix="pass a value in (0, 1] or leave it unset")
    q, it = _map_em(log_probs, ps, float(lam), m, max_iter, q0, tol)
    info.update({"lambda": float(lam), "iterations": it})
    return LabelShiftEstimate(q, ps, "mapls", info)


def confusion_matrix(
    val_logits: np.ndarray, val_labels: np.ndarray, num_classes: int, mode: str = "soft"
) -> tuple[np.ndarray, np.ndarray]:
    """Conditional confusion matrix M[z, y] = P(ŷ = z | y) on labelled source data.

    Args:
        val_logits: shape (N, C).
        val_labels: shape (N,), ints in [0, C).
        mode: ``"soft"`` (average predicted probabilities) or ``"hard"`` (argmax counts).

    Returns:
        (M, counts): M of shape (C, C) whose columns sum to 1 for classes with data and
        are 0 otherwise; counts per true class, shape (C,).
    """
    labels = np.asarray(val_labels, dtype=np.int64)
    if mode == "soft":
        pred = np.exp(log_softmax(val_logits))
    elif mode == "hard":
        pred = np.eye(num_classes)[np.asarray(val_logits).argmax(axis=1)]
    else:
        raise UserError(f"unknown BBSE confusion mode {mode!r}", fix="choose one of: soft, hard")
    joint = np.zeros((num_classes, num_classes))
    np.add.at(joint.T, labels, pred)  # joint[:, y] += p(ŷ | x_i) for y = y_i
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    m = np.divide(joint, counts, out=np.zeros_like(joint), where=counts > 0)
    return m, counts


@CALIBRATORS.register("bbse")
def estimate_bbse(
    target_logits: np.ndarray,
    source_prior: np.ndarray,
    *,
    val_logits: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    mode: str = "soft",
) -> LabelShiftEstimate:
    """BBSE (Lipton et al., 2018) with the confusion matrix of held-out source data.

    Solves M q = μ in the least-squares sense, with M[z, y] = P(ŷ = z | y) on the
    validation split and μ_z the mean prediction on the target, then clips q ≥ 0 and
    renormalises. This conditional form equals the original joint form C w = μ with
    w = q / p_val, but lets classes absent from the validation split be handled.

    Args:
        target_logits: unlabelled target predictions, shape (N, C).
        source_prior: p_s, shape (C,) (only used to form the weights q / p_s).
        val_logits, val_labels: labelled held-out source data, shapes (N_val, C), (N_val,).
        mode: ``"soft"`` or ``"hard"`` predictions for both M and μ (authors run both).
    """
    target_logits = _check_logits(target_logits, "target logits")
    if val_logits is None or val_labels is None:
        raise UserError("BBSE needs labelled validation predictions", fix="save val_logits and val_labels")
    val_logits = _check_logits(val_logits, "validation logits")
    ps = _normalise(source_prior)
    c = ps.shape[0]
    m, counts = confusion_matrix(val_logits, val_labels, c, mode)
    missing = counts == 0
    # [ours] a class with no validation image has no confusion column; assume it is
    # predicted as itself rather than leave the system underdetermined.
    m[:, missing] = np.eye(c)[:, missing]
    if mode == "soft":
        mu = np.exp(log_softmax(target_logits)).mean(axis=0)
    else:
        mu = np.bincount(target_logits.argmax(axis=1), minlength=c) / target_logits.shape[0]
    q, *_ = np.linalg.lstsq(m, mu, rcond=None)
    q = np.clip(q, 0.0, None)
    info = {"classes_without_val": int(missing.sum()), "condition_number": float(np.linalg.cond(m))}
    if q.sum() <= 0:  # degenerate solve: keep the source prior rather than fail
        q, info["fallback"] = ps.copy(), "source_prior"
    return LabelShiftEstimate(_normalise(q), ps, "bbse", info)


@CALIBRATORS.register("pc")
def estimate_uniform_target(
    target_logits: np.ndarray,
    source_prior: np.ndarray,
    *,
    val_logits: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
) -> LabelShiftEstimate:
    """PC softmax: no estimation, a known balanced target q = 1/C.

    Equal to post-hoc logit adjustment with τ = 1; the baseline that MAPLS approaches on
    a balanced test set.
    """
    ps = _normalise(source_prior)
    c = ps.shape[0]
    return LabelShiftEstimate(np.full(c, 1.0 / c), ps, "pc", {})
