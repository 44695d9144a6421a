"""Synthetic tail features in the frozen encoder's latent space, and a linear classifier.

The system (Sharma, arXiv 2509.15859) samples synthetic features for tail classes in a
foundation model's latent space and trains only a linear classifier on real + synthetic
features. Its sampling procedure is not public, so this module follows the recipe of
METHODS-NOTES 5.2, which is **ours** (marked [ours] in reports):

1. features: stored v_SAM vectors, centred on the training mean and L2-normalised (``cl2n``);
2. per class c with n_c >= n_min (50): a Gaussian N(mu_c, Sigma_c) with
   Sigma_c = (1 - beta) S_c + beta (tr S_c / d) I, beta from Ledoit-Wolf;
3. per class with n_c < n_min: its own mean, and the mean covariance of the k = 3 head
   classes whose means are closest in cosine, + eps I (Distribution-Calibration style
   borrowing; a class with one image needs it most);
4. M_c = max(0, n_target - n_c) samples per class, n_target = the largest class's count,
   re-normalised onto the sphere;
5. a linear head (with bias) on real + synthetic, AdamW, cosine schedule; plain CE because
   the mix is balanced (logit adjustment on the mix's prior otherwise).

A von Mises-Fisher option (``distribution=vmf``) fits a mean direction and a concentration
kappa per class instead (kappa borrowed from the nearest head classes for tail classes) and
samples with Wood's (1994) rejection sampler.

The linear probe (:func:`fit_linear_probe`) is step 5 on the real features alone: the
baseline the synthetic features must beat, with the same head and optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lvmlt.config import SyntheticConfig
from lvmlt.errors import UserError
from lvmlt.evaluation.metrics import score
from lvmlt.methods.common import (
    FeatureNorm,
    HeadTraining,
    MethodResult,
    Timer,
    count_trainable,
    fit_head,
)
from lvmlt.models.classifier import LTClassifier

DISTRIBUTIONS = ("gaussian", "vmf")


# ----------------------------------------------------------------------------- statistics


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf (2004) shrinkage of the sample covariance towards (tr S / d) I.

    Args:
        x: n x d samples (n >= 2).

    Returns:
        ``(Sigma, beta)``: the d x d shrunk covariance (float64) and the shrinkage in [0, 1].
        S uses 1/n (the maximum-likelihood covariance), as in Ledoit and Wolf.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / n
    mu = np.trace(s) / d
    # delta^2 = ||S - mu I||_F^2 / d ; beta_bar^2 = (1/n^2) sum_i ||x_i x_i^T - S||_F^2 / d
    delta2 = (np.sum(s**2) - 2 * mu * np.trace(s) + mu**2 * d) / d
    sq = (xc**2).sum(axis=1)  # ||x_i||^2
    beta2 = (np.sum(sq**2) / n - np.sum(s**2)) / (n * d)
    beta = 0.0 if delta2 <= 0 else float(np.clip(beta2 / delta2, 0.0, 1.0))
    return (1 - beta) * s + beta * mu * np.eye(d), beta


def shrunk_covariance(x: np.ndarray, shrinkage: float) -> tuple[np.ndarray, float]:
    """Sample covariance shrunk towards (tr S / d) I; ``shrinkage < 0`` = Ledoit-Wolf."""
    if shrinkage < 0:
        return ledoit_wolf(x)
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / len(x)
    d = s.shape[0]
    return (1 - shrinkage) * s + shrinkage * (np.trace(s) / d) * np.eye(d), float(shrinkage)


def estimate_kappa(x: np.ndarray) -> float:
    """vMF concentration of unit vectors (Banerjee et al. 2005): R (d - R^2) / (1 - R^2)."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[1]
    r = float(np.linalg.norm(x.mean(axis=0)))
    r = min(r, 1 - 1e-9)
    return r * (d - r**2) / (1 - r**2)


