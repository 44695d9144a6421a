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
