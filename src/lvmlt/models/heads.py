"""Classifier heads shared by every model: the cosine classifier, LWS's per-class scale, and a parameter count."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: How a cosine head's weight starts: ``normal`` (std 0.01, LDAM's head) or ``unit``
#: (unit-norm rows: the gradient of a normalised weight scales with 1 / ||w||, so a small
#: initial norm makes the first steps of a head trained with a low temperature far too large).
COSINE_INITS = ("normal", "unit")


class CosineClassifier(nn.Module):
    """``logits = cos(x, w_k) / temperature``, B x D -> B x C.

    The one cosine head: LDAM's normalised classifier (``model.cosine_head``, temperature 1,
    the loss applies its own scale) and SciLT's heads (temperature 0.07, ``init="unit"``).
    """

    def __init__(self, in_dim: int, num_classes: int, temperature: float = 1.0, init: str = "normal"):
        super().__init__()
        if init not in COSINE_INITS:
            raise ValueError(f"unknown cosine head init {init!r}; choose one of {COSINE_INITS}")
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        self.temperature, self.init = float(temperature), init
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            if self.init == "unit":
                self.weight.copy_(F.normalize(torch.randn(self.weight.shape), dim=1))
            else:
                nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
        return logits if self.temperature == 1.0 else logits / self.temperature


class ClassScale(nn.Module):
    """LWS (Kang et al. 2020): one learned scale per class on a frozen classifier's logits.

    The one LWS: trained by the trainer as a second stage (``stage.lws``) or fitted post hoc
    on stored features (:func:`lvmlt.calibration.posthoc.fit_lws`). Starts at 1 (the frozen
    classifier unchanged).
    """

    def __init__(self, num_classes: int, device=None, dtype=None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_classes, device=device, dtype=dtype))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.scale


def count_trainable(module: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (shared tensors counted once)."""
    seen, n = set(), 0
    for p in module.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n
