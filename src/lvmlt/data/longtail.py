"""Index-level split helpers: long-tailed subsampling and seeded stratified hold-outs.

Long-tailed subsampling follows LDAM-DRW's CIFAR-LT protocol: class ``i`` of ``C`` keeps

    ``int(n_max * (1 / IF) ** (i / (C - 1)))``

images, so class 0 is the head (n_max images) and class C-1 the tail (n_max / IF). With
n_max=500, C=100, IF=100 this is CIFAR-100-LT's 10,847 images; with n_max=5000, C=10,
IF=100 it is CIFAR-10-LT's 12,406.

Which images a class keeps is a seeded shuffle *per class*: the generator is seeded with
``(seed, class)``, so one class's choice does not depend on the size of any other class.
All functions return sorted index arrays, so a split's sample order never depends on the
seed, only its membership does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lvmlt.errors import UserError

# Salts keep the stratified hold-out's shuffle independent of the LT subsample's shuffle
# when both use the same split_seed.
_SALT_LT = 0
_SALT_HOLDOUT = 1


def _class_rng(seed: int, salt: int, c: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, salt, c])


def long_tailed_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Images per class of an exponentially long-tailed profile.

    Args:
        n_max: images of the head class (class 0).
        num_classes: C.
        imbalance_factor: IF = n_max / n_min, >= 1.

    Returns:
        C counts, non-increasing; class i has ``int(n_max * (1/IF) ** (i/(C-1)))``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not imbalance_factor >= 1:
        raise UserError(
            f"imbalance factor {imbalance_factor} is below 1",
            fix="set data.imbalance_factor to n_max/n_min >= 1 (100 is the usual benchmark)",
        )
    if num_classes == 1:
        return [int(n_max)]
    ratio = 1.0 / imbalance_factor
    # The exact expression of the reference implementation, so counts match bit for bit.
    return [int(n_max * ratio ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def _per_class(labels: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, int]:
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative")
    c = int(labels.max()) + 1 if labels.size else 0
    return labels, max(c, num_classes or 0)


def subsample_long_tailed(
    labels: Sequence[int] | np.ndarray,
    imbalance_factor: float,
    seed: int,
    n_max: int | None = None,
    num_classes: int | None = None,
) -> np.ndarray:
    """Indices of a long-tailed subsample of a (roughly balanced) labelled pool.

    Args:
        labels: class per pool sample, shape (N,).
        imbalance_factor: IF = n_max / n_min.
        seed: seeds the per-class shuffle.
        n_max: images kept for class 0. Default: the smallest class's size, the largest
            value for which every class can fill its quota. A class with fewer images than
            its quota keeps all it has.
        num_classes: C (default: max label + 1).

    Returns:
        Sorted pool indices, shape (sum of the counts,).
    """
    labels, c = _per_class(labels, num_classes)
    sizes = np.bincount(labels, minlength=c)
    if n_max is None:
        n_max = int(sizes.min()) if c else 0
    if n_max < 1:
        raise ValueError("every class needs at least one image to subsample (n_max < 1)")
    quota = long_tailed_counts(n_max, c, imbalance_factor)
    keep = []
    for k in range(c):
        idx = np.flatnonzero(labels == k)
        keep.append(_class_rng(seed, _SALT_LT, k).permutation(idx)[: quota[k]])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def long_tailed_train_val(
    labels: Sequence[int] | np.ndarray,
    imbalance_factor: float,
    seed: int,
    n_max: int,
    val_per_class: int,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A long-tailed training subsample plus a balanced validation set from the rest.

    Per class, the pool is shuffled exactly as in :func:`subsample_long_tailed`: the
    training images are the first ``quota`` of that order and the validation images the
    last ``val_per_class``, so validation never overlaps training. When a class holds
    fewer than ``quota + val_per_class`` images (on CIFAR, where every class has exactly
    n_max images, the head class), the validation images are kept and training gets the
    remainder; in every other case the training set equals
    ``subsample_long_tailed(labels, imbalance_factor, seed, n_max)``.

    Args:
        labels: class per pool sample, shape (N,).
        imbalance_factor: IF = n_max / n_min.
        seed: seeds the per-class shuffle.
        n_max: training images wanted for class 0.
        val_per_class: validation images per class.
        num_classes: C (default: max label + 1).

    Returns:
        ``(train_indices, val_indices)``, each sorted.
    """
    labels, c = _per_class(labels, num_classes)
    quota = long_tailed_counts(n_max, c, imbalance_factor)
    train, val = [], []
    for k in range(c):
        order = _class_rng(seed, _SALT_LT, k).permutation(np.flatnonzero(labels == k))
        if len(order) <= val_per_class:
            raise UserError(
                f"class {k} has {len(order)} images, too few for {val_per_class} validation images",
                fix="use a larger pool",
            )
        n_val = val_per_class
        train.append(order[: min(quota[k], len(order) - n_val)])
        val.append(order[len(order) - n_val :])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _round_half_up(x: float) -> int:
    # Python's round() is banker's rounding, which would make 12.5 and 13.5 round apart.
    return int(np.floor(x + 0.5))


def stratified_split(
    labels: Sequence[int] | np.ndarray,
    fractions: Sequence[float],
    seed: int,
) -> list[np.ndarray]:
    """Seeded per-class split into ``len(fractions) + 1`` parts (the last is the rest).

    Per class of n images, part j takes ``round_half_up(fractions[j] * n)`` images, but
    at least one image always stays in the rest (the training part, by convention), so a
    rare class is never removed from training.

    Args:
        labels: class per sample, shape (N,).
        fractions: share of each held-out part, each in [0, 1), summing to < 1.
        seed: seeds the per-class shuffle.

    Returns:
        ``len(fractions) + 1`` sorted index arrays that partition ``range(N)``.
    """
    if any(not 0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
        raise UserError(
            f"split fractions {list(fractions)} are not in [0, 1) with a sum below 1",
            fix="set data.val_fraction between 0 and 1",
        )
    labels, c = _per_class(labels, None)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for k in range(c):
        order = _class_rng(seed, _SALT_HOLDOUT, k).permutation(np.flatnonzero(labels == k))
        start = 0
        for j, f in enumerate(fractions):
            take = min(_round_half_up(f * len(order)), max(len(order) - 1 - start, 0))
            parts[j].append(order[start : start + take])
            start += take
        parts[-1].append(order[start:])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]
