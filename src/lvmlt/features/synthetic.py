"""Synthetic tail features in the frozen encoder's latent space, as a training-set wrapper.

The system (Sharma, arXiv 2509.15859) samples synthetic features for tail classes in a
foundation model's latent space and trains only a linear classifier on real + synthetic
features. Its sampling procedure is not public, so this module follows a recipe that is
**ours** (marked [ours] in reports; docs/methods-other.md, "Synthetic tail features in the
latent space"):

1. features: stored v_SAM vectors, centred on the training mean and L2-normalised (``cl2n``,
   the probe's ``fusion.sam_norm``);
2. per class c with n_c >= n_min (50): a Gaussian N(mu_c, Sigma_c) with
   Sigma_c = (1 - beta) S_c + beta (tr S_c / d) I, beta from Ledoit-Wolf;
3. per class with n_c < n_min: its own mean, and the mean covariance of the k = 3 head
   classes whose means are closest in cosine, + eps I (Distribution-Calibration style
   borrowing; a class with one image needs it most);
4. M_c = max(0, n_target - n_c) samples per class, n_target = the largest class's count,
   re-normalised onto the sphere;
5. the linear probe (``system=synthetic_probe``) on real + synthetic, trained by the trainer
   (AdamW, cosine schedule in the comparison's recipe); plain CE because the mix is
   balanced (``loss.*`` sees the mix's counts, so logit adjustment corrects the mix's prior).

A von Mises-Fisher option (``distribution=vmf``) fits a mean direction and a concentration
kappa per class instead (kappa borrowed from the nearest head classes for tail classes) and
samples with Wood's (1994) rejection sampler.

:class:`SyntheticTopUp` is the training split with the synthetic samples appended (built
as the ``synthetic_probe`` system's top-up of its training split, :mod:`lvmlt.systems`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lvmlt.config import SyntheticConfig
from lvmlt.errors import UserError
from lvmlt.inputs import SAM_VEC, SPHERE_NORMS

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
            "synthetic.distribution=vmf needs unit-norm features", fix="set fusion.sam_norm=cl2n or l2"
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


# ----------------------------------------------------------------------------- the training split


class SyntheticTopUp(torch.utils.data.Dataset):
    """The training :class:`~lvmlt.features.dataset.FeatureDataset` plus synthetic samples
    of ``key`` that top every class up to the target count (:func:`synthesize`).

    Items ``0..n-1`` are the real ones; the rest carry only the synthetic vector, the
    class and ``valid``. ``labels`` (for the sampler) and ``class_counts`` (for the loss
    terms: the mix actually trained on) cover real + synthetic; the metric groups stay
    those of the real training counts.

    Args:
        base: the real training split, its ``key`` vectors already normalised.
        num_classes: C.
        cfg: the ``synthetic`` section.
        seed: seeds the sampling (the run's seed).
        on_sphere: the vectors are unit vectors (``cl2n`` or ``l2``).
        key: the vector the synthetic samples replace (v_SAM).
    """

    def __init__(self, base, num_classes: int, cfg: SyntheticConfig, seed: int, on_sphere: bool, key: str = "sam_vec"):
        self.base, self.key = base, key
        y = np.asarray(base.labels, dtype=np.int64).copy()
        real = np.array([i not in base.bad for i in range(len(y))], dtype=bool) & (y >= 0)
        x = np.asarray(base.arrays[key])[real]
        rng = np.random.default_rng([int(seed), 5])
        self.x_syn, self.y_syn, self.distributions = synthesize(x, y[real], num_classes, cfg, rng, on_sphere)
        self.labels = np.concatenate([y, self.y_syn])
        self.real_counts = np.bincount(y[real], minlength=num_classes)
        self.class_counts = self.real_counts + np.bincount(self.y_syn, minlength=num_classes)

    def __len__(self):
        return len(self.base) + len(self.y_syn)

    def __getitem__(self, i):
        n = len(self.base)
        if i < n:
            return self.base[i]
        j = i - n
        return {self.key: torch.from_numpy(self.x_syn[j]), "label": int(self.y_syn[j]), "index": i, "valid": True}

    def info(self) -> dict:
        """What was sampled: counts per class, which classes borrowed (and from whom), shrinkage, kappa."""
        d = self.distributions
        return {
            "real_counts": self.real_counts.tolist(),
            "synthetic_counts": np.bincount(self.y_syn, minlength=len(d)).tolist(),
            "borrowed": {c: list(v.borrowed_from) for c, v in enumerate(d) if v is not None and v.borrowed_from},
            "shrinkage": {c: v.shrinkage for c, v in enumerate(d) if v is not None and v.shrinkage is not None},
            "kappa": {c: v.kappa for c, v in enumerate(d) if v is not None and v.kappa is not None},
        }


def top_up(cfg, spec, train) -> SyntheticTopUp:
    """The ``synthetic_probe`` system's top-up of its training split (:mod:`lvmlt.systems`):
    ``cfg.synthetic`` sampled in the probe's normalised space (``spec.norms``)."""
    on_sphere = spec.norms.get(SAM_VEC) in SPHERE_NORMS
    return SyntheticTopUp(train, spec.num_classes, cfg.synthetic, cfg.seed, on_sphere)
