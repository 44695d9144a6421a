"""Loss terms: the registered pieces a training step is made of.

The trainer asks every registered term builder for its piece; a builder returns ``None``
when its method is off in the config. A step's loss is the weighted sum of the named
terms the pieces return, so adding a method means registering a builder here, never an
``elif`` in the training loop.
"""

from __future__ import annotations

import torch
from torch import nn

from lvmlt.registry import Registry

TERMS: Registry = Registry("loss term")


class Term(nn.Module):
    """One piece of the objective.

    ``forward(out, batch) -> dict[name, scalar]``; each value is multiplied by ``weight``.
    ``out`` is the model's output dict, ``batch`` the batch dict (``label`` has -1 for
    skipped images). State (memory banks, class statistics) lives in the term's buffers,
    so it is saved in checkpoints with the model.
    """

    weight: float = 1.0

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch (deferred re-weighting uses it)."""

    @torch.no_grad()
    def after_step(self, out: dict, batch: dict) -> None:
        """Called after each optimiser step with detached outputs (memory banks use it)."""


class BaselineTerm(Term):
    """The baseline classification loss (``cfg.loss``) on the logits."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def on_epoch_start(self, epoch: int) -> None:
        if hasattr(self.loss, "set_epoch"):
            self.loss.set_epoch(epoch)

    def forward(self, out: dict, batch: dict) -> dict:
        return {"baseline": self.loss(out["logits"].float(), batch["label"])}


@TERMS.register("baseline")
def build_baseline(cfg, class_counts, model) -> Term:
    from lvmlt.losses import build_loss

    return BaselineTerm(build_loss(cfg.loss, class_counts, cfg.optim.epochs))


@TERMS.register("proto")
def build_proto(cfg, class_counts, model) -> Term | None:
    if not cfg.proto.enabled:
        return None
    from lvmlt.losses.proto import PrototypeLoss

    p = cfg.proto
    emb_dim = _embedding_dim(model)
    term = PrototypeLoss(
        class_counts,
        emb_dim,
        bank_size=p.bank_size,
        use_head=p.head,
        use_tail_std=p.tail_std,
        use_tail_dist=p.tail_dist,
        tau_head=p.tau_head,
        tau_tail_std=p.tau_tail_std,
        tau_tail_dist=p.tau_tail_dist,
        weights=p.weights,
        eps=p.eps,
    )
    term.weight = p.beta
    return term


class ProCoTerm(Term):
    """ProCo's contrastive term on a projection of the model's embedding.

    The projection MLP (embedding -> hidden -> BN -> ReLU -> p, then L2-normalised) is
    trained with the model. Unlike the authors' three augmented views, we use the one
    view the data pipeline gives for both branches; the classifier's LA-CE comes from
    the baseline term (``loss.name=logit_adjusted``).
    """

    def __init__(self, emb_dim: int, class_counts, c):
        super().__init__()
        from lvmlt.losses.proco import ProCoLoss

        self.proj = nn.Sequential(
            nn.Linear(emb_dim, c.hidden), nn.BatchNorm1d(c.hidden), nn.ReLU(), nn.Linear(c.hidden, c.feat_dim)
        )
        self.loss = ProCoLoss(
            len(class_counts), c.feat_dim, list(map(float, class_counts)), temperature=c.temperature,
            la_tau=c.la_tau, proco_weight=1.0, bessel=c.bessel,
        )
        self.weight = c.weight

    def on_epoch_start(self, epoch: int) -> None:
        self.loss.new_epoch()

    def forward(self, out: dict, batch: dict) -> dict:
        z = torch.nn.functional.normalize(self.proj(out["embedding"].float()), dim=1)
        targets = torch.where(batch["label"] >= 0, batch["label"], torch.full_like(batch["label"], -100))
        return {"proco": self.loss(z, out["logits"], targets)["proco"]}


@TERMS.register("proco")
def build_proco(cfg, class_counts, model) -> Term | None:
    if not cfg.proco.enabled:
        return None
    return ProCoTerm(_embedding_dim(model), class_counts, cfg.proco)


def _embedding_dim(model) -> int:
    if model.latent_fusion is not None:
        return model.latent_fusion.out_dim
    if model.backbone is None:
        return model.head.in_features
    return model.backbone.out_dim


def build_terms(cfg, class_counts, model) -> nn.ModuleDict:
    terms = nn.ModuleDict()
    for name in TERMS.names():
        t = TERMS.get(name)(cfg, class_counts, model)
        if t is not None:
            terms[name] = t
    return terms
import lvmlt.methods  # noqa: E402,F401  (registers the "ifl" term; at the end: it imports this module)
