"""ProCo: probabilistic contrastive learning for long-tailed recognition (Du et al., TPAMI 2024).

Each class j keeps an online von Mises-Fisher estimate vMF(μ_j, κ_j) of its normalised
projected features z ∈ S^{p-1}. Instead of sampling contrastive pairs, the loss uses the
closed-form expectation over infinitely many class-j samples,

    ℓ_ij = log E_{z'~vMF(μ_j, κ_j)} exp(z_i·z'/τ) = log C_p(κ_j) - log C_p(κ̃_ij),
    κ̃_ij = ||κ_j μ_j + z_i/τ||,  log C_p(κ) = ν log κ - (p/2) log 2π - log I_ν(κ),  ν = p/2 - 1,

and treats ℓ_i as logits of a logit-adjusted cross-entropy. The full objective is
``LA-CE(classifier logits) + α · LA-CE(ℓ)``; inference uses the classifier logits only.

Numerics: log I_ν is evaluated with the uniform (Debye) asymptotic expansion in float64,
which stays accurate for large ν and large κ where SciPy's ``ive`` underflows and the
authors' Miller recurrence drifts (docs/implementation-notes.md, "ProCo"). ``bessel="miller"`` keeps
the authors' recurrence for comparison. Choices of ours are marked ``[ours]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvmlt import outputs as o
from lvmlt.losses.terms import Term, register

KAPPA_MAX = 1e5  # the authors' clamp on the concentration

# Debye polynomials u_k(t) of the uniform expansion of I_ν(νz) (DLMF 10.41.10), as
# (coefficient, power of t) pairs over a common denominator.
_DEBYE = (
    ((3, 1), (-5, 3), 24),
    ((81, 2), (-462, 4), (385, 6), 1152),
    ((30375, 3), (-369603, 5), (765765, 7), (-425425, 9), 414720),
    ((4465125, 4), (-94121676, 6), (349922430, 8), (-446185740, 10), (185910725, 12), 39813120),
)


def _debye_series(nu: float, t: Tensor) -> Tensor:
    """1 + Σ_k u_k(t) / ν^k, the correction factor of the uniform expansion."""
    total = torch.ones_like(t)
    for k, (*terms, denom) in enumerate(_DEBYE, start=1):
        u = sum(c * t**e for c, e in terms) / denom
        total = total + u / nu**k
    return total


def log_bessel_iv(nu: float, x: Tensor) -> Tensor:
    """log I_ν(x) by the uniform asymptotic expansion, differentiable, any shape.

    Four Debye terms, error O(ν^-5) uniformly in x > 0: checked against SciPy, max
    absolute error 1e-9 for ν ≥ 31 (p ≥ 64), 1e-6 for ν = 7, 1e-4 for ν = 3 (p = 8).
    Compute in float64.
    """
    z = x / nu
    s = torch.sqrt(1 + z * z)
    eta = s + torch.log(z / (1 + s))
    return (
        -0.5 * math.log(2 * math.pi * nu)
        + nu * eta
        - 0.5 * torch.log(s)
        + torch.log(_debye_series(nu, 1 / s))
    )


def log_vmf_normalizer(kappa: Tensor, dim: int) -> Tensor:
    """log C_p(κ) = ν log κ - (p/2) log 2π - log I_ν(κ) of the vMF density on S^{p-1}.

    Written so that ν log κ and log I_ν(κ) cancel analytically: finite at κ = 0 and for
    κ up to 1e5+ in float64. Its derivative is -A_p(κ) = -I_{p/2}(κ)/I_{p/2-1}(κ) ∈ (-1, 0].

    Args:
        kappa: concentrations ≥ 0, any shape (float64 recommended).
        dim: p, the feature dimension (≥ 8 for the expansion to be accurate).
    """
    nu = dim / 2 - 1
    z = kappa / nu
    s = torch.sqrt(1 + z * z)
    return (
        nu * math.log(nu)
        + nu * torch.log1p(s)
        - nu * s
        + 0.5 * math.log(2 * math.pi * nu)
        + 0.5 * torch.log(s)
        - torch.log(_debye_series(nu, 1 / s))
        - 0.5 * dim * math.log(2 * math.pi)
    )


# --------------------------------------------------------------------------- Miller (compat)


def log_ive_miller(nu: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """The authors' backward (Miller) recurrence: log ive(ν, x), log ive(ν+1, x).

    Started at orders (2ν, 2ν+1) = (1, 0) and normalised with i0e; drifts for x ≳ 28ν.
    Kept only to compare with the authors' numbers; integer ν ≥ 1 (even p) only.
    """
    if int(nu) != nu or nu < 1:
        raise ValueError(f"Miller recurrence needs an integer order ≥ 1, got {nu} (use an even dim)")
    nu = int(nu)
    x = x.clamp_min(1e-6)
    cur, nxt = torch.ones_like(x), torch.zeros_like(x)
    log_scale = torch.zeros_like(x)
    log_i_nu = log_i_nu1 = None
    for i in range(2 * nu, 0, -1):  # invariant: cur = Ĩ_i, nxt = Ĩ_{i+1} (times exp(log_scale))
        if i == nu + 1:
            log_i_nu1 = torch.log(cur) + log_scale
        if i == nu:
            log_i_nu = torch.log(cur) + log_scale
        prev = (2 * i / x) * cur + nxt
        factor = torch.where(prev > 1e150, prev, torch.ones_like(prev))  # rescale before overflow
        cur, nxt = prev / factor, cur / factor
        log_scale = log_scale + torch.log(factor)
    log_i0 = torch.log(cur) + log_scale
    log_i0e = torch.log(torch.special.i0e(x))
    return log_i_nu - log_i0 + log_i0e, log_i_nu1 - log_i0 + log_i0e


class _NegLogVmfNormalizerMiller(torch.autograd.Function):
    """-log C_p(x) by Miller; backward A_p(x) clipped to ≤ 1 as in the authors' code."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        nu = dim // 2 - 1
        log_ive_nu, log_ive_nu1 = log_ive_miller(nu, x)
        ctx.save_for_backward(log_ive_nu, log_ive_nu1)
        return -nu * torch.log(x) + 0.5 * dim * math.log(2 * math.pi) + log_ive_nu + x

    @staticmethod
    def backward(ctx, grad: Tensor):
        log_ive_nu, log_ive_nu1 = ctx.saved_tensors
        return grad * torch.exp(log_ive_nu1 - log_ive_nu).clamp(max=1.0), None