@dataclass
class ClassDistribution:
    """The fitted latent distribution of one class.

    Attributes:
        mean: (d,) class mean (Gaussian) or unit mean direction (vMF).
        cov: (d, d) covariance (Gaussian only).
        kappa: concentration (vMF only).
        n: real training samples of the class.
        borrowed_from: head classes whose covariance / kappa was borrowed; () = its own.
        shrinkage: the covariance shrinkage used (Gaussian, own statistics only).
    """

    mean: np.ndarray
    cov: np.ndarray | None = None
    kappa: float | None = None
    n: int = 0
    borrowed_from: tuple[int, ...] = ()
    shrinkage: float | None = None


def _nearest_heads(mean: np.ndarray, head_means: dict[int, np.ndarray], k: int) -> tuple[int, ...]:
    """The k head classes whose means have the highest cosine with ``mean`` (ties: lower id)."""
    ids = sorted(head_means)
    m = mean / max(np.linalg.norm(mean), 1e-12)
    cos = [float(m @ head_means[j] / max(np.linalg.norm(head_means[j]), 1e-12)) for j in ids]
    order = sorted(range(len(ids)), key=lambda t: (-cos[t], ids[t]))
    return tuple(ids[t] for t in order[:k])


def fit_class_distributions(
    x: np.ndarray, y: np.ndarray, num_classes: int, cfg: SyntheticConfig
) -> list[ClassDistribution | None]:
    """One latent distribution per class (None for a class without training samples).

    Classes with at least ``cfg.n_min`` samples use their own statistics; the others keep
    their own mean and borrow the covariance (Gaussian) or kappa (vMF) of the
    ``cfg.borrow_k`` head classes with the most similar means. When no class reaches
    ``n_min``, the borrowed covariance is the pooled within-class one (Ledoit-Wolf).

    Args:
        x: n x d features (already normalised as the head will see them).
        y: n labels in 0..num_classes-1.
        num_classes: C.
        cfg: distribution settings.
    """
    if cfg.distribution not in DISTRIBUTIONS:
        raise UserError(f"unknown synthetic.distribution {cfg.distribution!r}", fix="choose gaussian or vmf")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    d = x.shape[1]
    counts = np.bincount(y, minlength=num_classes)
    heads = [c for c in range(num_classes) if counts[c] >= max(cfg.n_min, 2)]
    out: list[ClassDistribution | None] = [None] * num_classes
    for c in heads:
        xc = x[y == c]
        if cfg.distribution == "gaussian":
            cov, beta = shrunk_covariance(xc, cfg.shrinkage)
            out[c] = ClassDistribution(xc.mean(axis=0), cov=cov, n=len(xc), shrinkage=beta)
        else:
            mu = xc.mean(axis=0)
            out[c] = ClassDistribution(mu / np.linalg.norm(mu), kappa=estimate_kappa(xc), n=len(xc))
    head_means = {c: x[y == c].mean(axis=0) for c in heads}
    pooled = None
    for c in range(num_classes):
        if counts[c] == 0 or out[c] is not None:
            continue
        xc = x[y == c]
        mu = xc.mean(axis=0)
        src = _nearest_heads(mu, head_means, cfg.borrow_k) if heads else ()
        if cfg.distribution == "vmf":
            if src:
                kappa = float(np.mean([out[j].kappa for j in src]))
            else:  # no head class: the mean kappa of the classes with two or more samples
                several = [estimate_kappa(x[y == k]) for k in range(num_classes) if counts[k] >= 2]
                kappa = float(np.mean(several)) if several else 1.0
            out[c] = ClassDistribution(mu / np.linalg.norm(mu), kappa=kappa, n=len(xc), borrowed_from=src)
            continue
        if src:
            cov = np.mean([out[j].cov for j in src], axis=0)
        else:
            if pooled is None:
                centred = np.concatenate(
                    [x[y == k] - x[y == k].mean(axis=0) for k in range(num_classes) if counts[k]]
                )
                pooled = ledoit_wolf(centred)[0]
            cov = pooled
        if cfg.borrow_rescale and len(xc) >= 2:
            # Match the borrowed spread to the class's own (biased low for few samples).
            own = float(np.trace(np.cov(xc.T, bias=True))) if d > 1 else float(np.var(xc))
            cov = cov * (own / max(float(np.trace(cov)), 1e-12))
        cov = cov + cfg.eps * np.eye(d)
        out[c] = ClassDistribution(mu, cov=cov, n=len(xc), borrowed_from=src)
    return out


