"""Losses for long-tailed classification, one registry keyed by ``loss.name``.

Every loss is a small :class:`torch.nn.Module` built from the loss config, the number of
training images per class and the run length:

    loss_fn = build_loss(cfg.loss, class_counts, epochs=cfg.optim.epochs)
    for epoch in range(epochs):
        loss_fn.set_epoch(epoch)          # only DRW uses it; a no-op for the others
        loss = loss_fn(logits, targets)   # logits B x C, targets B (long, -1 = skip)

Class counts live in buffers, so ``loss_fn.to(device)`` moves them with the model.
Adding a loss means registering a builder here (``@LOSSES.register("name")``), not adding
an ``elif`` to the trainer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import nn

from lvmlt.config import LossConfig
from lvmlt.registry import Registry

LossBuilder = Callable[[LossConfig, np.ndarray, int], nn.Module]

#: name -> ``builder(cfg: LossConfig, class_counts: np.ndarray, epochs: int) -> nn.Module``
LOSSES: Registry[LossBuilder] = Registry("loss")


def build_loss(cfg: LossConfig, class_counts: np.ndarray, epochs: int) -> nn.Module:
    """Build the loss named by ``cfg.name``.

    Args:
        cfg: the ``loss`` section of the run config.
        class_counts: training images per class, shape (C,), non-negative integers.
            Classes with zero images are allowed (see each loss for how they are handled).
        epochs: total training epochs; DRW uses it to resolve ``drw_epoch=-1``.

    Returns:
        A module with ``forward(logits: B x C, targets: B) -> scalar`` and
        ``set_epoch(epoch: int)``.

    Raises:
        UserError: unknown loss name or an invalid loss setting.
        ValueError: class counts that are not a 1-D array of finite non-negative numbers.
    """
    builder = LOSSES.get(cfg.name)
    return builder(cfg, check_class_counts(class_counts), int(epochs))


# Imported last: the built-in losses register themselves into LOSSES defined above.
from lvmlt.losses.baseline import (  # noqa: E402
    IGNORE_INDEX,
    ClassBalancedLoss,
    ClassCountLoss,
    CrossEntropyLoss,
    FocalLoss,
    LDAMDRWLoss,
    LogitAdjustedLoss,
    check_class_counts,
    effective_number_weights,
    ldam_margins,
    log_prior,
)

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "ClassBalancedLoss",
    "ClassCountLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LDAMDRWLoss",
    "LogitAdjustedLoss",
    "build_loss",
    "check_class_counts",
    "effective_number_weights",
    "ldam_margins",
    "log_prior",
]
