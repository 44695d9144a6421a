"""Long-tailed subsampling and stratified hold-outs: exact counts, seeding, disjointness."""

import numpy as np
import pytest

from lvmlt.data.longtail import (
    long_tailed_counts,
    long_tailed_train_val,
    stratified_split,
    subsample_long_tailed,
)
from lvmlt.errors import UserError


def groups(counts, many=100, few=20):
    counts = np.asarray(counts)
    return (
        int((counts > many).sum()),
        int(((counts <= many) & (counts >= few)).sum()),
        int((counts < few).sum()),
    )


def test_cifar100_lt_counts():
    counts = long_tailed_counts(500, 100, 100)
    assert sum(counts) == 10847
    assert counts[0] == 500 and counts[-1] == 5
    assert counts == sorted(counts, reverse=True)
    assert groups(counts) == (35, 35, 30)


def test_cifar10_lt_counts():
    counts = long_tailed_counts(5000, 10, 100)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406


def test_counts_edge_cases():
    assert long_tailed_counts(7, 1, 100) == [7]
    assert long_tailed_counts(50, 5, 1) == [50] * 5
    assert sum(long_tailed_counts(500, 100, 10)) == 19573  # CIFAR-100-LT IF=10
    with pytest.raises(UserError, match="imbalance factor"):
        long_tailed_counts(500, 10, 0.5)


def test_subsample_matches_counts_and_is_seeded():
    labels = np.repeat(np.arange(10), 60)
    np.random.default_rng(0).shuffle(labels)
    idx = subsample_long_tailed(labels, 10, seed=3)  # n_max defaults to the smallest class: 60
    assert np.bincount(labels[idx], minlength=10).tolist() == long_tailed_counts(60, 10, 10)
    assert np.all(np.diff(idx) > 0)  # sorted, no duplicates
    assert np.array_equal(idx, subsample_long_tailed(labels, 10, seed=3))
    assert not np.array_equal(idx, subsample_long_tailed(labels, 10, seed=4))
    # A class's choice depends on (seed, class) only, not on the other classes.
    other = labels.copy()
    other[other == 9] = 8
    a = subsample_long_tailed(labels, 10, seed=3, n_max=30)
    b = subsample_long_tailed(other, 10, seed=3, n_max=30, num_classes=10)
    assert np.array_equal(a[labels[a] == 0], b[other[b] == 0])


def test_subsample_caps_at_available():
    labels = np.array([0] * 5 + [1] * 100)
    idx = subsample_long_tailed(labels, 1, seed=0, n_max=50)
    assert np.bincount(labels[idx]).tolist() == [5, 50]


def test_lt_train_val_protocol_counts():
    # MNIST-like pool with spare images: the training set is exactly the LT subsample.
    labels = np.repeat(np.arange(10), 5500)
    tr, va = long_tailed_train_val(labels, 100, seed=0, n_max=5000, val_per_class=100)
    assert len(tr) == 12406 and len(va) == 1000
    assert np.array_equal(tr, subsample_long_tailed(labels, 100, seed=0, n_max=5000))
    assert np.bincount(labels[va]).tolist() == [100] * 10
    assert not set(tr) & set(va)
    # CIFAR-like pools hold exactly n_max per class: the head gives up its val images.
    c100 = np.repeat(np.arange(100), 500)
    tr, va = long_tailed_train_val(c100, 100, seed=0, n_max=500, val_per_class=20)
    assert len(tr) == 10827 and len(va) == 2000
    assert np.bincount(c100[tr])[0] == 480 and not set(tr) & set(va)
    c10 = np.repeat(np.arange(10), 5000)
    tr, va = long_tailed_train_val(c10, 100, seed=0, n_max=5000, val_per_class=100)
    assert len(tr) == 12306 and len(va) == 1000


def test_stratified_split_partitions():
    labels = np.array([0] * 588 + [1] * 50 + [2] * 1)
    test, val, train = stratified_split(labels, [0.25, 0.10], seed=0)
    assert np.bincount(labels[test], minlength=3).tolist() == [147, 13, 0]
    assert np.bincount(labels[val], minlength=3).tolist() == [59, 5, 0]
    assert np.bincount(labels[train], minlength=3).tolist() == [382, 32, 1]  # a lone image stays in train
    assert np.array_equal(np.sort(np.concatenate([test, val, train])), np.arange(len(labels)))
    again = stratified_split(labels, [0.25, 0.10], seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(again, [test, val, train], strict=True))
    assert not np.array_equal(stratified_split(labels, [0.25, 0.10], seed=1)[0], test)
    with pytest.raises(UserError, match="val_fraction"):
        stratified_split(labels, [1.5], seed=0)
