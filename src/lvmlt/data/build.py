""":func:`build_data`: a config's data section to a checked :class:`DataBundle`; the dataset listing.

A builder may leave ``bundle.val`` as None: :func:`build_data` then carves a seeded,
stratified ``data.val_fraction`` of the training pool as validation. It also checks that
every class has a training image, attaches the train/eval transforms and fills the
default group thresholds in ``bundle.meta`` (many > 100, few < 20 training images, unless
the dataset suggests others).
"""

from __future__ import annotations

import numpy as np

from lvmlt.config import FEW_THRESHOLD, MANY_THRESHOLD, DataConfig
from lvmlt.data import cifar, elpv, mnist, splitfile  # noqa: F401  (the families register their datasets)
from lvmlt.data.base import DataBundle
from lvmlt.data.datasets import DATASETS, DataNotFoundError
from lvmlt.data.longtail import stratified_split
from lvmlt.data.samplers import SAMPLERS
from lvmlt.data.transforms import build_transform
from lvmlt.errors import UserError


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


def dihedral_on(cfg: DataConfig, meta: dict) -> bool:
    """``data.dihedral``: always, or auto where the dataset declares its classes invariant to the
    8 symmetries of the square (``meta["dihedral"]``); training augmentation only."""
    return cfg.augment and (cfg.dihedral == "always" or (cfg.dihedral == "auto" and bool(meta.get("dihedral", False))))


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
    # With the dihedral group on, the trainer draws the flips too (training/recipe.py).
    hflip = bundle.meta.get("hflip", True) and not dihedral_on(cfg, bundle.meta)
    train_tf = build_transform(cfg.image_size, train=True, augment=cfg.augment, hflip=hflip, policy=cfg.policy)
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
