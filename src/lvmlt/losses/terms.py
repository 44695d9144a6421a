"""Loss terms: the registered pieces a training step's objective is made of.

The trainer asks every registered term builder for its piece; a builder returns ``None``
when its method is off in the config. A step's loss is the weighted sum of the named
values the pieces return, so adding a method means registering a builder in the term's
own module (``@register("name", section)``), never an ``elif`` in the training loop.

A builder is ``builder(section, parts: TermParts) -> Term | None``: it receives its own
config section and the parts derived before it (class counts, the model's embedding width
and declared output keys, the baseline loss settings), never the whole config. The term
modules of this package register themselves when :mod:`lvmlt.losses` is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
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


@dataclass(frozen=True)
class TermParts:
    """What a term is built from besides its own config section: derived once by the trainer.

    Attributes:
        counts: training images per class trained on (real + synthetic with a top-up), (C,).
        embedding_dim: width D of the model's ``embedding`` output.
        outputs: the keys the model returns (:mod:`lvmlt.outputs`), as its system declares.
        loss: the run's ``loss`` section (terms that apply the baseline loss to other logits).
        epochs: ``optim.epochs``. sampler: ``data.sampler``. seed: the run's seed.
    """

    counts: np.ndarray
    embedding_dim: int
    outputs: frozenset[str]
    loss: object
    epochs: int
    sampler: str = "instance"
    seed: int = 0

    @classmethod
    def of(cls, cfg, counts, embedding_dim: int, outputs) -> TermParts:
        """The parts of ``cfg``'s run (its loss, epochs, sampler and seed) with the model's."""
        return cls(np.asarray(counts), int(embedding_dim), frozenset(outputs), cfg.loss, cfg.optim.epochs,
                   cfg.data.sampler, cfg.seed)


@dataclass(frozen=True)
class TermEntry:
    """A registered term: the config section it reads and ``build(section, parts) -> Term | None``."""

    section: str | None
    build: Callable[..., Term | None]


#: name -> :class:`TermEntry`
TERMS: Registry[TermEntry] = Registry("loss term")


def register(name: str, section: str | None):
    """Decorator: register ``build(section_config, parts: TermParts) -> Term | None`` as term ``name``."""

    def deco(build):
        TERMS.register(name)(TermEntry(section, build))
        return build

    return deco


def build_terms(cfg, parts: TermParts) -> nn.ModuleDict:
    """Every term the config switches on, keyed by its registered name (in name order); each
    builder gets its own section of ``cfg`` and the ``parts``."""
    terms = nn.ModuleDict()
    for name in TERMS.names():
        entry = TERMS.get(name)
        t = entry.build(getattr(cfg, entry.section) if entry.section else None, parts)
        if t is not None:
            terms[name] = t
    return terms
