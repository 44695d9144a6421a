"""Datasets over the feature store: what a model on stored features is trained on.

A run's :class:`~lvmlt.systems.Spec` says what its model reads (``image``, ``sam_vec``,
``sam_map``, ``level/<name>`` for a pooled earlier stage stored with ``levels=[...]``) and
how a stored vector is normalised (``{key: cl2n | l2 | standardize | raw}``, the map fitted
on the training split). :func:`attach_features` wraps the bundle's three splits into
:class:`FeatureDataset` s that add those keys to each item; a model without ``image``
never decodes an image.

A system may top up the training split (the synthetic tail features of
:mod:`lvmlt.features.synthetic`): one more wrapper of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lvmlt.errors import UserError
from lvmlt.inputs import IMAGE, LEVEL, SAM_MAP, FeatureNorm, level_key, level_name


def level_hint(store_root, levels: Sequence[str]) -> str:
    """How to (re-)extract a store with the given pooled levels, as one command line."""
    wanted = ",".join(lv for lv in levels if lv != "vec") or "stage3,stage4"
    return (
        "re-extract with the levels, e.g. `lvmlt extract --dataset elpv --encoder mobilesam --img-size 256 "
        f"--out NEW_DIR 'levels=[{wanted}]'` (lvmlt extract has no --levels flag: levels is a key=value setting)"
        f"; the store checked was {store_root}"
    )


def stored(split, key: str, store_root, wanted: Sequence[str] = ()) -> np.ndarray:
    """The stored array of ``key`` (``sam_vec``, ``sam_map`` or ``level/<name>``) of one split.

    Raises:
        UserError: the store lacks the pooled level (with the command that stores it).
    """
    if key == "sam_vec":
        return split.vec
    if key == "sam_map":
        return split.map
    name = level_name(key)
    have = split.levels
    if not key.startswith(LEVEL) or name not in have:
        listed = ", ".join(sorted(have)) or "none"
        raise UserError(
            f"feature store {str(store_root)!r} has no pooled level {name!r} (stored levels: {listed})",
            fix=level_hint(store_root, [level_name(k) if k.startswith(LEVEL) else "vec" for k in wanted] or [name]),
        )
    return have[name]


def feature_dims(store) -> dict[str, int]:
    """Width of every stored vector (``sam_vec``, ``level/<name>``), read from the training
    split's array headers; ``{}`` without a store."""
    if store is None:
        return {}
    train = store.split("train")
    dims = {"sam_vec": int(train.vec.shape[1])} if "vec" in train.files else {}
    return dims | {level_key(k): int(v.shape[1]) for k, v in train.levels.items()}


class FeatureDataset(torch.utils.data.Dataset):
    """One split with its stored features: item i is the split's item (or, without
    ``image``, only its label) plus a float32 tensor per feature key.

    ``labels`` (what the sampler draws from) and ``class_counts`` (what the loss terms are
    built on) are those of the split; a top-up of the training split
    (:class:`~lvmlt.features.synthetic.SyntheticTopUp`) exposes the same two.

    Args:
        split: the :class:`~lvmlt.data.ImageSplit`.
        arrays: ``{key: N x ...}``; normalised vectors are held in memory, maps stay
            memory-mapped.
        needs: what the model reads (``image`` decodes the image).
        num_classes: C.
        bad: rows the extraction skipped (their features are zeros): scored as skipped
            images (label -1) when the image is not decoded.
    """

    def __init__(self, split, arrays: dict[str, np.ndarray], needs, num_classes: int, bad: Sequence[int] = ()):
        self.split, self.arrays, self.needs = split, arrays, set(needs)
        self.bad = frozenset(int(i) for i in bad)
        self.labels = np.asarray(split.labels)
        self.class_counts = np.bincount(self.labels[self.labels >= 0], minlength=num_classes)

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """Items ``indices``: a split that converts a batch's images together is asked for
        them in one call (:meth:`lvmlt.data.ImageSplit.__getitems__`)."""
        if IMAGE not in self.needs:  # a model on stored features only: don't decode the image at all
            items = [{"label": int(self.labels[i]), "index": i, "valid": i not in self.bad} for i in indices]
        elif hasattr(self.split, "__getitems__"):
            items = self.split.__getitems__(indices)
        else:
            items = [self.split[i] for i in indices]
        for item, i in zip(items, indices, strict=True):
            for k, a in self.arrays.items():
                item[k] = torch.from_numpy(np.array(a[i], dtype=np.float32))  # a copy: stored arrays are read-only
        return items


def attach_features(bundle, store, spec) -> dict:
    """The three splits of ``bundle``, each a :class:`FeatureDataset` with the stored
    features ``spec.inputs`` names.

    Vectors named in ``spec.norms`` are normalised by a map fitted on the training split.
    ``store`` is an open :class:`~lvmlt.features.FeatureStore` (checked against the bundle
    here); it may be None when the model reads images only.

    Raises:
        UserError: features are needed but there is no store, or it does not match.
    """
    splits, c = bundle.splits(), bundle.num_classes
    keys = sorted(spec.inputs - {IMAGE})
    if not keys:
        return {name: FeatureDataset(split, {}, spec.inputs, c) for name, split in splits.items()}
    if store is None:
        raise UserError(
            "this system reads stored SAM features and needs a feature store",
            fix="run `lvmlt extract` and set fusion.store=DIR",
        )
    store.check(bundle)
    raw = {name: {k: stored(store.split(name), k, store.root, keys) for k in keys} for name in splits}
    fitted = {k: FeatureNorm(kind).fit(raw["train"][k]) for k, kind in spec.norms.items() if k in keys}
    out = {}
    for name, split in splits.items():
        arrays = {}
        for k in keys:
            a = raw[name][k]
            arrays[k] = fitted[k](a) if k in fitted else (a if k == SAM_MAP else np.asarray(a, dtype=np.float32))
        out[name] = FeatureDataset(split, arrays, spec.inputs, c, sorted(store.split(name).bad))
    return out


def build_splits(bundle, store, spec, top_up=None) -> dict:
    """The run's three datasets (:func:`attach_features`); ``top_up(train) -> dataset``, a
    system's hook (:mod:`lvmlt.systems`), replaces the training split when given."""
    splits = attach_features(bundle, store, spec)
    if top_up is not None:
        splits["train"] = top_up(splits["train"])
    return splits
