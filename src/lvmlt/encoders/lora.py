"""LoRA (Hu et al. 2021) for a frozen encoder: a trainable low-rank update of its attention
projections, the rest frozen (PEFT). Used by SciLT end to end (:func:`lvmlt.models.scilt.build_encoder_scilt`)
and measured against full fine-tuning by ``benchmarks/finetune_step.py``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lvmlt.errors import UserError


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al. 2021).

    ``y = base(x) + (alpha / r) * x A^T B^T`` with A (r x in) Kaiming-initialised and B
    (out x r) zero, so the wrapped layer starts as exactly the base layer.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        if rank < 1:
            raise UserError(f"LoRA rank {rank} must be at least 1", fix="set scilt.lora_rank >= 1")
        self.base = base
        base.requires_grad_(False)
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.rank, self.scale = rank, alpha / rank

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale


def apply_lora(
    model: nn.Module, rank: int = 8, alpha: float = 16.0, targets: Sequence[str] = ("qkv", "proj")
) -> int:
    """Freeze ``model`` and wrap the attention projections named ``targets`` with LoRA.

    An attention block is any submodule with an ``nn.Linear`` called ``qkv`` (TinyViT's and
    SAM ViT's ``Attention``); its linear children named in ``targets`` are wrapped. Call it
    after :meth:`FrozenEncoder.prepare` (which freezes every parameter again).

    Returns:
        The number of trainable parameters, sum of r * (in + out) over wrapped layers.

    Raises:
        UserError: no attention projection was found.
    """
    model.requires_grad_(False)
    blocks = [m for m in model.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)]
    n = 0
    for block in blocks:
        for name in targets:
            layer = getattr(block, name, None)
            if isinstance(layer, nn.Linear):
                setattr(block, name, LoRALinear(layer, rank, alpha))
                n += rank * (layer.in_features + layer.out_features)
    if n == 0:
        raise UserError(
            f"no attention projection named {list(targets)} found for LoRA",
            fix="set scilt.lora_targets to the names of the attention's linear layers (qkv, proj)",
        )
    return n
