"""Image transforms: any PIL image -> normalised float tensor 3 x S x S.

Grayscale (and palette, RGBA, 16-bit) images become 3-channel RGB first, so one backbone
serves MNIST, ELPV and ImageNet-style data alike. Images are resized to S x S (aspect
ratio not kept: the built-ins are square and the LT benchmarks use fixed-size crops).
Training augmentation is CIFAR-style: pad by S/8 (reflect), random S x S crop, and a
horizontal flip (unless the dataset says its classes are not mirror-symmetric); evaluation is the resize only. Normalisation uses the ImageNet mean/std
that pretrained backbones expect.

The strong recipe adds, on the training split only, an automatic policy (torchvision's
``TrivialAugmentWide`` or ``RandAugment``) after the crop; its dihedral symmetries
(``data.dihedral``) are drawn per batch by the trainer (:mod:`lvmlt.training.recipe`), so
that an image and its stored SAM map turn together.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from lvmlt.errors import UserError
from lvmlt.inputs import IMAGENET_MEAN, IMAGENET_STD, to_rgb


class ToRGB:
    """PIL image of any mode -> RGB (:func:`lvmlt.inputs.to_rgb`: deep images are scaled, not
    clipped); a class, not a lambda, so DataLoader workers can pickle it."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return to_rgb(img)

    def __repr__(self) -> str:
        return "ToRGB()"


class SplitTransform:
    """``post(pre(img))``: ``pre`` is deterministic (RGB, resize), so a split may keep its
    output per image (:class:`lvmlt.data.base.ImageSplit`); ``post`` is the augmentation, the
    tensor conversion and the normalisation, drawn anew at every call."""

    def __init__(self, pre: T.Compose, post: T.Compose, size: int):
        self.pre, self.post, self.size = pre, post, size

    def __call__(self, img: Image.Image):
        return self.post(self.pre(img))

    @property
    def fixed(self) -> bool:
        """``post`` draws nothing (the evaluation transform): only the tensor conversion and
        the normalisation, which :meth:`from_uint8` applies to many images at once."""
        ops = self.post.transforms
        return bool(ops) and type(ops[0]) is T.ToTensor and all(type(o) is T.Normalize for o in ops[1:])

    @staticmethod
    def to_uint8(img: Image.Image) -> torch.Tensor:
        """``pre``'s output (an RGB PIL image) as a 3 x S x S uint8 tensor."""
        return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()

    def from_uint8(self, u8: torch.Tensor) -> torch.Tensor:
        """``post`` of a :attr:`fixed` transform on uint8 images (3 x S x S, or a batch
        B x 3 x S x S): equal bit for bit to ``post`` of each PIL image (the same float
        conversion as ``ToTensor``, then the same ``Normalize``)."""
        x = u8.to(torch.get_default_dtype()).div(255)
        for op in self.post.transforms[1:]:
            x = op(x)
        return x

    @property
    def transforms(self) -> list:
        """Every step in order, as :class:`torchvision.transforms.Compose` lists them."""
        return [*self.pre.transforms, *self.post.transforms]

    def __repr__(self) -> str:
        return f"SplitTransform(pre={self.pre!r}, post={self.post!r})"


#: ``data.policy``: the automatic augmentation policies (torchvision's implementations).
POLICIES = {
    "none": None,
    "trivialaugment": lambda: T.TrivialAugmentWide(),
    "randaugment": lambda: T.RandAugment(num_ops=2, magnitude=9),
}

def build_transform(
    image_size: int,
    train: bool,
    augment: bool = True,
    hflip: bool = True,
    policy: str = "none",
) -> SplitTransform:
    """The transform a split applies to each loaded PIL image.

    Args:
        image_size: S, the output side in pixels.
        train: the training split (augmentation applies only there).
        augment: pad + random crop (+ flip) when ``train`` is set.
        hflip: include the horizontal flip in the augmentation; off for data whose classes
            are not mirror-symmetric (digits).
        policy: a key of :data:`POLICIES`, applied after the crop.

    Returns:
        A callable mapping a PIL image to a float32 tensor 3 x S x S, normalised with the
        ImageNet mean and std.
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise UserError(f"image size {image_size!r} is too small", fix="set data.image_size to 8 or more")
    pre = T.Compose([ToRGB(), T.Resize((image_size, image_size), antialias=True)])
    if policy not in POLICIES:
        raise UserError(f"unknown data.policy {policy!r}", fix="choose one of " + ", ".join(POLICIES))
    ops = []
    if train and augment:
        ops.append(T.RandomCrop(image_size, padding=image_size // 8, padding_mode="reflect"))
        if hflip:
            ops.append(T.RandomHorizontalFlip())
        if POLICIES[policy] is not None:
            ops.append(POLICIES[policy]())
    ops += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return SplitTransform(pre, T.Compose(ops), image_size)
