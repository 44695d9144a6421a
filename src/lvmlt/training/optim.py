"""The optimisers a run can use, one registry keyed by ``optim.name``.

A builder is ``builder(params, o: OptimConfig) -> torch.optim.Optimizer``: ``sgd`` (with
``optim.momentum`` and ``optim.nesterov``, the CNN recipes) and ``adamw`` (the recipes of
the heads on stored features); both take ``optim.lr`` and ``optim.weight_decay``.
"""

from __future__ import annotations

import torch

from lvmlt.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer (optim.name)")


@OPTIMIZERS.register("sgd")
def build_sgd(params, o) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)


@OPTIMIZERS.register("adamw")
def build_adamw(params, o) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def build_optimizer(params, o) -> torch.optim.Optimizer:
    """The optimiser ``o.name`` over ``params`` (``o`` is the ``optim`` section)."""
    return OPTIMIZERS.get(o.name)(params, o)
