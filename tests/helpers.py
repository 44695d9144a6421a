"""Small synthetic data shared by the tests that train: three classes of 16 x 16 images."""

from __future__ import annotations

import contextlib

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


def write_store(root, bundle: DataBundle, arrays: dict[str, dict[str, np.ndarray]], bad: dict | None = None):
    """A complete feature store holding given arrays (no encoder run), matched to ``bundle``.

    Args:
        arrays: ``{split: {"vec": N x D, "level_stage3": N x D3, ...}}`` (file keys as the
            extraction names them).
        bad: ``{split: [rows the extraction skipped]}``.
    """
    from pathlib import Path

    from lvmlt.features.store import FORMAT, file_record, write_manifest

    root = Path(root)
    splits = {}
    for name, split in bundle.splits().items():
        (root / name).mkdir(parents=True, exist_ok=True)
        files, checks = {}, {}
        for key, a in arrays[name].items():
            rel = f"{name}/{key}.npy"
            np.save(root / rel, np.ascontiguousarray(a))
            files[key], checks[key] = rel, file_record(root / rel)
        splits[name] = {
            "n": len(split),
            "fingerprint": split.fingerprint(),
            "files": files,
            "checksums": checks,
            "bad": {str(i): "unreadable" for i in (bad or {}).get(name, [])},
        }
    provenance = {"encoder": "arrays", "img_size": 0, "precision": "fp32", "dtype": "float32",
                  "levels": sorted({k[6:] for a in arrays.values() for k in a if k.startswith("level_")})}
    manifest = {"format": FORMAT, "complete": True, "provenance": provenance, "config": {},
                "map": {"pca": "none"}, "splits": splits}
    write_manifest(root, manifest)
    return root


def feature_bundle(counts_by_split: dict[str, list[int]]) -> DataBundle:
    """A bundle of blank 8 x 8 images with the given class counts per split (features come from a store)."""
    blank = Image.fromarray(np.zeros((8, 8), np.uint8))

    def split(name, counts):
        labels = np.repeat(np.arange(len(counts)), counts)
        ids = [f"{name}/{i}" for i in range(len(labels))]
        return ImageSplit(name, ids, labels, lambda i: blank, transform=build_transform(8, False, True))

    names = [f"c{k}" for k in range(len(counts_by_split["train"]))]
    return DataBundle("feat", *(split(s, counts_by_split[s]) for s in ("train", "val", "test")), names)


def train_killed_then_resumed(make_cfg, monkeypatch, kill_epoch: int = 2) -> dict:
    """Train ``make_cfg()`` with a kill (KeyboardInterrupt) at the start of epoch
    ``kill_epoch``, then ``--resume`` it to the end; returns the resumed run's metrics."""
    import pytest

    from lvmlt.training.trainer import train

    with pytest.raises(KeyboardInterrupt), killed_at(monkeypatch, kill_epoch):
        train(make_cfg(), bundle=toy_bundle(), progress=False)
    return train(make_cfg(), resume=True, bundle=toy_bundle(), progress=False)


@contextlib.contextmanager
def killed_at(monkeypatch, epoch: int):
    """Within the block, training is interrupted (KeyboardInterrupt) at the start of ``epoch``."""
    from lvmlt.training.trainer import Trainer

    real = Trainer._train_epoch

    def dying(self, e):
        if e == epoch:
            raise KeyboardInterrupt
        return real(self, e)

    monkeypatch.setattr(Trainer, "_train_epoch", dying)
    try:
        yield
    finally:
        monkeypatch.setattr(Trainer, "_train_epoch", real)


def folder_run_and_bundle(tmp, per=((20, 10, 6), (4, 4, 4), (4, 4, 4)), side: int = 20):
    """A 3-class ImageFolder under ``tmp/data`` (train / val / test counts per class in ``per``),
    a one-epoch CNN run on it (``tmp/runs/r``) and its exported bundle (``tmp/bundle``)."""
    from lvmlt.cli import main

    rng = np.random.default_rng(0)
    for split, counts in zip(("train", "val", "test"), per, strict=True):
        for c, n in enumerate(counts):
            d = tmp / "data" / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray((rng.random((side, side)) * 90 + c * 60).astype(np.uint8)).save(d / f"{i}.png")
    assert main(["train", "data.name=imagefolder", f"data.root={tmp / 'data'}", "data.image_size=16",
                 "model.backbone=resnet8", "optim.epochs=1", "optim.precision=fp32", "threads=1",
                 f"out_dir={tmp / 'runs'}", "run_name=r", "--quiet"]) == 0
    assert main(["export", str(tmp / "runs" / "r"), "--out", str(tmp / "bundle"), "--quiet"]) == 0
    return tmp / "bundle"
