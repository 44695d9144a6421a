"""SciLT's dual supervision as a loss term: the per-level heads' losses, weighted by beta.

With the baseline term on the fused head's logits the objective is SciLT's
``L = L_lt(h_fuse) + beta sum_l L_lt(h_l)`` (:mod:`lvmlt.models.scilt`); ``L_lt`` is the
run's ``loss.*`` (built once more here, on the same class counts), beta =
``scilt.aux_weight``. [ours]: SciLT's abstract names "dual supervision" only.
"""

from __future__ import annotations

from lvmlt.losses.baseline import AuxHeadsTerm, build_loss
from lvmlt.losses.terms import TERMS, Term


@TERMS.register("scilt_levels")
def build_level_heads_term(cfg, class_counts, model) -> Term | None:
    """On with ``scilt.enabled`` and ``scilt.aux_weight`` > 0: ``sum_l L(h_l)`` over ``out["level_logits"]``."""
    if not cfg.scilt.enabled or cfg.scilt.aux_weight <= 0:
        return None
    loss = build_loss(cfg.loss, class_counts, cfg.optim.epochs)
    return AuxHeadsTerm(loss, cfg.scilt.aux_weight, "scilt_levels", ("level_logits",))
