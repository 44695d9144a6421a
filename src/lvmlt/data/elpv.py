"""ELPV: electroluminescence images of solar cells, 8 classes (cell type x defect level).

A fixed, seeded, stratified 65/10/25 split that ignores ``data.val_fraction``; its many /
few thresholds are 150 / 60 training images (see ``docs/data.md``).
"""

from __future__ import annotations

import functools

import numpy as np

from lvmlt.config import DataConfig
from lvmlt.data.base import DataBundle
from lvmlt.data.datasets import (
    DataNotFoundError,
    array_split,
    register_dataset,
)
from lvmlt.data.longtail import stratified_split
from lvmlt.errors import UserError

ELPV_TEST_FRACTION, ELPV_VAL_FRACTION = 0.25, 0.10
ELPV_MANY_THRESHOLD, ELPV_FEW_THRESHOLD = 150, 60
ELPV_TYPES = ("mono", "poly")  # the cell types, in label order (label = type x 4 + defect level)
ELPV_CLASSES = [f"{t}_p{p:.2f}" for t in ELPV_TYPES for p in (0, 1 / 3, 2 / 3, 1)]
ELPV_INSTALL = "pip install elpv-dataset==1.0.0.post1"




@functools.cache
def _load_elpv() -> tuple[np.ndarray, np.ndarray]:
    """All 2,624 ELPV cells: images uint8 N x 300 x 300, labels (N,). Cached: decoding takes ~4 s."""
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise DataNotFoundError("the ELPV dataset package is not installed", fix=ELPV_INSTALL) from None
    images, probs, types = load_dataset()
    level = np.rint(np.asarray(probs, dtype=np.float64) * 3).astype(np.int64)
    type_index = np.where(np.asarray(types) == ELPV_TYPES[1], 1, 0)
    known = np.isin(np.asarray(types), list(ELPV_TYPES)) & np.isclose(probs * 3, level) & (level >= 0)
    if not known.all() or level.max() > 3 or images.dtype != np.uint8:
        raise UserError("the installed ELPV package has unexpected labels", fix=ELPV_INSTALL)
    labels = type_index * 4 + level  # mono first, then defect probability 0, 1/3, 2/3, 1
    images.setflags(write=False)
    return images, labels


@register_dataset("elpv", 8)
def build_elpv(cfg: DataConfig) -> DataBundle:
    """ELPV solar cells, 8 classes (type x defect level), seeded stratified 65/10/25 split."""
    images, labels = _load_elpv()
    test, val, train = stratified_split(labels, [ELPV_TEST_FRACTION, ELPV_VAL_FRACTION], cfg.split_seed)

    def split(name, idx):
        return array_split(name, "elpv", images, labels, idx, width=4)

    return DataBundle(
        "elpv",
        split("train", train),
        split("val", val),
        split("test", test),
        list(ELPV_CLASSES),
        {
            "train_source": "built-in dataset elpv",
            "many_threshold": ELPV_MANY_THRESHOLD,
            "few_threshold": ELPV_FEW_THRESHOLD,
            "val_source": "10% per class (fixed ELPV protocol)",
            # A cell's defect level and type do not change when it is rotated by 90 degrees
            # or mirrored (the busbars turn with it): data.dihedral=auto uses all 8 symmetries.
            "dihedral": True,
        },
    )
