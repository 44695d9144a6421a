"""What a model reads, and how an image becomes it: declared once, without torch.

What a model reads is a set of these keys (a system declares it, :mod:`lvmlt.systems`; a
finished run records it in ``model.json``):

* :data:`IMAGE` (``image``): the image for the CNN, ``3 x S x S`` float32, resized and
  normalised with the ImageNet mean and std (:func:`cnn_input`);
* :data:`SAM_VEC` (``sam_vec``): the frozen encoder's output pooled to one vector;
* :data:`SAM_MAP` (``sam_map``): the same output reduced to one channel by the PCA basis;
* ``level/<name>`` (:data:`LEVEL`): an earlier encoder stage, pooled.

Training reads the SAM keys from a feature store; prediction computes them from an image
with the same functions the extraction stores them with (:func:`sam_input`,
:func:`reduce_outputs`) and the same fitted normalisation (:class:`FeatureNorm`). This
module imports only NumPy and Pillow, so an exported bundle classifies images without
torch (:mod:`lvmlt.deploy.bundle`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

from lvmlt.errors import UserError

IMAGE, SAM_VEC, SAM_MAP = "image", "sam_vec", "sam_map"
LEVEL = "level/"  # batch key prefix of a pooled stage: "level/stage3"
INPUT_KEYS = (IMAGE, SAM_VEC, SAM_MAP)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# SAM's pixel statistics (ImageNet mean/std on the 0..255 scale), used by SAM and MobileSAM.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def sam_keys(needs) -> list[str]:
    """The stored-feature keys among ``needs`` (everything but the image), sorted."""
    return sorted(k for k in needs if k != IMAGE)


def level_key(level: str) -> str:
    """The batch key of a stored level: ``vec`` -> ``sam_vec``, ``stage3`` -> ``level/stage3``."""
    return SAM_VEC if level == "vec" else LEVEL + level


def level_name(key: str) -> str:
    """``level/stage3`` -> ``stage3``."""
    return key[len(LEVEL) :]


# ---------------------------------------------------------------------------------------
# Decoding: any file PIL reads -> 8-bit RGB, faithfully
# ---------------------------------------------------------------------------------------
#: The file extensions taken for images when a folder is listed (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def open_image(path) -> Image.Image:
    """Decode ``path`` fully, with its EXIF orientation applied; the mode is kept
    (16-bit and float images are scaled by :func:`to_rgb`, not clipped here)."""
    with Image.open(path) as im:
        im.load()  # PIL decodes lazily: a truncated file fails here
        out = ImageOps.exif_transpose(im)
        return out if out is not im else im.copy()


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, scaling deep images onto 0..255 instead of clipping them.

    * 16-bit (``I;16*``): the full 16-bit range, ``v / 257``;
    * 32-bit integer (``I``): values within 0..255 as they are, within 0..65535 as 16-bit,
      anything else its own min..max;
    * float (``F``): values within 0..1 times 255, anything else its own min..max;
    * palette, RGBA (alpha dropped), CMYK, LA, 1-bit: Pillow's conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        a = np.asarray(image, dtype=np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if image.mode.startswith("I;16") or (image.mode == "I" and lo >= 0 and 255 < hi <= 65535):
            a = a / 257.0
        elif image.mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255.0
        elif not (image.mode == "I" and lo >= 0 and hi <= 255):
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        image = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    return image.convert("RGB")


# ---------------------------------------------------------------------------------------
# The CNN's input and the encoder's input
# ---------------------------------------------------------------------------------------
def cnn_input(image: Image.Image, size: int) -> np.ndarray:
    """The evaluation input of the CNN: RGB, resized to ``size x size`` (bilinear, aspect not
    kept), scaled to 0..1 and normalised with the ImageNet mean and std; 3 x S x S float32."""
    rgb = to_rgb(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    x = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(h', w') after resizing the longest side to ``size`` (SAM's rounding)."""
    scale = size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def sam_input(image: Image.Image, size: int, norm: str = "sam") -> np.ndarray:
    """The encoder's input: RGB, longest side to ``size`` (bilinear), normalised, zero-padded
    at the bottom and right to ``size x size``; 3 x S x S float32.

    Args:
        norm: ``sam`` = (x - SAM mean) / SAM std on the 0..255 scale; ``minmax`` = per-image
            (x - min) / (max - min) to 0..1 (LiteMedSAM / MedSAM).
    """
    rgb = to_rgb(image)
    w, h = rgb.size
    nh, nw = resized_shape(h, w, size)
    if (nh, nw) != (h, w):
        rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
    x = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)
    if norm == "sam":
        x = (x - np.asarray(SAM_PIXEL_MEAN, np.float32)[:, None, None]) / np.asarray(SAM_PIXEL_STD, np.float32)[
            :, None, None
        ]
    elif norm == "minmax":
        lo, hi = x.min(), x.max()
        x = (x - lo) / max(hi - lo, np.float32(1e-8))
    else:
        raise ValueError(f"unknown normalisation {norm!r}")
    out = np.zeros((3, size, size), np.float32)
    out[:, :nh, :nw] = x
    return out


def valid_fraction(image_hw: tuple[int, int], size: int) -> tuple[float, float]:
    """Share of the padded square (rows, cols) that the resized image covers."""
    nh, nw = resized_shape(*image_hw, size)
    return nh / size, nw / size


def valid_cells(side: int, frac: tuple[float, float], crop: bool) -> tuple[int, int]:
    """Grid cells (rows, cols) that cover the image rather than SAM's bottom-right padding."""
    if not crop:
        return side, side
    return max(1, math.ceil(frac[0] * side - 1e-6)), max(1, math.ceil(frac[1] * side - 1e-6))


