"""Small synthetic data shared by the tests that train: three classes of 16 x 16 images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lvmlt.data.base import DataBundle, ImageSplit
from lvmlt.data.transforms import build_transform
from lvmlt.errors import BadImageError


def toy_bundle(n_train: int = 60, n_val: int = 30, n_test: int = 30, bad: frozenset[int] = frozenset()) -> DataBundle:
    """Classes a, b, c in the proportions 1/2, 1/3, 1/6 of every split; the class shifts the
    brightness, so a tiny CNN learns it in two epochs. Seeded: the same images every call.

    Args:
        n_train, n_val, n_test: images per split.
        bad: training indices whose image fails to decode (:class:`BadImageError`).
    """
    rng = np.random.default_rng(0)

    def split(name: str, n: int) -> ImageSplit:
        labels = np.repeat(np.arange(3), [n // 2, n // 3, n - n // 2 - n // 3])
        imgs = (rng.random((n, 16, 16)) * 80 + labels[:, None, None] * 60).astype(np.uint8)

        def load(i):
            if name == "train" and i in bad:
                raise BadImageError("cannot decode image", where=f"img{i}.png")
            return Image.fromarray(imgs[i])

        ids = [f"{name}/{i}" for i in range(n)]
        return ImageSplit(name, ids, labels, load, transform=build_transform(16, name == "train", True))

    return DataBundle(
        "syn", split("train", n_train), split("val", n_val), split("test", n_test), ["a", "b", "c"]
    )
