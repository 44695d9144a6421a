"""Supervision by the baseline loss as training terms: the ``baseline`` term on the logits
(always on), and dual supervision of other heads' logits (:class:`AuxHeadsTerm`), used by
the fused model's two branches (``fusion_branches``) and by SciLT's per-level heads
(:mod:`lvmlt.losses.scilt`). Each is registered in ``TERMS`` with the config section it reads.
"""

from __future__ import annotations

from torch import nn

from lvmlt import outputs as o
from lvmlt.config.sections import LossConfig
from lvmlt.losses.baseline import build_loss
from lvmlt.losses.terms import Term, register


class BaselineTerm(Term):
    """The baseline classification loss (``cfg.loss``) on the logits, as a training term."""

    def __init__(self, loss: nn.Module, weight: float = 1.0):
        super().__init__(weight)
        self.loss = loss

    def on_epoch_start(self, epoch: int) -> None:
        if hasattr(self.loss, "set_epoch"):
            self.loss.set_epoch(epoch)

    def forward(self, out: dict, batch: dict) -> dict:
        return {"baseline": self.loss(out[o.LOGITS].float(), batch["label"])}


@register("baseline", "loss")
def build_baseline_term(loss: LossConfig, parts) -> Term:
    """The baseline term, always on: the ``loss`` section over ``parts.epochs``."""
    return BaselineTerm(build_loss(loss, parts.counts, parts.epochs))


class AuxHeadsTerm(BaselineTerm):
    """Dual supervision: the baseline loss on other heads' logits, summed, times ``weight``.

    Args:
        name: the value's name (logged as ``train/<name>``).
        keys: entries of the model's output, each a B x C logits tensor or a list of them.
    """

    def __init__(self, loss: nn.Module, weight: float, name: str, keys: tuple[str, ...]):
        super().__init__(loss, weight)
        self.name, self.keys = name, tuple(keys)

    def forward(self, out: dict, batch: dict) -> dict:
        zs = [z for k in self.keys for z in (out[k] if isinstance(out[k], (list, tuple)) else [out[k]])]
        return {self.name: sum(self.loss(z.float(), batch["label"]) for z in zs)}


@register("fusion_branches", "fusion")
def build_branch_term(fusion, parts) -> Term | None:
    """On when the model returns the two branch logits and ``fusion.aux_weight`` > 0: the run's
    loss on z_CNN and on z_SAM."""
    if not set(o.BRANCHES) <= parts.outputs or fusion.aux_weight <= 0:
        return None
    return AuxHeadsTerm(build_loss(parts.loss, parts.counts, parts.epochs), fusion.aux_weight, "fusion_branches", o.BRANCHES)
