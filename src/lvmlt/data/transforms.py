"""Image transforms: any PIL image -> normalised float tensor 3 x S x S.

Grayscale (and palette, RGBA, 16-bit) images become 3-channel RGB first, so one backbone
serves MNIST, ELPV and ImageNet-style data alike. Images are resized to S x S (aspect
ratio not kept: the built-ins are square and the LT benchmarks use fixed-size crops).
Training augmentation is CIFAR-style: pad by S/8 (reflect), random S x S crop, and a
horizontal flip (unless the dataset says its classes are not mirror-symmetric); evaluation is the resize only. Normalisation uses the ImageNet mean/std
that pretrained backbones expect.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from torchvision import transforms as T

from lvmlt.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ToRGB:
    """PIL image of any mode -> RGB (a class, not a lambda, so DataLoader workers can pickle it)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.mode == "RGB":
            return img
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # 16-bit / float images: scale to 8 bits before "L", which would otherwise clip.
            a = np.asarray(img, dtype=np.float64)
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
            img = Image.fromarray(a.round().astype(np.uint8))
        return img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def build_transform(image_size: int, train: bool, augment: bool = True, hflip: bool = True) -> T.Compose:
    """The transform a split applies to each loaded PIL image.

    Args:
        image_size: S, the output side in pixels.
        train: the training split (augmentation applies only there).
        augment: pad + random crop (+ flip) when ``train`` is set.
        hflip: include the horizontal flip in the augmentation; off for data whose classes
            are not mirror-symmetric (digits).

    Returns:
        A callable mapping a PIL image to a float32 tensor 3 x S x S, normalised with the
        ImageNet mean and std.
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise UserError(f"image size {image_size!r} is too small", fix="set data.image_size to 8 or more")
    ops = [ToRGB(), T.Resize((image_size, image_size), antialias=True)]
    if train and augment:
        ops.append(T.RandomCrop(image_size, padding=image_size // 8, padding_mode="reflect"))
        if hflip:
            ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(ops)
