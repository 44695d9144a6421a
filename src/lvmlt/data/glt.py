"""A generalised long-tail (GLT) protocol built from a dataset with a known attribute: a data
protocol (splits and test sets), not a method; IFL runs under it.

IFL (Tang et al., ECCV 2022) evaluates on training data that is long-tailed both across
classes and, inside each class, across attributes, and on two test sets: Test-CBL
(class-balanced, attributes distributed inside a class as in training) and Test-GBL
(class- and attribute-balanced). Training on Train-GLT and testing on Test-CBL is their
"CLT" protocol, testing on Test-GBL their "GLT" protocol.

ELPV has a natural attribute: the cell type (mono- or polycrystalline). Its GLT version
classifies the **defect level** (4 classes: p = 0, 1/3, 2/3, 1) with the cell type as the
attribute. :func:`elpv_glt_bundles` pools the ELPV bundle's train, val and test splits and
re-splits them per (class, attribute) cell, with a seeded shuffle per cell:

1. Test-GBL: ``gbl_per_attr`` images of every (class, attribute) cell;
2. Test-CBL: ``cbl_per_class`` images per class, the attributes in the training ratio
   (majority : minority = ``attr_ratio`` : 1);
3. validation: ``val_per_class`` per class in the same ratio (epochs are selected here,
   never on a test set);
4. training: every remaining image of the class's majority attribute (the attribute with
   more images in the pool, so the natural class-wise long tail is kept) and at most
   1 / ``attr_ratio`` as many of the minority attribute.

With the defaults (ratio 4, 12 / 24 / 12) and split seed 0 this gives (see
``docs/methods-other.md``): training counts [1098, 171, 18, 451] (mono/poly
[219/879, 34/137, 15/3, 90/361]), Test-GBL 4 x 24 = 96, Test-CBL 4 x 24 = 96, validation
4 x 12 = 48 images. Attributes are never given to a model; they are kept in
``bundle.meta["attributes"]`` for reporting only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lvmlt.data.base import DataBundle, ImageSplit
from lvmlt.data.elpv import ELPV_TYPES
from lvmlt.errors import UserError

ELPV_GLT_CLASSES = ["p0.00", "p0.33", "p0.67", "p1.00"]
ELPV_ATTRIBUTES = list(ELPV_TYPES)
# Many > 300 and few < 60 training images: classes [1098, 171, 18, 451] -> many, medium, few, many.
ELPV_GLT_MANY, ELPV_GLT_FEW = 300, 60


@dataclass(frozen=True)
class GLTSpec:
    """Sizes of a GLT protocol (images per class or per class-attribute cell)."""

    attr_ratio: float = 4.0  # majority : minority attribute inside a class (training, Test-CBL, val)
    gbl_per_attr: int = 12  # Test-GBL: images per (class, attribute)
    cbl_per_class: int = 24  # Test-CBL: images per class
    val_per_class: int = 12  # validation: images per class
    seed: int = 0  # seeds the shuffle of every (class, attribute) cell

    def __post_init__(self):
        if self.attr_ratio < 1:
            raise UserError(f"GLT attr_ratio={self.attr_ratio} must be >= 1 (majority : minority)")
        for k in ("gbl_per_attr", "cbl_per_class", "val_per_class"):
            if getattr(self, k) < 1:
                raise UserError(f"GLT {k}={getattr(self, k)} must be at least 1")


class _PooledLoader:
    """``load(j)`` of a re-split sample: sample ``local[idx[j]]`` of source split ``owner[idx[j]]``."""

    def __init__(self, sources: list[ImageSplit], owner: np.ndarray, local: np.ndarray, idx: np.ndarray):
        self.sources, self.owner, self.local, self.idx = sources, owner, local, idx

    def __call__(self, j: int):
        i = int(self.idx[j])
        return self.sources[int(self.owner[i])].load(int(self.local[i]))


#: The datasets with a GLT protocol: the bundle builder of this module and what their class
#: and attribute are (words for reports; counts and names come from the bundles).
GLT_PROTOCOLS: dict[str, dict] = {
    "elpv": {"build": "elpv_glt_bundles", "title": "ELPV", "classes": "defect level", "attribute": "cell type"},
}


def _attribute_shares(total: int, majority: int, num_attrs: int, ratio: float) -> list[int]:
    """Split ``total`` images over the attributes: the majority ``ratio`` parts, the others 1 each."""
    minority = int(np.floor(total / (ratio + num_attrs - 1) + 0.5))
    shares = [minority] * num_attrs
    shares[majority] = total - minority * (num_attrs - 1)
    return shares


def glt_indices(
    classes: np.ndarray, attributes: np.ndarray, num_classes: int, num_attrs: int, spec: GLTSpec
) -> dict:
    """Indices of the GLT splits of a pool (module docstring, steps 1-4).

    Args:
        classes: class of every pooled sample, shape (N,).
        attributes: attribute of every pooled sample, shape (N,).
        num_classes, num_attrs: K and A.
        spec: the sizes and seed.

    Returns:
        ``{"train", "val", "test_cbl", "test_gbl": sorted index arrays, "majority": (K,)
        majority attribute per class}``.

    Raises:
        UserError: a (class, attribute) cell has too few images for the requested sizes.
    """
    parts: dict[str, list] = {k: [] for k in ("train", "val", "test_cbl", "test_gbl")}
    majority = np.zeros(num_classes, dtype=np.int64)
    for c in range(num_classes):
        pools = [
            np.random.default_rng([spec.seed, 7, c, a]).permutation(
                np.flatnonzero((classes == c) & (attributes == a))
            )
            for a in range(num_attrs)
        ]
        maj = int(np.argmax([len(p) for p in pools]))  # ties: the lower attribute index
        majority[c] = maj
        cbl = _attribute_shares(spec.cbl_per_class, maj, num_attrs, spec.attr_ratio)
        val = _attribute_shares(spec.val_per_class, maj, num_attrs, spec.attr_ratio)
        left = []
        for a, pool in enumerate(pools):
            need = spec.gbl_per_attr + cbl[a] + val[a] + 1
            if len(pool) < need:
                raise UserError(
                    f"GLT split: class {c} attribute {a} has {len(pool)} images, fewer than the {need} needed",
                    fix="lower gbl_per_attr, cbl_per_class or val_per_class",
                )
            s = 0
            for key, k in (("test_gbl", spec.gbl_per_attr), ("test_cbl", cbl[a]), ("val", val[a])):
                parts[key].append(pool[s : s + k])
                s += k
            left.append(pool[s:])
        n_major = len(left[maj])
        cap = int(np.floor(n_major / spec.attr_ratio))
        for a in range(num_attrs):
            parts["train"].append(left[a] if a == maj else left[a][:cap])
    out = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    out["majority"] = majority
    return out


def glt_bundles(
    source: DataBundle,
    classes_of,
    attributes_of,
    class_names: list[str],
    attribute_names: list[str],
    spec: GLTSpec = GLTSpec(),
    meta: dict | None = None,
) -> dict[str, DataBundle]:
    """Two bundles sharing a GLT training and validation split: test = Test-CBL / Test-GBL.

    Args:
        source: the dataset's bundle; its three splits are pooled (transforms of its train
            split go to the new training split, of its validation split to the others).
        classes_of, attributes_of: ``f(source_labels) -> (N,)`` new class / attribute.
        class_names, attribute_names: names of the K classes and A attributes.
        spec: sizes and seed.
        meta: extra entries for the bundles' meta (group thresholds).

    Returns:
        ``{"cbl": bundle with test = Test-CBL, "gbl": bundle with test = Test-GBL}``; both
        carry ``meta["attributes"] = {split: (N,) attribute}``, ``meta["attribute_names"]``,
        ``meta["majority_attribute"]`` (per class) and ``meta["glt_spec"]``.
    """
    sources = list(source.splits().values())
    ids = [i for s in sources for i in s.ids]
    labels = np.concatenate([s.labels for s in sources])
    owner = np.concatenate([np.full(len(s), k, dtype=np.int64) for k, s in enumerate(sources)])
    local = np.concatenate([np.arange(len(s), dtype=np.int64) for s in sources])
    sizes = None
    if all(s.sizes is not None for s in sources):
        sizes = [z for s in sources for z in s.sizes]
    cls = np.asarray(classes_of(labels), dtype=np.int64)
    att = np.asarray(attributes_of(labels), dtype=np.int64)
    idx = glt_indices(cls, att, len(class_names), len(attribute_names), spec)

    def split(name: str, key: str, like: ImageSplit) -> ImageSplit:
        sel = idx[key]
        return ImageSplit(
            name,
            [ids[i] for i in sel],
            cls[sel],
            _PooledLoader(sources, owner, local, sel),
            [sizes[i] for i in sel] if sizes is not None else None,
            like.transform,
        )

    train = split("train", "train", source.train)
    val = split("val", "val", source.val)
    tests = {"cbl": split("test", "test_cbl", source.val), "gbl": split("test", "test_gbl", source.val)}
    out = {}
    for k, test in tests.items():
        m = {
            "train_source": f"GLT protocol over {source.name} (seed {spec.seed})",
            "val_source": f"{spec.val_per_class} per class, attributes in the training ratio",
            "test_protocol": "Test-CBL" if k == "cbl" else "Test-GBL",
            "attributes": {
                "train": att[idx["train"]],
                "val": att[idx["val"]],
                "test": att[idx["test_cbl" if k == "cbl" else "test_gbl"]],
            },
            "attribute_names": list(attribute_names),
            "majority_attribute": idx["majority"].tolist(),
            "glt_spec": spec,
            **(meta or {}),
        }
        out[k] = DataBundle(f"{source.name}-glt", train, val, test, list(class_names), m)
    return out


def elpv_glt_bundles(source: DataBundle | None = None, spec: GLTSpec = GLTSpec()) -> dict[str, DataBundle]:
    """The GLT protocol on ELPV: defect level as the class, cell type as the attribute.

    Args:
        source: the ELPV bundle (default: ``build_data(DataConfig(name="elpv"))``); the
            ELPV label is ``type * 4 + level`` (mono = 0, poly = 1).
        spec: sizes and seed (defaults documented in the module docstring).

    Returns:
        ``{"cbl": ..., "gbl": ...}`` as :func:`glt_bundles`, with many > 300 and few < 60.
    """
    if source is None:
        from lvmlt.config import DataConfig
        from lvmlt.data.build import build_data

        source = build_data(DataConfig(name="elpv"))
    if source.num_classes != 8:
        raise UserError(f"elpv_glt_bundles needs the 8-class ELPV bundle, got {source.num_classes} classes")
    return glt_bundles(
        source,
        lambda y: y % 4,
        lambda y: y // 4,
        ELPV_GLT_CLASSES,
        ELPV_ATTRIBUTES,
        spec,
        {
            "many_threshold": ELPV_GLT_MANY,
            "few_threshold": ELPV_GLT_FEW,
            "hflip": source.meta.get("hflip", True),
        },
    )


def attribute_accuracy(
    logits: np.ndarray, labels: np.ndarray, attributes: np.ndarray, num_attrs: int
) -> list:
    """Mean per-class accuracy (%) inside each attribute, one value per attribute (None if absent)."""
    pred = np.asarray(logits).argmax(axis=1)
    out = []
    for a in range(num_attrs):
        accs = [
            float((pred[(labels == c) & (attributes == a)] == c).mean())
            for c in np.unique(labels)
            if ((labels == c) & (attributes == a)).any()
        ]
        out.append(100.0 * float(np.mean(accs)) if accs else None)
    return out