# ----------------------------------------------------------------------------- sampling


def sample_gaussian(dist: ClassDistribution, m: int, rng: np.random.Generator) -> np.ndarray:
    """m x d draws of N(mean, cov) via a float64 Cholesky factor (jitter added if needed)."""
    d = len(dist.mean)
    cov = dist.cov
    jitter = 0.0
    scale = max(float(np.trace(cov)) / d, 1e-12)
    for _ in range(8):
        try:
            chol = np.linalg.cholesky(cov + jitter * np.eye(d))
            break
        except np.linalg.LinAlgError:
            jitter = scale * 1e-8 if jitter == 0 else jitter * 10
    else:  # pragma: no cover - a covariance this broken is our bug
        raise np.linalg.LinAlgError("covariance is not positive definite even with jitter")
    return dist.mean + rng.standard_normal((m, d)) @ chol.T


def sample_vmf(mu: np.ndarray, kappa: float, m: int, rng: np.random.Generator) -> np.ndarray:
    """m x d draws from the von Mises-Fisher distribution (Wood 1994).

    The cosine w = <x, mu> is drawn by rejection from its marginal
    f(w) ~ exp(kappa w) (1 - w^2)^((d - 3) / 2); the rest is a uniform direction orthogonal
    to mu.
    """
    mu = np.asarray(mu, dtype=np.float64)
    mu = mu / np.linalg.norm(mu)
    d = len(mu)
    if kappa <= 0:
        z = rng.standard_normal((m, d))
        return z / np.linalg.norm(z, axis=1, keepdims=True)
    # b written without cancellation for large kappa.
    b = (d - 1) / (2 * kappa + np.sqrt(4 * kappa**2 + (d - 1) ** 2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (d - 1) * np.log(1 - x0**2)
    ws: list[np.ndarray] = []
    got = 0
    while got < m:
        k = max(2 * (m - got), 16)
        z = rng.beta((d - 1) / 2, (d - 1) / 2, size=k)
        w = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        u = rng.uniform(size=k)
        ok = kappa * w + (d - 1) * np.log(1 - x0 * w) - c >= np.log(u)
        ws.append(w[ok])
        got += int(ok.sum())
    w = np.concatenate(ws)[:m]
    v = rng.standard_normal((m, d))
    v -= np.outer(v @ mu, mu)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return w[:, None] * mu + np.sqrt(np.clip(1 - w**2, 0, None))[:, None] * v


def synthesize(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    on_sphere: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[ClassDistribution | None]]:
    """Synthetic features that top every class up to the target count.

    Args:
        x, y: real training features (n x d) and labels.
        num_classes: C.
        cfg: ``target`` (0 = the largest class's count) and the distribution settings.
        rng: the generator (seeded by the caller).
        on_sphere: the features are unit vectors; Gaussian samples are re-normalised
            when ``cfg.renormalize``.

    Returns:
        ``(x_syn m x d float32, y_syn (m,), distributions)``: class c gets
        ``max(0, target - n_c)`` samples, so real + synthetic counts are
        ``max(n_c, target)`` (exactly balanced when target is the largest count).
    """
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=num_classes)
    if cfg.distribution == "vmf" and not on_sphere:
        raise UserError(
            "synthetic.distribution=vmf needs unit-norm features", fix="set synthetic.features=cl2n or l2"
        )
    target = cfg.target or int(counts.max())
    dists = fit_class_distributions(x, y, num_classes, cfg)
    xs, ys = [], []
    for c, dist in enumerate(dists):
        m = max(0, target - int(counts[c]))
        if m == 0 or dist is None:
            continue
        if cfg.distribution == "vmf":
            z = sample_vmf(dist.mean, dist.kappa, m, rng)
        else:
            z = sample_gaussian(dist, m, rng)
            if on_sphere and cfg.renormalize:
                z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        xs.append(z.astype(np.float32))
        ys.append(np.full(m, c, dtype=np.int64))
    if not xs:
        return np.zeros((0, x.shape[1]), np.float32), np.zeros(0, np.int64), dists
    return np.concatenate(xs), np.concatenate(ys), dists


# ----------------------------------------------------------------------------- the classifier


def _head_training(cfg: SyntheticConfig) -> HeadTraining:
    return HeadTraining(
        epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size
    )


def train_linear(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    how: HeadTraining,
    seed: int,
    weights: np.ndarray | None = None,
    log_prior: np.ndarray | None = None,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[LTClassifier, dict]:
    """The linear probe (:class:`~lvmlt.models.classifier.LTClassifier` on the vectors, with bias) trained with (weighted, optionally logit-adjusted) CE.

    Args:
        x: n x d features; y: (n,) labels (negative = ignored).
        num_classes: C.
        how: optimiser settings.
        seed: seeds the initial weights and the batch order.
        weights: per-sample loss weights (None = 1); the loss is sum(w l) / sum(w).
        log_prior: (C,) added to the logits in training only (logit adjustment).
        val: (features, labels) for epoch selection by mean per-class accuracy.

    Returns:
        ``(head, {"best_epoch", "history"})``.
    """
    torch.manual_seed(int(seed))
    # The one linear probe on v_SAM (``fusion.sam_only``), without its BatchNorm: the
    # features arrive normalised.
    head = LTClassifier(None, num_classes, sam_dim=x.shape[1], sam_norm="none")
    keep = np.asarray(y) >= 0
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32)[keep])
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64)[keep])
    wt = None if weights is None else torch.from_numpy(np.asarray(weights, dtype=np.float32)[keep])
    adj = None if log_prior is None else torch.as_tensor(log_prior, dtype=torch.float32)

    def loss_fn(m, xs, yb, wb):
        logits = m({"sam_vec": xs[0]})["logits"]
        if adj is not None:
            logits = logits + adj
        per = F.cross_entropy(logits, yb, reduction="none")
        return per.mean() if wb is None else (per * wb).sum() / wb.sum().clamp_min(1e-12)

    def predict(m, xs):
        return m({"sam_vec": xs[0]})["logits"]

    vt = (
        None
        if val is None
        else ([torch.from_numpy(np.asarray(val[0], dtype=np.float32))], np.asarray(val[1]))
    )
    return fit_head(head, loss_fn, predict, ([xt], yt, wt), vt, how, seed)


