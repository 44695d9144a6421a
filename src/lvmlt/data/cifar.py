"""CIFAR-10 / CIFAR-100, balanced and long-tailed, from the python-pickle folder in ``data.root``."""

from __future__ import annotations

import functools
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

CIFAR_LT_VAL_PER_CLASS = {"cifar10": 100, "cifar100": 20}




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
    # The CIFAR "python version" is pickled dicts with bytes keys, read as data only: a
    # crafted file in data.root cannot name any global but numpy's array reconstruction.
    fix = "re-extract the archive"
    try:
        with open(path, "rb") as f:
            d = load_data_pickle(
                f, f"CIFAR file {path}", fix=f"{fix} from its official source", encoding="bytes"
            )
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot read CIFAR file ({type(e).__name__})", where=str(path), fix=fix) from None
    if not isinstance(d, dict):
        raise UserError("CIFAR file does not hold a dict", where=str(path), fix=fix)
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
        return balanced_bundle(name, pool, test, names, kind)
    # n_max = the pool's per-class size: 5000 / 500 on the real CIFAR, the standard heads.
    n_max = int(np.bincount(pool[1], minlength=len(names)).min())
    return long_tailed_bundle(name, pool, test, names, kind, cfg, n_max, CIFAR_LT_VAL_PER_CLASS[kind])


@register_dataset("cifar10", 10, uses_root=True)
def build_cifar10(cfg: DataConfig) -> DataBundle:
    """CIFAR-10 from its python-pickle folder under data.root; val carved by build_data."""
    return _cifar("cifar10", cfg, long_tailed=False)


@register_dataset("cifar100", 100, uses_root=True)
def build_cifar100(cfg: DataConfig) -> DataBundle:
    """CIFAR-100 (fine labels) from its python-pickle folder; val carved by build_data."""
    return _cifar("cifar100", cfg, long_tailed=False)


@register_dataset("cifar10-lt", 10, uses_root=True)
def build_cifar10_lt(cfg: DataConfig) -> DataBundle:
    """CIFAR-10-LT (n_max 5000), 100/class val from the unchosen images, balanced test."""
    return _cifar("cifar10", cfg, long_tailed=True)


@register_dataset("cifar100-lt", 100, uses_root=True)
def build_cifar100_lt(cfg: DataConfig) -> DataBundle:
    """CIFAR-100-LT (n_max 500), 20/class val from the unchosen images, balanced test."""
    return _cifar("cifar100", cfg, long_tailed=True)