# ---------------------------------------------------------------------------------------
# Encoder output -> stored form (NumPy twin of the extraction's torch reducer)
# ---------------------------------------------------------------------------------------
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """n_out x n_in weights of adaptive average pooling (torch's ``area`` interpolation)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        a, b = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, a:b] = 1.0 / (b - a)
    return m


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """n_out x n_in weights of linear interpolation with ``align_corners=False``."""
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for i in range(n_out):
        x = max((i + 0.5) * scale - 0.5, 0.0)
        lo = min(int(x), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        t = x - lo
        m[i, lo] += 1 - t
        m[i, hi] += t
    return m


def resize_map(m: np.ndarray, size: int) -> np.ndarray:
    """1 x h x w -> 1 x size x size: area-average when shrinking, bilinear when growing."""
    h, w = m.shape[-2:]
    if (h, w) == (size, size):
        return m
    weights = _area_matrix if min(h, w) >= size else _bilinear_matrix
    return (weights(h, size) @ m[0].astype(np.float64) @ weights(w, size).T)[None].astype(np.float32)


def reduce_outputs(
    outputs: Mapping[str, np.ndarray],
    image_hw: tuple[int, int],
    *,
    img_size: int,
    crop_padding: bool,
    map_size: int,
    pca_mean: np.ndarray | None,
    pca_component: np.ndarray | None,
    levels: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """One image's encoder outputs (``out``: C x h x w, and each level) -> what a store keeps:
    ``sam_vec`` (C,), ``sam_map`` (1 x map_size x map_size) and ``level/<name>`` (C_l,).

    With ``pca_mean`` None the map is the image's own first principal component (per-image
    PCA), otherwise the projection on the global basis.
    """
    frac = valid_fraction(image_hw, img_size)

    def cells(f: np.ndarray) -> np.ndarray:
        gh, gw = valid_cells(f.shape[-1], frac, crop_padding)
        return np.asarray(f[:, :gh, :gw], dtype=np.float32)

    f = cells(outputs["out"])
    out = {SAM_VEC: f.mean(axis=(1, 2))}
    if pca_mean is not None:
        m = np.tensordot(pca_component.astype(np.float32), f - pca_mean.astype(np.float32)[:, None, None], axes=1)[None]
    else:
        m = per_image_pca_map(f)
    out[SAM_MAP] = resize_map(m.astype(np.float32), map_size)
    for name in levels:
        out[LEVEL + name] = cells(outputs[name]).mean(axis=(1, 2))
    return out


def per_image_pca_map(f: np.ndarray) -> np.ndarray:
    """C x h x w -> 1 x h x w along the image's own first principal direction (sign fixed:
    its largest-magnitude loading positive)."""
    x = f.reshape(f.shape[0], -1).T.astype(np.float64)
    if x.shape[0] < 2:
        return np.zeros((1, *f.shape[1:]), np.float32)
    x = x - x.mean(axis=0)
    _, vecs = np.linalg.eigh(x.T @ x)
    w = vecs[:, -1]
    if w[np.argmax(np.abs(w))] < 0:
        w = -w
    return (x @ w).reshape(1, *f.shape[1:]).astype(np.float32)


# ---------------------------------------------------------------------------------------
# The fixed normalisation of stored vectors
# ---------------------------------------------------------------------------------------
NORMS = ("cl2n", "l2", "standardize", "raw")
SPHERE_NORMS = ("cl2n", "l2")  # the norms whose outputs are unit vectors
#: What a probe on the SAM vector puts in front of its FC (``fusion.sam_norm``): a
#: parameter-free BatchNorm inside the model, or one of the fitted maps above.
SAM_NORMS = ("batchnorm", *NORMS)


class FeatureNorm:
    """A fixed map of feature vectors, fitted on the training split.

    ``cl2n``: subtract the training mean, then L2-normalise (pooled SAM vectors share a large
    common component, so plain L2 leaves every image in a narrow cap of the sphere);
    ``l2``: L2-normalise; ``standardize``: per-dimension z-score; ``raw``: unchanged.
    """

    def __init__(self, kind: str = "cl2n", mean: np.ndarray | None = None, std: np.ndarray | None = None):
        if kind not in NORMS:
            raise UserError(f"unknown feature normalisation {kind!r}", fix=f"choose one of: {', '.join(NORMS)}")
        self.kind = kind
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)

    @property
    def on_sphere(self) -> bool:
        """True when the outputs are unit vectors."""
        return self.kind in SPHERE_NORMS

    def fit(self, x: np.ndarray) -> FeatureNorm:
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(axis=0)
        self.std = x.std(axis=0) + 1e-6
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.kind in ("cl2n", "standardize") and self.mean is None:
            raise RuntimeError("FeatureNorm.fit() must be called before use")
        if self.kind == "cl2n":
            x = x - self.mean
        elif self.kind == "standardize":
            x = (x - self.mean) / self.std
        if self.on_sphere:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x.astype(np.float32)


def norm_key(key: str, part: str) -> str:
    """The ``model.npz`` name of a fitted normalisation's array (``norm.level__stage3.mean``)."""
    return f"norm.{key.replace('/', '__')}.{part}"


def feature_norms(spec: dict, arrays: dict) -> dict[str, FeatureNorm]:
    """The fitted :class:`FeatureNorm` of every normalised input of a description."""
    out = {}
    for key, kind in (spec.get("features") or {}).get("norms", {}).items():
        mean, std = arrays.get(norm_key(key, "mean")), arrays.get(norm_key(key, "std"))
        out[key] = FeatureNorm(kind, mean, std)
    return out