def _prepared(feats: dict[str, np.ndarray], kind: str) -> tuple[FeatureNorm, dict[str, np.ndarray]]:
    norm = FeatureNorm(kind).fit(feats["train"])
    return norm, {k: norm(v) for k, v in feats.items()}


def _evaluate(
    name: str, head: nn.Module, xs: dict, labels: dict, train_counts, meta: dict, seconds: float, info: dict, ev=None
) -> MethodResult:
    with torch.no_grad():
        res = {
            s: score(head({"sam_vec": torch.from_numpy(xs[s])})["logits"], labels[s], train_counts, meta, ev) for s in ("val", "test")
        }
    return MethodResult(
        name, res["val"], res["test"], count_trainable(head), seconds, info["best_epoch"], info
    )


def fit_linear_probe(
    feats: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    num_classes: int,
    meta: dict,
    cfg: SyntheticConfig,
    seed: int = 0,
    logit_adjusted: bool = False,
    name: str = "linear probe",
    ev=None,
) -> MethodResult:
    """The baseline: a linear classifier on the real features only.

    Args:
        feats: ``{split: N x d}`` stored vectors (v_SAM) of train, val and test.
        labels: ``{split: (N,)}``, -1 for skipped images.
        num_classes: C.
        meta: the bundle's meta (group thresholds).
        cfg: feature normalisation and head training settings.
        seed: seeds the head's initial weights and batch order.
        logit_adjusted: train with LA-CE on the real prior (tau = 1) instead of CE.
        ev: the run's ``cfg.eval`` (group thresholds; None = the dataset's).
    """
    with Timer() as t:
        _, xs = _prepared(feats, cfg.features)
        y = labels["train"]
        counts = np.bincount(y[y >= 0], minlength=num_classes)
        prior = np.log(np.maximum(counts, 1) / counts.sum()) if logit_adjusted else None
        head, info = train_linear(
            xs["train"],
            y,
            num_classes,
            _head_training(cfg),
            seed,
            log_prior=prior,
            val=(xs["val"], labels["val"]),
        )
    info["loss"] = "logit_adjusted" if logit_adjusted else "ce"
    return _evaluate(name, head, xs, labels, counts, meta, t.seconds, info, ev)


