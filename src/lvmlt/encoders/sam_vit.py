"""The original SAM ViT image encoders (ViT-B/L/H, the paper's model) from ``segment-anything``.

Their weights cannot be downloaded on every machine: the user passes the checkpoint path.
Its sha256 is compared with the official file's and always recorded with the features.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from lvmlt.encoders.base import FrozenEncoder, Preprocessing, file_sha256, load_state_dict, register_encoder
from lvmlt.errors import UserError

# (embed_dim, depth, num_heads, global-attention block indexes) of the official models.
SAM_VIT_ARCH = {
    "sam_vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "sam_vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "sam_vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "tiny_test_vit": (32, 2, 2, (1,)),  # random, for tests: the same code path at 64 px
}


class SamViTEncoder(FrozenEncoder):
    """SAM's ``ImageEncoderViT``: 16 x 16 patches, windowed + global attention, 256-d neck.

    Levels: ``block{i}`` for each global-attention block, its B x D x h x w output.
    """

    def __init__(self, name: str, vit: nn.Module, global_blocks: Sequence[int], weights_sha256: str | None):
        super().__init__(Preprocessing(vit.img_size, "sam"))
        self.name = name
        self.img_size = vit.img_size
        self.vit = vit
        self.out_channels = vit.neck[0].out_channels
        self.stride = vit.patch_embed.proj.stride[0]
        dim = vit.patch_embed.proj.out_channels
        self.level_channels = {f"block{i}": dim for i in global_blocks}
        self.weights_sha256 = weights_sha256
        self.freeze()

    def forward_levels(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        levels = list(self.level_channels) if levels is None else list(levels)
        self.check_levels(levels)
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"{self.name} expects B x 3 x {self.img_size} x {self.img_size}, got {tuple(x.shape)}"
            )
        x = x.to(self.dtype)
        out: dict[str, torch.Tensor] = {}
        x = self.vit.patch_embed(x)  # B x h x w x D (channels last by construction)
        if self.vit.pos_embed is not None:
            x = x + self.vit.pos_embed
        for i, blk in enumerate(self.vit.blocks):
            x = blk(x)
            if f"block{i}" in levels:
                out[f"block{i}"] = x.permute(0, 3, 1, 2)
        out["out"] = self.vit.neck(x.permute(0, 3, 1, 2))
        return out


def _build_sam_vit(name: str, img_size: int | None, checkpoint: str | None) -> SamViTEncoder:
    try:
        from segment_anything.modeling import ImageEncoderViT
    except ImportError:
        raise UserError(
            "the SAM ViT encoders need segment-anything", fix="pip install segment-anything==1.0"
        ) from None
    dim, depth, heads, global_blocks = SAM_VIT_ARCH[name]
    tiny = name == "tiny_test_vit"
    native = 64 if tiny else 1024
    if img_size not in (None, native):
        raise UserError(
            f"{name} runs at {native} px only (its position embeddings are fixed)",
            fix=f"set img_size={native}",
        )
    vit = ImageEncoderViT(
        img_size=native,
        patch_size=16,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4.0,
        out_chans=256,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=2 if tiny else 14,
        global_attn_indexes=global_blocks,
    )
    sha = None
    if tiny:
        if checkpoint is not None:
            raise UserError("the tiny_test_vit encoder is random and takes no checkpoint")
    else:
        from lvmlt.encoders.weights import resolve_weights

        path = resolve_weights(name, checkpoint)
        missing, unexpected = vit.load_state_dict(
            load_state_dict(path, prefix="image_encoder."), strict=False
        )
        if missing or unexpected:
            raise UserError(
                f"checkpoint {str(path)!r} does not fit {name} ({len(missing)} missing, {len(unexpected)} unexpected keys)",
                fix=f"pass a {name} checkpoint",
            )
        sha = file_sha256(path)
    return SamViTEncoder(name, vit, global_blocks, sha)


for _name in SAM_VIT_ARCH:
    register_encoder(_name, 64 if _name == "tiny_test_vit" else 1024, 16)(partial(_build_sam_vit, _name))
