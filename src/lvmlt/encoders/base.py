"""The frozen-encoder interface shared by every SAM-family image encoder.

A :class:`FrozenEncoder` owns three things: the preprocessing its weights expect (resize,
normalise, pad), the forward pass ``B x 3 x S x S -> B x 256 x h x w`` and the provenance
of its weights (sha256). It is always in eval mode with gradients off: we only ever read
features out of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from lvmlt import inputs
from lvmlt.errors import UserError
from lvmlt.registry import Registry
from lvmlt.rundir import file_sha256  # noqa: F401  (the encoders' name for it: lvmlt.encoders re-exports it)

ENCODERS: Registry = Registry("encoder")
GEOMETRY: dict[str, tuple[int, int]] = {}  # name -> (native input side, output stride)


AUTO_FP32: set[str] = set()  # encoders whose features lose accuracy in bf16: ``auto`` keeps fp32


def register_encoder(name: str, native_size: int, stride: int, bf16_ok: bool = True):
    """Register an encoder builder ``f(img_size=None, checkpoint=None) -> FrozenEncoder``.

    ``native_size`` and ``stride`` let callers resolve "native size" / "native grid"
    settings without building (and loading) the encoder. ``bf16_ok=False`` makes
    ``precision=auto`` float32 for it even where bfloat16 is native (its bf16 features
    fall below a cosine of 0.999 to float32).
    """
    GEOMETRY[name] = (native_size, stride)
    if not bf16_ok:
        AUTO_FP32.add(name)
    return ENCODERS.register(name)


def auto_precision(name: str, device) -> str:
    """What ``precision=auto`` means for encoder ``name`` on ``device``."""
    from lvmlt.hardware import resolve_precision

    return "fp32" if name in AUTO_FP32 else resolve_precision("auto", device)


def resolve_geometry(name: str, img_size: int = 0) -> tuple[int, int]:
    """(input side, output grid side) of an encoder at ``img_size`` (0 = native)."""
    ENCODERS.get(name)  # unknown names fail with the list of known ones
    native, stride = GEOMETRY[name]
    size = img_size or native
    return size, size // stride


SAM_PIXEL_MEAN, SAM_PIXEL_STD = inputs.SAM_PIXEL_MEAN, inputs.SAM_PIXEL_STD


@dataclass(frozen=True)
class Preprocessing:
    """How an encoder turns a PIL image into its square input tensor.

    Args:
        img_size: S, the side of the square input.
        norm: "sam" = (x - SAM mean) / SAM std on the 0..255 scale;
            "minmax" = per-image (x - min) / (max - min) to 0..1 (LiteMedSAM / MedSAM).

    The longest side is resized to S with bilinear filtering (SAM's ``ResizeLongestSide``
    rounding), the image is normalised, then zero-padded at the bottom and right to S x S.
    Grayscale and 16-bit images become 3-channel 8-bit RGB first.
    """

    img_size: int
    norm: str = "sam"

    def describe(self) -> str:
        if self.norm == "sam":
            how = f"(x - {list(SAM_PIXEL_MEAN)}) / {list(SAM_PIXEL_STD)}"
        else:
            how = "(x - min) / (max - min) per image"
        return f"RGB uint8, longest side -> {self.img_size} (PIL bilinear), {how}, zero-pad bottom-right"

    def resized_shape(self, h: int, w: int) -> tuple[int, int]:
        """(h', w') after resizing the longest side to img_size (SAM's rounding)."""
        return inputs.resized_shape(h, w, self.img_size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> float32 tensor 3 x S x S (:func:`lvmlt.inputs.sam_input`)."""
        if self.norm not in ("sam", "minmax"):  # pragma: no cover - encoders choose from the two
            raise ValueError(f"unknown normalisation {self.norm!r}")
        return torch.from_numpy(inputs.sam_input(image, self.img_size, self.norm))


to_rgb = inputs.to_rgb  # any PIL image -> 8-bit RGB (deep images scaled, not clipped)


def load_state_dict(path: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, read without unpickling arbitrary objects.

    Args:
        path: a ``.pt``/``.pth`` file (read with ``weights_only=True``) or ``.safetensors``.
        prefix: keep only keys starting with it, with the prefix removed
            (``"image_encoder."`` picks the encoder out of a full SAM checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} not found", fix="pass the path of an existing file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle with code objects, or not a checkpoint at all
            raise UserError(
                f"checkpoint {str(path)!r} cannot be read as plain tensors ({type(e).__name__})",
                fix="pass an official checkpoint; pickled objects are refused for safety",
            ) from None
    for key in ("model", "state_dict"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {str(path)!r} does not hold a state dict")
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def fuse_conv_bn(module: nn.Module) -> int:
    """Fold every ``Conv2d -> BatchNorm2d`` pair held in a 2-module Sequential into one conv.

    Frozen BatchNorm is an affine map, so folding it into the preceding convolution gives
    the same function with one pass over memory fewer (BN was ~10 % of the CPU time).
    Returns the number of pairs folded.
    """
    n = 0
    for name, child in list(module.named_children()):
        kids = list(child.children()) if isinstance(child, nn.Sequential) else []
        if len(kids) == 2 and isinstance(kids[0], nn.Conv2d) and isinstance(kids[1], nn.BatchNorm2d):
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(kids[0].eval(), kids[1].eval())
            setattr(module, name, fused)
            n += 1
        else:
            n += fuse_conv_bn(child)
    return n


class FrozenEncoder(nn.Module):
    """A frozen image encoder: PIL images in, a B x C x h x w feature map out.

    Subclasses set ``name``, ``img_size``, ``out_channels``, ``stride`` (input pixels per
    output cell, 16 for all SAM-family encoders at their native size), ``preprocessing``,
    ``weights_sha256`` and ``level_channels``, and implement :meth:`forward_levels`.

    The module never trains: ``train(True)`` is ignored and no parameter needs a gradient.
    """

    name: str = ""
    img_size: int = 1024
    out_channels: int = 256
    stride: int = 16
    weights_sha256: str | None = None  # None = random initialisation (tests only)
    level_channels: dict[str, int] = {}

    def __init__(self, preprocessing: Preprocessing):
        super().__init__()
        self.preprocessing = preprocessing

    def freeze(self) -> FrozenEncoder:
        self.requires_grad_(False)
        super().train(False)
        return self

    def train(self, mode: bool = True) -> FrozenEncoder:
        return super().train(False)  # frozen: BN statistics and cached biases stay as loaded

    @property
    def grid(self) -> int:
        """Side of the output map, e.g. 64 for MobileSAM at 1024."""
        return self.img_size // self.stride

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> float32 B x 3 x S x S (SAM resize, normalise, pad)."""
        return torch.stack([self.preprocessing(im) for im in images])

    def valid_fraction(self, image_hw: tuple[int, int]) -> tuple[float, float]:
        """Share of the padded input (height, width) that the image itself covers."""
        return inputs.valid_fraction(image_hw, self.img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x 3 x S x S (preprocessed) -> B x out_channels x grid x grid."""
        return self.forward_levels(x, levels=())["out"]

    def forward_levels(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The output map and, for each requested level, an earlier stage's output.

        Args:
            x: B x 3 x S x S.
            levels: names from ``level_channels``; None = all of them.

        Returns:
            ``{"out": B x C x h x w, level: B x C_l x h_l x w_l, ...}``.
        """
        raise NotImplementedError

    def check_levels(self, levels: Sequence[str]) -> None:
        unknown = [lv for lv in levels if lv not in self.level_channels]
        if unknown:
            raise UserError(
                f"encoder {self.name!r} has no level(s) {unknown}",
                fix=f"choose from: {', '.join(self.level_channels)}",
            )

    def describe(self) -> dict:
        """Provenance of this encoder, written into every feature-store manifest."""
        return {
            "name": self.name,
            "img_size": self.img_size,
            "out_channels": self.out_channels,
            "grid": self.grid,
            "weights_sha256": self.weights_sha256,
            "preprocessing": self.preprocessing.describe(),
        }

    def prepare(
        self, device: str | torch.device = "cpu", precision: str = "bf16", channels_last: bool = True
    ):
        """Ready the module for fast inference: fold BN, cast, pick the memory layout.

        Casting the weights once (instead of autocast, which re-casts frozen weights on
        every call) and channels-last convolutions are the two biggest CPU levers.
        """
        state = (str(torch.device(device)), precision, channels_last)
        if getattr(self, "_prepared", None) == state:
            return self  # idempotent: a compiled graph stays valid across extract() calls
        fuse_conv_bn(self)
        dtype = precision_dtype(precision)
        self.to(device=device, dtype=dtype)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.freeze()  # re-derives cached attention biases from the (cast) parameters
        self._prepared = state
        return self


def precision_dtype(precision: str) -> torch.dtype:
    try:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    except KeyError:
        raise UserError(f"unknown precision {precision!r}", fix="choose fp32, bf16 or fp16") from None


def side_from_tokens(n_tokens: int) -> int:
    """Grid side of a square token sequence (the upstream TinyViT assumes 64 x 64)."""
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ValueError(f"{n_tokens} tokens do not form a square grid")
    return side