def fit_synthetic(
    feats: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    num_classes: int,
    meta: dict,
    cfg: SyntheticConfig,
    seed: int = 0,
    name: str | None = None,
    ev=None,
) -> MethodResult:
    """Synthetic tail features + a linear classifier on real + synthetic (module docstring).

    Args: as :func:`fit_linear_probe`. ``seed`` also seeds the sampling.

    Returns:
        A :class:`MethodResult`; ``info`` holds the synthetic count per class, which classes
        borrowed statistics (and from whom), the shrinkage per class and the loss used.
        Groups (many/medium/few) are by the *real* training counts.
    """
    name = name or f"synthetic latent features ({cfg.distribution})"
    with Timer() as t:
        norm, xs = _prepared(feats, cfg.features)
        y = labels["train"]
        keep = y >= 0
        x_real, y_real = xs["train"][keep], y[keep]
        counts = np.bincount(y_real, minlength=num_classes)
        rng = np.random.default_rng([int(seed), 5])
        x_syn, y_syn, dists = synthesize(x_real, y_real, num_classes, cfg, rng, on_sphere=norm.on_sphere)
        x_all = np.concatenate([x_real, x_syn])
        y_all = np.concatenate([y_real, y_syn])
        w_all = np.concatenate([np.ones(len(y_real)), np.full(len(y_syn), cfg.synthetic_weight)]).astype(
            np.float32
        )
        mix = np.bincount(y_all, weights=w_all, minlength=num_classes)
        loss = cfg.loss
        if loss == "auto":
            loss = "ce" if np.allclose(mix, mix.max()) else "logit_adjusted"
        if loss not in ("ce", "logit_adjusted"):
            raise UserError(f"unknown synthetic.loss {cfg.loss!r}", fix="choose auto, ce or logit_adjusted")
        # Any prior correction must use the mix actually trained on, not the real counts.
        prior = np.log(np.maximum(mix, 1e-12) / mix.sum()) if loss == "logit_adjusted" else None
        head, info = train_linear(
            x_all,
            y_all,
            num_classes,
            _head_training(cfg),
            seed,
            weights=w_all,
            log_prior=prior,
            val=(xs["val"], labels["val"]),
        )
    info.update(
        loss=loss,
        real_counts=counts.tolist(),
        synthetic_counts=np.bincount(y_syn, minlength=num_classes).tolist(),
        borrowed={c: list(d.borrowed_from) for c, d in enumerate(dists) if d is not None and d.borrowed_from},
        shrinkage={c: d.shrinkage for c, d in enumerate(dists) if d is not None and d.shrinkage is not None},
        kappa={c: d.kappa for c, d in enumerate(dists) if d is not None and d.kappa is not None},
    )
    return _evaluate(name, head, xs, labels, counts, meta, t.seconds, info, ev)
