"""Loss terms: the registered pieces a training step's objective is made of.

The trainer asks every registered term builder for its piece; a builder returns ``None``
when its method is off in the config. A step's loss is the weighted sum of the named
values the pieces return, so adding a method means registering a builder in the term's
own module (``@TERMS.register("name")``), never an ``elif`` in the training loop.

A builder is ``builder(cfg: Config, class_counts: np.ndarray, model) -> Term | None``;
it reads the config sections it needs and ``model.embedding_dim``. The term modules of
this package register themselves when :mod:`lvmlt.losses` is imported.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lvmlt.registry import Registry


class Term(nn.Module):
    """One piece of the objective.

    ``forward(out, batch) -> dict[name, scalar]``; each value is multiplied by ``weight``.
    ``out`` is the model's output dict, ``batch`` the batch dict (``label`` has -1 for
    skipped images). State (memory banks, class statistics) lives in the term's buffers,
    so it is saved in checkpoints with the model.

    Args:
        weight: the factor of every value the term returns (its config's loss weight).
    """

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch (deferred re-weighting uses it)."""

    @torch.no_grad()
    def after_step(self, out: dict, batch: dict) -> None:
        """Called after each optimiser step with detached outputs (memory banks use it)."""


TermBuilder = Callable[..., "Term | None"]

#: name -> ``builder(cfg, class_counts, model) -> Term | None``
TERMS: Registry[TermBuilder] = Registry("loss term")


def build_terms(cfg, class_counts, model) -> nn.ModuleDict:
    """Every term the config switches on, keyed by its registered name (in name order)."""
    terms = nn.ModuleDict()
    for name in TERMS.names():
        t = TERMS.get(name)(cfg, class_counts, model)
        if t is not None:
            terms[name] = t
    return terms
