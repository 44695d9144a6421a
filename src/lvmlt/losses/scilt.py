"""SciLT's dual supervision as a loss term: the per-level heads' losses, weighted by beta.

With the baseline term on the fused head's logits the objective is SciLT's
``L = L_lt(h_fuse) + beta sum_l L_lt(h_l)`` (:mod:`lvmlt.models.scilt`); ``L_lt`` is the
run's ``loss.*`` (built once more here, on the same class counts), beta =
``scilt.aux_weight``. [ours]: SciLT's abstract names "dual supervision" only.
"""

from __future__ import annotations

from lvmlt import outputs as o
from lvmlt.losses.baseline import build_loss
from lvmlt.losses.supervision import AuxHeadsTerm
from lvmlt.losses.terms import Term, register


@register("scilt_levels", "scilt")
def build_level_heads_term(scilt, parts) -> Term | None:
    """On when the model returns per-level logits and ``scilt.aux_weight`` > 0: ``sum_l L(h_l)``."""
    if o.LEVEL_LOGITS not in parts.outputs or scilt.aux_weight <= 0:
        return None
    loss = build_loss(parts.loss, parts.counts, parts.epochs)
    return AuxHeadsTerm(loss, scilt.aux_weight, "scilt_levels", (o.LEVEL_LOGITS,))