def log_vmf_normalizer_miller(kappa: Tensor, dim: int) -> Tensor:
    return -_NegLogVmfNormalizerMiller.apply(kappa, dim)


# --------------------------------------------------------------------------- distributed


def all_reduce_if_distributed(sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Sum per-class feature sums and counts over processes; a no-op without DDP."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    return sums, counts


# --------------------------------------------------------------------------- the loss


class ProCoLoss(nn.Module):
    """ProCo objective with its own per-class vMF statistics.

    State (buffers, so ``.to(device)`` and ``state_dict`` carry it; checkpoint it with the
    model): two estimators of per-class mean unit features and counts. ``current`` is
    reset at every epoch start after being copied into ``old``; both see every update;
    only ``old`` (previous epoch + current epoch so far) is used by the loss.

    Args:
        num_classes: C.
        feat_dim: p, dimension of the projected features (≥ 8).
        class_counts: training images per class, shape (C,); sets the LA prior π.
        temperature: τ of the contrastive similarity (0.1 for p = 128, 0.07 for p = 1024).
        la_tau: logit-adjustment strength for both cross-entropies (authors: 1).
        proco_weight: α, weight of the contrastive term (authors: 1).
        kappa_max: clamp on κ (authors: 1e5).
        bessel: ``"debye"`` (default, accurate) or ``"miller"`` (the authors' recurrence).
        update_in_forward: update the statistics in ``forward`` while ``self.training``
            (like BatchNorm's running stats), before the loss, as the authors do. Turn
            off to call :meth:`update` yourself.
        sync_fn: ``fn(sums (C,p), counts (C,)) -> (sums, counts)`` applied to each batch's
            sufficient statistics before the update; default all-reduce under DDP.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        class_counts: Tensor | list[int],
        *,
        temperature: float = 0.1,
        la_tau: float = 1.0,
        proco_weight: float = 1.0,
        kappa_max: float = KAPPA_MAX,
        bessel: str = "debye",
        update_in_forward: bool = True,
        sync_fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ):
        super().__init__()
        if feat_dim < 8:
            raise ValueError(f"ProCo needs feat_dim ≥ 8 for its Bessel expansion, got {feat_dim}")
        if bessel not in ("debye", "miller"):
            raise ValueError(f"bessel must be 'debye' or 'miller', got {bessel!r}")
        if bessel == "miller" and feat_dim % 2:
            raise ValueError("bessel='miller' needs an even feat_dim")
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        if counts.shape != (num_classes,):
            raise ValueError(f"class_counts has shape {tuple(counts.shape)}, expected ({num_classes},)")
        self.num_classes, self.feat_dim = num_classes, feat_dim
        self.temperature, self.la_tau, self.proco_weight = temperature, la_tau, proco_weight
        self.kappa_max, self.bessel = kappa_max, bessel
        self.update_in_forward = update_in_forward
        self.sync_fn = sync_fn or all_reduce_if_distributed

        prior = counts.clamp_min(1e-12) / counts.clamp_min(1e-12).sum()
        self.register_buffer("log_prior", prior.log().float())
        # Authors' init: 0.9 x a random unit direction, count 0 (overwritten by the first batch).
        init = F.normalize(torch.randn(num_classes, feat_dim, dtype=torch.float64), dim=1) * 0.9
        self.register_buffer("mean_cur", init.clone())
        self.register_buffer("count_cur", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("mean_old", init.clone())
        self.register_buffer("count_old", torch.zeros(num_classes, dtype=torch.float64))

    # ---- statistics

    @torch.no_grad()
    def new_epoch(self) -> None:
        """Call at every epoch start: ``old`` <- ``current``, then reset ``current``.

        [ours] The reset zeroes the counts but keeps the mean vectors (the authors
        re-draw random ones); the first batch of a class overwrites them either way, so
        this only differs for a class absent for a whole epoch, which keeps its last
        direction instead of noise.
        """
        self.mean_old.copy_(self.mean_cur)
        self.count_old.copy_(self.count_cur)
        self.count_cur.zero_()

    @torch.no_grad()
    def update(self, features: Tensor, targets: Tensor) -> None:
        """Fold a batch into both estimators (cumulative means of unit features).

        Args:
            features: projected features, shape (B, p) or (V, B, p) for V views;
                normalised here.
            targets: class indices, shape (B,); entries < 0 (e.g. -100) are skipped.
        """
        z, t = self._flatten_views(features, targets)
        keep = t >= 0
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z[keep].to(torch.float64), dim=1)
        t = t[keep]
        sums = torch.zeros_like(self.mean_cur).index_add_(0, t, z)
        counts = torch.bincount(t, minlength=self.num_classes).to(torch.float64)
        sums, counts = self.sync(sums, counts)
        for mean, count in ((self.mean_cur, self.count_cur), (self.mean_old, self.count_old)):
            total = count + counts
            seen = (counts > 0)[:, None]
            new = (mean * count[:, None] + sums) / total.clamp_min(1)[:, None]
            mean.copy_(torch.where(seen, new, mean))
            count.copy_(total)

    def sync(self, sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Hook for distributed training: combine per-class sums (C, p) and counts (C,)."""
        return self.sync_fn(sums, counts)

    @torch.no_grad()
    def vmf_parameters(self) -> tuple[Tensor, Tensor]:
        """Mean directions μ (C, p) and concentrations κ (C,) of the ``old`` estimator.

        κ = p R̄ / (1 - R̄²) (the authors' form), clamped to [0, kappa_max]; R̄ ≥ 1 (only by
        rounding) maps to kappa_max.
        """
        r = self.mean_old.norm(dim=1)
        mu = self.mean_old / r.clamp_min(1e-12)[:, None]
        kappa = self.feat_dim * r / (1 - r * r)
        bad = ~torch.isfinite(kappa) | (kappa < 0)
        kappa = torch.where(bad, torch.full_like(kappa, self.kappa_max), kappa).clamp(max=self.kappa_max)
        return mu, kappa

    # ---- loss

    def _log_normalizer(self, kappa: Tensor) -> Tensor:
        if self.bessel == "miller":
            return log_vmf_normalizer_miller(kappa, self.feat_dim)
        return log_vmf_normalizer(kappa, self.feat_dim)

    def contrastive_logits(self, features: Tensor) -> Tensor:
        """ℓ_ij = log C_p(κ_j) - log C_p(||κ_j μ_j + z_i/τ||), shape (B, C), float64.

        Args:
            features: projected features, shape (B, p); normalised here. Gradient flows
                into them; the class statistics are constants.
        """
        with torch.autocast(device_type=features.device.type, enabled=False):
            mu, kappa = self.vmf_parameters()
            z = F.normalize(features.to(torch.float64), dim=1)
            tau = self.temperature
            # ||κμ + z/τ||² = κ² + 2κ(μ·z)/τ + 1/τ² (||z|| = ||μ|| = 1): a B x C matmul
            # instead of a B x C x p tensor. float64 because κ² reaches 1e10.
            cos = z @ mu.T
            sq = kappa**2 + 2 * kappa * cos / tau + 1 / tau**2
            kappa_tilde = sq.clamp_min(1e-12).sqrt()
            with torch.no_grad():
                log_c = self._log_normalizer(kappa)
            return log_c - self._log_normalizer(kappa_tilde)

    def forward(self, features: Tensor, logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """The named loss terms; the training loss is their sum.

        Args:
            features: projected features of the contrastive view(s), shape (B, p) or
                (V, B, p); the term is averaged over views (authors: V = 2).
            logits: classifier logits (of the classification view), shape (B, C).
            targets: class indices, shape (B,); -100 is ignored.

        Returns:
            ``{"la_ce": LA-CE of the classifier, "proco": α · LA-CE of ℓ}``, float32 scalars.
        """
        if self.training and self.update_in_forward:
            self.update(features, targets)  # [ours] all views first, then the loss
        views = features if features.dim() == 3 else features[None]
        la_ce = F.cross_entropy(logits.float() + self.la_tau * self.log_prior, targets)
        log_prior64 = self.log_prior.to(torch.float64)
        proco = sum(
            F.cross_entropy(self.contrastive_logits(v) + self.la_tau * log_prior64, targets) for v in views
        ) / len(views)
        return {"la_ce": la_ce, "proco": self.proco_weight * proco.float()}

    def _flatten_views(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if features.dim() == 3:
            v, b, _ = features.shape
            return features.reshape(v * b, -1), targets.repeat(v)
        if features.dim() != 2:
            raise ValueError(f"features must be B x p or V x B x p, got shape {tuple(features.shape)}")
        return features, targets

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, temperature={self.temperature}, "
            f"la_tau={self.la_tau}, proco_weight={self.proco_weight}, bessel={self.bessel!r}"
        )


def build_proco(
    num_classes: int, feat_dim: int, class_counts, **kwargs
) -> ProCoLoss:  # thin builder for a LOSSES registry
    """Build :class:`ProCoLoss`; keyword arguments as in its constructor."""
    return ProCoLoss(num_classes, feat_dim, class_counts, **kwargs)


class ProCoTerm(Term):
    """ProCo's contrastive term on a projection of the model's embedding.

    The projection MLP (embedding -> hidden -> BN -> ReLU -> p, then L2-normalised) is
    trained with the model. Unlike the authors' three augmented views, we use the one
    view the data pipeline gives for both branches; the classifier's LA-CE comes from
    the baseline term (``loss.name=logit_adjusted``).

    Args:
        emb_dim: width of ``out["embedding"]``. class_counts: training images per class.
        c: the ``proco`` config section (``hidden``, ``feat_dim``, ``temperature``,
            ``la_tau``, ``bessel``; ``weight`` is the term's factor).
    """

    def __init__(self, emb_dim: int, class_counts, c):
        super().__init__(c.weight)
        self.proj = nn.Sequential(
            nn.Linear(emb_dim, c.hidden), nn.BatchNorm1d(c.hidden), nn.ReLU(), nn.Linear(c.hidden, c.feat_dim)
        )
        self.loss = ProCoLoss(
            len(class_counts), c.feat_dim, list(map(float, class_counts)), temperature=c.temperature,
            la_tau=c.la_tau, proco_weight=1.0, bessel=c.bessel,
        )

    def on_epoch_start(self, epoch: int) -> None:
        self.loss.new_epoch()

    def forward(self, out: dict, batch: dict) -> dict:
        z = F.normalize(self.proj(out[o.EMBEDDING].float()), dim=1)
        targets = torch.where(batch["label"] >= 0, batch["label"], torch.full_like(batch["label"], -100))
        return {"proco": self.loss(z, out[o.LOGITS], targets)["proco"]}


@register("proco", "proco")
def build_proco_term(proco, parts) -> Term | None:
    """The ProCo term when ``proco.enabled``."""
    if not proco.enabled:
        return None
    return ProCoTerm(parts.embedding_dim, parts.counts, proco)
