"""Losses for long-tailed classification, one registry keyed by ``loss.name``.

Every loss is a small :class:`torch.nn.Module` built from the loss config, the number of
training images per class and the run length:

    loss_fn = build_loss(cfg.loss, class_counts, epochs=cfg.optim.epochs)
    for epoch in range(epochs):
        loss_fn.set_epoch(epoch)          # only DRW uses it; a no-op for the others
        loss = loss_fn(logits, targets)   # logits B x C, targets B (long, -1 = skip)

Class counts live in buffers, so ``loss_fn.to(device)`` moves them with the model.
Adding a loss means registering a builder (``@LOSSES.register("name")``, see
:mod:`lvmlt.losses.baseline`), not adding an ``elif`` to the trainer.

The training objective is a sum of *terms* (:mod:`lvmlt.losses.terms`): the baseline loss
above and the dual supervision of other heads' logits (:mod:`~lvmlt.losses.supervision`),
the optional prototype (:mod:`~lvmlt.losses.proto`), ProCo
(:mod:`~lvmlt.losses.proco`), IFL (:mod:`~lvmlt.losses.ifl`) and SciLT's per-level heads
(:mod:`~lvmlt.losses.scilt`) terms, each registered in
``TERMS`` by its own module with the config section it reads.
"""

from __future__ import annotations

# Importing the term modules registers their terms in TERMS.
from lvmlt.losses import ifl, proco, proto, scilt, supervision  # noqa: F401,I001  (after the names above)
from lvmlt.losses.baseline import (
    IGNORE_INDEX,
    LOSSES,
    ClassBalancedLoss,
    ClassCountLoss,
    CrossEntropyLoss,
    FocalLoss,
    LDAMDRWLoss,
    LogitAdjustedLoss,
    build_loss,
    check_class_counts,
    effective_number_weights,
    ldam_margins,
    log_prior,
)
from lvmlt.losses.supervision import AuxHeadsTerm, BaselineTerm
from lvmlt.losses.terms import TERMS, Term, TermParts, build_terms

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "TERMS",
    "AuxHeadsTerm",
    "BaselineTerm",
    "ClassBalancedLoss",
    "ClassCountLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LDAMDRWLoss",
    "LogitAdjustedLoss",
    "Term",
    "TermParts",
    "build_loss",
    "build_terms",
    "check_class_counts",
    "effective_number_weights",
    "ldam_margins",
    "log_prior",
]
