"""LoRA for the frozen encoder, and SciLT's fusion head trained end to end on images (PEFT).

The fusion head itself is a model of the trainer on stored levels
(:mod:`lvmlt.models.scilt`, ``system=scilt``); this module adds what a fine-tuned
encoder needs: :func:`apply_lora` puts LoRA (rank 8 on the attention ``qkv`` and ``proj``
of every TinyViT / ViT block) into a frozen encoder and :class:`EncoderSciLT` runs the
whole model end to end. On this CPU, fine-tuning MobileSAM is out of reach, so the
reported experiments use stored features (frozen encoder) only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lvmlt.config import SciLTConfig
from lvmlt.errors import UserError
from lvmlt.models.scilt import SciLTHead, build_scilt_head


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
    model: nn.Module, rank: int = 8, alpha: float = 16.0, targets: Sequence[str] = SciLTConfig.lora_targets
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


class EncoderSciLT(nn.Module):
    """End to end: a (LoRA-adapted) frozen encoder, pooled levels, and a :class:`SciLTHead`.

    Args:
        encoder: a :class:`~lvmlt.encoders.FrozenEncoder` (``forward_levels``).
        levels: stage names or "vec" (the pooled neck output), penultimate first.
        head: the fusion head over those levels' widths.

    ``forward(images B x 3 x S x S)`` returns the head's output dict. The levels are
    average-pooled over the whole grid (images are assumed square, so there is no padding).
    """

    def __init__(self, encoder: nn.Module, levels: Sequence[str], head: SciLTHead):
        super().__init__()
        self.encoder, self.levels, self.head = encoder, list(levels), head
        self._stages = [lv for lv in self.levels if lv != "vec"]
        encoder.check_levels(self._stages)

    def pooled(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps = self.encoder.forward_levels(images, self._stages)
        return [maps["out" if lv == "vec" else lv].float().mean(dim=(2, 3)) for lv in self.levels]

    def forward(self, images: torch.Tensor) -> dict:
        return self.head(*self.pooled(images))


def build_encoder_scilt(
    cfg: SciLTConfig, encoder: nn.Module, num_classes: int, lora: bool = True
) -> tuple[EncoderSciLT, int]:
    """Encoder + LoRA (``cfg.lora_*``) + fusion head; returns the model and its LoRA parameter count."""
    encoder.check_levels([lv for lv in cfg.levels if lv != "vec"])
    n_lora = apply_lora(encoder, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets) if lora else 0
    dims = [encoder.out_channels if lv == "vec" else encoder.level_channels[lv] for lv in cfg.levels]
    model = EncoderSciLT(encoder, cfg.levels, build_scilt_head(cfg, dims, num_classes))
    return model, n_lora
