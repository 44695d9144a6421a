"""IFL: invariant feature learning for generalised long tails (Tang et al., ECCV 2022).

A loss term (``ifl.enabled=true``) that works under any baseline loss (``loss.name``):

1. **Warm-up** (epochs before ``ifl.warmup_epochs``): the baseline alone.
2. **Environments from the model's own predictions** (docs/methods-other.md, "IFL as a loss
   term", where the authors' code and our deviations are set side by side). During the epoch
   before each rebuild the term records, for every training image it sees,
   ``s_i = softmax(f(x_i))[y_i]`` (training-mode forward, raw logits). At the rebuild, per
   class: ``v = |1 - (s - min s) / (max s - min s + 1e-9)| + 1e-5`` (low confidence -> large),
   ``r = mean of the largest int(0.2 n) of v / mean of the smallest int(0.8 n) + 1e-5``
   (n scored images in the class; for n = 7 the sixth value is in neither mean, as in the
   authors' code),
   ``gamma = clip(log(env_scale) / log r, 1, 10)``, ``w = v^gamma + 1e-12`` normalised to sum
   1 inside the class (classes with fewer than ``min_class_scores`` scored images: uniform).
   Environment 1 is the original long-tailed distribution; environment 2 draws a class
   uniformly, then an image with probability w: class-balanced, and hard (presumably
   rare-attribute) images first. Rebuilds happen at ``warmup_epochs`` and ``step_epoch``.
3. **Invariant features across them**: one set of class centres must fit both
   environments: ``L_IFL = 1/2 (E_env1 + E_env2) ||h - c_y||^2`` on the model's embedding,
   added with weight ``alpha_e`` (``ifl.weights``: 0.001 from ``warmup_epochs``, 0.005 from
   ``step_epoch``). The centres take their own SGD step (``ifl.center_lr`` = 0.5,
   independent of alpha_e, as in the authors' code) after every optimiser step.
   ``ifl.irm_weight`` > 0 adds an IRMv1 penalty per environment (off in the authors' IFL).
   With ``ifl.env2_cls`` the baseline loss is also applied to environment 2, as the authors
   train the classifier on both halves of each batch.

**Environments by importance weights.** The authors draw half of every batch from each
environment with two samplers. The trainer here has one sampler (``data.sampler``), so the
term reweights the batch it gets instead: sample i, drawn with probability q_i by the
training sampler, gets the self-normalised weight p_e(i) / q_i for environment e. The
expectations are the authors'; the variance is higher for rare classes of environment 2.
Two more deviations, both [ours]: images seen in earlier epochs but not during the scoring
epoch get their class's mean weight (the authors give them 0; images never seen at all,
possible only with a non-instance sampler, still get 0), and centres start at the class
means of the scoring epoch's embeddings (``ifl.center_init=class_mean``; ``random`` = the
authors' N(0, 1)).
Logged values are already multiplied by their weights (alpha_e, irm_weight), since one term
carries all three pieces.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lvmlt import outputs as o
from lvmlt.config.sections import IFLConfig
from lvmlt.data.samplers import build_sampler
from lvmlt.errors import UserError
from lvmlt.losses.baseline import build_loss
from lvmlt.losses.terms import Term, register

CENTER_INITS = ("class_mean", "random")


def resolve_schedule(c: IFLConfig, epochs: int) -> tuple[int, int]:
    """(warm-up end, second-weight epoch) with -1 resolved to 60 % / 80 % of ``epochs``."""
    warm = c.warmup_epochs if c.warmup_epochs >= 0 else int(round(0.6 * epochs))
    step = c.step_epoch if c.step_epoch >= 0 else int(round(0.8 * epochs))
    if warm < 1:
        raise UserError(
            f"ifl.warmup_epochs resolves to {warm}: environments need one scored epoch first",
            fix="set ifl.warmup_epochs >= 1 (or more optim.epochs)",
        )
    if step < warm:
        raise UserError(
            f"ifl.step_epoch={step} is before ifl.warmup_epochs={warm}", fix="set step_epoch >= warmup_epochs"
        )
    return warm, step


def environment_weights(
    scores: np.ndarray, labels: np.ndarray, num_classes: int, env_scale: float = 4.0, min_scores: int = 5
) -> np.ndarray:
    """Environment-2 weights of the training images from their true-class confidences.

    Args:
        scores: (N,) softmax probability of the true class; NaN = not scored.
        labels: (N,) classes.
        num_classes: K.
        env_scale: target ratio of the top-20 % to the bottom-80 % weights in a class.
        min_scores: classes with fewer scored images get uniform weights.

    Returns:
        (N,) weights, non-negative, summing to 1 inside every class with images (so the
        environment is class-balanced); low-confidence images weigh more. Unscored images
        get their class's mean scored weight before the normalisation.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    w = np.zeros(len(labels), dtype=np.float64)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            continue
        s = scores[members]
        seen = np.isfinite(s)
        if seen.sum() < min_scores:
            w[members] = 1.0 / len(members)
            continue
        ss = s[seen]
        sn = (ss - ss.min()) / (ss.max() - ss.min() + 1e-9)
        v = np.abs(1 - sn) + 1e-5
        vs = np.sort(v)
        # The authors' split (GLT benchmark, train_center_dual.py): the largest int(0.2 n)
        # values over the smallest int(0.8 n), so for n = 7 the sixth is in neither. The
        # floor of one value on each side matters only below ifl.min_class_scores = 5 [ours].
        n_tail, n_head = max(int(len(vs) * 0.2), 1), max(int(len(vs) * 0.8), 1)
        r = vs[-n_tail:].mean() / vs[:n_head].mean() + 1e-5
        gamma = float(np.clip(math.log(env_scale) / math.log(r), 1.0, 10.0)) if r > 1 else 10.0
        wc = np.empty(len(members))
        wc[seen] = v**gamma + 1e-12
        wc[~seen] = wc[seen].mean()
        w[members] = wc / wc.sum()
    return w


