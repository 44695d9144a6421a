"""Fusion blocks for frozen SAM features (section III.A of the SAM-features paper).

* :class:`MapFusion` (eq. 1-2): the stored one-channel PCA map of the SAM encoder output
  is resized to a backbone stage's grid, normalised per image, lifted to the stage's
  channels by a 1x1 convolution and fused as ``F_conv * F_res + F_res``.
* :class:`LatentFusion` (eq. 3, fig. 3): the CNN vector and the pooled SAM vector are
  concatenated, passed through self-attention and an FC layer to give ``z_SAM``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def normalise_map(m: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardise each map to zero mean and unit variance over its pixels.

    Args:
        m: B x 1 x H x W.
    """
    mean = m.mean(dim=(2, 3), keepdim=True)
    std = m.std(dim=(2, 3), keepdim=True, unbiased=False)
    return (m - mean) / (std + eps)


class MapFusion(nn.Module):
    """``F_fused = Conv1x1(norm(resize(F_PCA))) * F_res + F_res``.

    The 1x1 convolution starts at zero, so at initialisation the fused map equals the
    backbone's own map and training starts from the plain baseline; this is our choice,
    the paper does not state an initialisation.

    Args:
        channels: C_i, the channels of the stage being modulated.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, kernel_size=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, f_res: torch.Tensor, sam_map: torch.Tensor) -> torch.Tensor:
        """f_res: B x C_i x H_i x W_i; sam_map: B x 1 x h x w (any h, w) -> B x C_i x H_i x W_i."""
        m = F.interpolate(sam_map.to(f_res.dtype), size=f_res.shape[-2:], mode="bilinear", align_corners=False)
        f_conv = self.conv(normalise_map(m))
        return f_conv * f_res + f_res


class LatentFusion(nn.Module):
    """``z_SAM = FC(SelfAttention([v_CNN, v_SAM]))``.

    The two vectors differ in size (e.g. 2048 and 256), so each is projected to a token of
    width ``dim`` and the two tokens attend to each other (multi-head self-attention with
    a residual connection and layer norm). The two output tokens, flattened, are the fused
    embedding (2 * dim) that the prototype loss acts on; dropout and an FC layer give
    ``z_SAM``. The paper specifies neither the token layout nor the width: both are ours.

    Args:
        cnn_dim: size of v_CNN. sam_dim: size of v_SAM (256 for SAM encoders).
        num_classes: C. dim: token width. heads: attention heads. dropout: before the FC.
    """

    def __init__(self, cnn_dim: int, sam_dim: int, num_classes: int, dim: int = 256, heads: int = 4, dropout: float = 0.5):
        super().__init__()
        self.proj_cnn = nn.Linear(cnn_dim, dim)
        self.proj_sam = nn.Linear(sam_dim, dim)
        self.sam_norm = nn.LayerNorm(sam_dim)  # SAM features are unnormalised; keep their scale tame
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * dim, num_classes)
        self.out_dim = 2 * dim

    @property
    def classifier(self) -> nn.Module:
        """The layer that maps the fused embedding to z_SAM (a decoupled stage retrains it)."""
        return self.fc

    def representation(self) -> list[nn.Module]:
        """The layers that make the fused embedding (frozen by a decoupled stage)."""
        return [self.proj_cnn, self.proj_sam, self.sam_norm, self.attn, self.norm]

    def embed(self, v_cnn: torch.Tensor, v_sam: torch.Tensor) -> torch.Tensor:
        """v_cnn: B x cnn_dim, v_sam: B x sam_dim -> fused embedding B x 2*dim."""
        tokens = torch.stack([self.proj_cnn(v_cnn), self.proj_sam(self.sam_norm(v_sam.to(v_cnn.dtype)))], dim=1)
        attended, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return self.norm(tokens + attended).flatten(1)

    def forward(self, v_cnn: torch.Tensor, v_sam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (z_SAM: B x C, fused embedding: B x 2*dim)."""
        e = self.embed(v_cnn, v_sam)
        return self.fc(self.drop(e)), e
