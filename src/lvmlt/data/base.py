"""Core data types: a labelled split of images and the train/val/test bundle.

Every dataset in lvmlt, built-in or the user's own, becomes a :class:`DataBundle` of three
:class:`ImageSplit` objects. A split knows, per sample, a stable string id, an integer
label and how to load the image; the feature store fingerprints a split from its ids,
labels and (for files) sizes, and training looks features up by sample index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from lvmlt.data.transforms import SplitTransform
from lvmlt.errors import BadImageError

#: A split keeps its resized images in memory (they are decoded and resized once, not every
#: epoch) when all of them fit in this many bytes (per process: each DataLoader worker holds
#: its own copy).
RESIZED_CACHE_BYTES = 128 * 2**20


class ImageSplit(torch.utils.data.Dataset):
    """One split of labelled images.

    Args:
        name: "train", "val" or "test".
        ids: a unique, stable string per sample (a relative path, or "elpv/123").
        labels: integer class per sample, shape (N,).
        load: ``load(i) -> PIL.Image`` for sample i; raises :class:`BadImageError`.
        sizes: optional byte size per sample (file-backed splits), used in fingerprints.
        transform: applied to the PIL image; returns a tensor (3 x H x W).

    ``split[i]`` returns ``{"image": Tensor 3xHxW, "label": int, "index": i}``. With a
    :class:`~lvmlt.data.transforms.SplitTransform`, its deterministic part (RGB, resize) runs
    once per image when the split's resized images fit in :data:`RESIZED_CACHE_BYTES`; an
    evaluation transform then keeps them as uint8 tensors and converts a batch at a time.
    """

    def __init__(
        self,
        name: str,
        ids: Sequence[str],
        labels: np.ndarray,
        load: Callable[[int], Image.Image],
        sizes: Sequence[int] | None = None,
        transform: Callable | None = None,
    ):
        self.name = name
        self.ids = list(ids)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.load = load
        self.sizes = list(sizes) if sizes is not None else None
        self.transform = transform  # (a property: setting it empties the cache of resized images)
        self.skip_bad_images = False  # set by the trainer: bad images are replaced, not fatal
        self.bad: dict[int, str] = {}  # index -> reason, filled when skip_bad_images is on
        assert len(self.ids) == len(self.labels)

    @property
    def transform(self) -> Callable | None:
        return self._transform

    @transform.setter
    def transform(self, transform: Callable | None) -> None:
        self._transform = transform
        size = transform.size if isinstance(transform, SplitTransform) else None
        fits = size is not None and len(self.ids) * size * size * 3 <= RESIZED_CACHE_BYTES
        self._resized: dict[int, Image.Image | torch.Tensor] | None = {} if fits else None
        self._fixed = isinstance(transform, SplitTransform) and transform.fixed

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """Items ``indices`` (a DataLoader asks for a batch's items in one call). With a
        :attr:`~lvmlt.data.transforms.SplitTransform.fixed` transform (evaluation) the
        images are kept as uint8 tensors and converted together, equal bit for bit to the
        image-by-image transform."""
        items = [self._item(int(i)) for i in indices]
        raw = [k for k, item in enumerate(items) if self._fixed and item["image"].dtype == torch.uint8]
        if raw:
            x = self._transform.from_uint8(torch.stack([items[k]["image"] for k in raw]))
            for k, xk in zip(raw, x, strict=True):
                items[k]["image"] = xk
        return items

    def _item(self, i: int) -> dict:
        """Item i; its image is a uint8 tensor still to be converted where the transform is fixed."""
        cached = self._resized.get(i) if self._resized is not None else None
        if cached is not None:
            x = cached if self._fixed else self._transform.post(cached)
            return {"image": x, "label": int(self.labels[i]), "index": i, "valid": True}
        try:
            img = self.load(i)
        except BadImageError as e:
            if not self.skip_bad_images:
                raise
            self.bad[i] = str(e)
            img = None
        if img is None:
            # A skipped image: a black placeholder flagged valid=False so losses and metrics ignore it.
            x = self._transform(Image.new("RGB", (32, 32))) if self._transform else Image.new("RGB", (32, 32))
            return {"image": x, "label": int(self.labels[i]), "index": i, "valid": False}
        if self._fixed:
            x = self._transform.to_uint8(self._transform.pre(img))
            if self._resized is not None:
                self._resized[i] = x
        elif self._resized is not None:
            self._resized[i] = img = self._transform.pre(img)
            x = self._transform.post(img)
        else:
            x = self._transform(img) if self._transform else img
        return {"image": x, "label": int(self.labels[i]), "index": i, "valid": True}

    def fingerprint(self) -> str:
        """sha256 over ids, labels and sizes: changes when any sample changes identity."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        for j, (sid, lab) in enumerate(zip(self.ids, self.labels.tolist(), strict=True)):
            size = self.sizes[j] if self.sizes is not None else -1
            # a file name that is not UTF-8 reaches Python with surrogate escapes: hash its bytes
            h.update(f"{sid}\t{lab}\t{size}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def subset(self, indices: Sequence[int], name: str | None = None) -> ImageSplit:
        """A new split over the given sample indices (ids, labels and loader follow)."""
        idx = np.asarray(indices, dtype=np.int64)
        sizes = [self.sizes[i] for i in idx] if self.sizes is not None else None
        return ImageSplit(
            name or self.name,
            [self.ids[i] for i in idx],
            self.labels[idx],
            SubsetLoader(self.load, idx),
            sizes,
            self.transform,
        )


class SubsetLoader:
    """``load(j) = base(idx[j])``, keeping the base loader's ``path(i)`` where it has one."""

    def __init__(self, base, idx: np.ndarray):
        self.base, self.idx = base, idx

    def __call__(self, j: int):
        return self.base(int(self.idx[j]))

    def path(self, j: int):
        """The file of item ``j``; AttributeError when the base loader reads no files."""
        return self.base.path(int(self.idx[j]))


@dataclass
class DataBundle:
    """Train / validation / test splits of one dataset, with its class names.

    The validation split is carved out of the training pool and is never trained on;
    the test split is balanced for the *-LT built-ins.
    """

    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    class_names: list[str]
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_counts(self) -> np.ndarray:
        """Training images per class, shape (C,)."""
        return np.bincount(self.train.labels, minlength=self.num_classes)

    def splits(self) -> dict[str, ImageSplit]:
        return {"train": self.train, "val": self.val, "test": self.test}