class IFLTerm(Term):
    """The IFL term (module docstring). State is in buffers, so checkpoints carry it.

    Args:
        class_counts: training images per class, shape (K,).
        emb_dim: width of ``out["embedding"]``.
        cfg: the ``ifl`` section.
        epochs: ``optim.epochs`` (resolves the -1 defaults of the schedule).
        sampler_class_probs: (K,) probability that the training sampler draws each class;
            an image of class c is drawn with probability p_c / n_c.
        baseline: the baseline loss module (``per_sample``) for environment 2, or None.
        seed: seeds the random centre initialisation.
    """

    def __init__(
        self,
        class_counts,
        emb_dim: int,
        cfg: IFLConfig,
        epochs: int,
        sampler_class_probs,
        baseline=None,
        seed: int = 0,
    ):
        super().__init__(weight=1.0)  # alpha_e is applied inside forward (one term, three weighted pieces)
        if cfg.center_init not in CENTER_INITS:
            raise UserError(f"unknown ifl.center_init {cfg.center_init!r}", fix="choose class_mean or random")
        if len(cfg.weights) != 2:
            raise UserError(
                f"ifl.weights={list(cfg.weights)} needs two values", fix="e.g. ifl.weights=[0.001,0.005]"
            )
        counts = np.asarray(class_counts, dtype=np.int64)
        self.cfg = cfg
        self.num_classes = len(counts)
        self.n = int(counts.sum())
        self.warmup, self.step_epoch = resolve_schedule(cfg, epochs)
        self.baseline = baseline
        self.epoch = 0
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("centers", torch.randn(self.num_classes, emb_dim, generator=gen))
        # Probability that the training sampler draws one given image of each class.
        q = np.asarray(sampler_class_probs, dtype=np.float64) / np.maximum(counts, 1)
        self.register_buffer("q_class", torch.tensor(q, dtype=torch.float32))
        self.register_buffer("env2", torch.full((self.n,), 1.0 / self.n))  # probability per image
        self.register_buffer("labels_seen", torch.full((self.n,), -1, dtype=torch.long))
        self.register_buffer("scores", torch.full((self.n,), float("nan")))
        self.register_buffer("feat_sum", torch.zeros(self.num_classes, emb_dim, dtype=torch.float64))
        self.register_buffer("feat_count", torch.zeros(self.num_classes, dtype=torch.float64))

    # -- schedule -------------------------------------------------------------------
    def alpha(self, epoch: int) -> float:
        if epoch < self.warmup:
            return 0.0
        return float(self.cfg.weights[0] if epoch < self.step_epoch else self.cfg.weights[1])

    def _rebuild_at(self, epoch: int) -> bool:
        return epoch in (self.warmup, self.step_epoch)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        if self.baseline is not None and hasattr(self.baseline, "set_epoch"):
            self.baseline.set_epoch(epoch)
        if self._rebuild_at(epoch) and bool(torch.isfinite(self.scores).any()):
            self.rebuild()
            if epoch == self.warmup and self.cfg.center_init == "class_mean":
                has = self.feat_count > 0
                means = self.feat_sum[has] / self.feat_count[has, None]
                self.centers[has] = means.to(self.centers.dtype)
        if self._rebuild_at(epoch + 1):  # the coming epoch is the scoring epoch
            self.scores.fill_(float("nan"))
            self.feat_sum.zero_()
            self.feat_count.zero_()

    def rebuild(self) -> None:
        """New environment-2 probabilities from the scores of the last scoring epoch."""
        labels = self.labels_seen.cpu().numpy()
        # Images never seen have no known label; they keep probability 0 in env 2.
        w = environment_weights(
            self.scores.cpu().numpy(), labels, self.num_classes, self.cfg.env_scale, self.cfg.min_class_scores
        )
        present = len(np.unique(labels[labels >= 0]))
        self.env2.copy_(torch.from_numpy(w / max(present, 1)).to(self.env2))

    # -- the loss -------------------------------------------------------------------
    def _env_weights(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-normalised batch weights of env 1 and env 2, and the valid mask."""
        y = batch["label"]
        valid = y >= 0
        yc = torch.where(valid, y, torch.zeros_like(y))
        q = self.q_class[yc].clamp_min(1e-12)
        idx = batch["index"].to(self.env2.device).long()
        r1 = torch.where(valid, (1.0 / self.n) / q, torch.zeros_like(q))
        r2 = torch.where(valid, self.env2[idx] / q, torch.zeros_like(q))
        return r1 / r1.sum().clamp_min(1e-12), r2 / r2.sum().clamp_min(1e-12), valid

    def forward(self, out: dict, batch: dict) -> dict:
        alpha = self.alpha(self.epoch)
        if alpha == 0.0:
            return {}
        a1, a2, valid = self._env_weights(batch)
        h = out[o.EMBEDDING].float()
        y = torch.where(valid, batch["label"], torch.zeros_like(batch["label"]))
        d = ((h - self.centers[y].float()) ** 2).sum(dim=1).clamp(1e-12, 1e12)
        # One set of centres fits both environments: the invariance IFL asks for.
        center = 0.5 * ((a1 * d).sum() + (a2 * d).sum())
        terms = {"ifl_center": alpha * center}
        logits = out[o.LOGITS].float()
        if self.cfg.env2_cls and self.baseline is not None:
            per = self.baseline.per_sample(logits, y)
            terms["ifl_env2_cls"] = (a2 * per).sum()
        if self.cfg.irm_weight > 0:
            terms["ifl_irm"] = self.cfg.irm_weight * (irm_penalty(logits, y, a1) + irm_penalty(logits, y, a2))
        return terms

    @torch.no_grad()
    def after_step(self, out: dict, batch: dict) -> None:
        y = batch["label"]
        valid = y >= 0
        idx = batch["index"].to(self.scores.device).long()[valid]
        yv = y[valid]
        self.labels_seen[idx] = yv
        h = out[o.EMBEDDING].float()
        if self._rebuild_at(self.epoch + 1):
            p = out[o.LOGITS].float().softmax(dim=1)[valid]
            self.scores[idx] = p.gather(1, yv[:, None])[:, 0].to(self.scores.dtype)
            self.feat_sum.index_add_(0, yv, h[valid].double())
            self.feat_count.index_add_(0, yv, torch.ones_like(yv, dtype=torch.float64))
        if self.alpha(self.epoch) > 0:
            # The centres' own SGD step on L_IFL with the 1/alpha rescale of the authors' code:
            # c_k <- c_k - lr * sum_{i: y_i = k} w_i * 2 (c_k - h_i), w = (env1 + env2) / 2.
            a1, a2, _ = self._env_weights(batch)
            w = (0.5 * (a1 + a2))[valid]
            grad = torch.zeros_like(self.centers)
            diff = self.centers[yv] - h[valid].to(self.centers.dtype)
            grad.index_add_(0, yv, 2 * w[:, None].to(diff.dtype) * diff)
            self.centers -= self.cfg.center_lr * grad


def irm_penalty(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """IRMv1: ||d/ds sum_i w_i CE(s * f_i, y_i) at s = 1||^2 for a per-class dummy scale s.

    The gradient is closed-form, ``g_k = sum_i w_i (p_ik - [y_i = k]) f_ik``, and stays
    differentiable with respect to the logits.
    """
    p = logits.softmax(dim=1)
    onehot = F.one_hot(targets, logits.shape[1]).to(p.dtype)
    g = ((p - onehot) * logits * weights[:, None]).sum(dim=0)
    return (g**2).sum()


@register("ifl", "ifl")
def build_ifl(ifl: IFLConfig, parts) -> Term | None:
    """The IFL term when ``ifl.enabled``; the sampler's class probabilities weight its environments."""
    if not ifl.enabled:
        return None
    counts = np.asarray(parts.counts, dtype=np.int64)
    labels = np.repeat(np.arange(len(counts)), counts)
    probs = np.zeros(len(counts))
    probs[: len(np.bincount(labels))] = build_sampler(parts.sampler, labels, seed=parts.seed).class_probabilities()
    baseline = build_loss(parts.loss, counts, parts.epochs) if ifl.env2_cls else None
    if baseline is not None and not hasattr(baseline, "per_sample"):
        raise UserError(
            f"loss {parts.loss.name!r} has no per-sample form for IFL's environment 2",
            fix="set ifl.env2_cls=false",
        )
    return IFLTerm(counts, parts.embedding_dim, ifl, parts.epochs, probs, baseline, seed=parts.seed)
