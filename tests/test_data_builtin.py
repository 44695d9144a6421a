"""Built-in datasets: ELPV, MNIST(-LT), Fashion-MNIST(-LT) and CIFAR read from a fake
pickle folder; counts, disjoint splits, seeding and the 'not installed' errors."""

import pickle
from pathlib import Path

import numpy as np
import pytest
from torchvision.transforms import RandomHorizontalFlip

from lvmlt.config import DataConfig
from lvmlt.data import (
    DATASETS,
    DataNotFoundError,
    build_data,
    cifar,
    describe_builtins,
    format_datasets_table,
    mnist,
)
from lvmlt.data.longtail import long_tailed_counts, subsample_long_tailed
from lvmlt.errors import UserError

LT_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def ids_disjoint(bundle):
    tr, va, te = (set(s.ids) for s in (bundle.train, bundle.val, bundle.test))
    return not (tr & va or tr & te or va & te)


def test_registry_lists_builtins():
    assert DATASETS.names() == [
        "cifar10", "cifar10-lt", "cifar100", "cifar100-lt", "elpv", "fashion-mnist",
        "fashion-mnist-lt", "imagefolder", "mnist", "mnist-lt", "splitfile",
    ]  # fmt: skip
    with pytest.raises(UserError, match="unknown dataset 'imagenet'; choose one of: cifar10"):
        build_data(DataConfig(name="imagenet"))


def test_unknown_sampler_fails_before_loading():
    with pytest.raises(UserError, match="unknown sampler 'balanced'"):
        build_data(DataConfig(name="cifar10", sampler="balanced"))


# ----------------------------------------------------------------------------- ELPV


@pytest.fixture(scope="module")
def elpv():
    pytest.importorskip("elpv_dataset")
    return build_data(DataConfig(name="elpv", image_size=32))


def test_elpv_classes_and_counts(elpv):
    all_labels = np.concatenate([elpv.train.labels, elpv.val.labels, elpv.test.labels])
    assert np.bincount(all_labels).tolist() == [588, 117, 56, 313, 920, 178, 50, 402]
    assert elpv.class_names == [
        "mono_p0.00", "mono_p0.33", "mono_p0.67", "mono_p1.00",
        "poly_p0.00", "poly_p0.33", "poly_p0.67", "poly_p1.00",
    ]  # fmt: skip
    assert (len(elpv.train), len(elpv.val), len(elpv.test)) == (1704, 263, 657)
    assert elpv.train_counts.tolist() == [382, 76, 36, 204, 598, 115, 32, 261]
    assert ids_disjoint(elpv)
    assert len(set(elpv.train.ids) | set(elpv.val.ids) | set(elpv.test.ids)) == 2624


def test_elpv_thresholds_make_three_nonempty_groups(elpv):
    many, few = elpv.meta["many_threshold"], elpv.meta["few_threshold"]
    counts = elpv.train_counts
    n_many, n_few = int((counts > many).sum()), int((counts < few).sum())
    assert (n_many, len(counts) - n_many - n_few, n_few) == (4, 2, 2)


def test_elpv_images(elpv):
    img = elpv.train.load(0)
    assert img.size == (300, 300) and img.mode == "L"
    assert any(isinstance(t, RandomHorizontalFlip) for t in elpv.train.transform.transforms)
    item = elpv.test[5]
    assert item["image"].shape == (3, 32, 32) and item["label"] == elpv.test.labels[5] and item["valid"]


def test_elpv_split_is_seeded(elpv):
    same = build_data(DataConfig(name="elpv", split_seed=0))
    other = build_data(DataConfig(name="elpv", split_seed=1))
    assert same.train.ids == elpv.train.ids and same.test.ids == elpv.test.ids
    assert other.train.ids != elpv.train.ids and other.test.ids != elpv.test.ids
    assert other.train_counts.tolist() == elpv.train_counts.tolist()  # stratified: counts fixed
    assert other.train.fingerprint() != elpv.train.fingerprint()


# ----------------------------------------------------------------------------- MNIST


@pytest.fixture(scope="module")
def mnist_pool():
    pytest.importorskip("mnist")
    return mnist._load_mnist()


def test_mnist_pool_is_the_official_training_set(mnist_pool):
    (xp, yp), (xt, yt) = mnist_pool
    assert xp.shape == (60000, 28, 28) and xp.dtype == np.uint8 and xt.shape == (10000, 28, 28)
    assert np.bincount(yp).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(yt).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert xp.max() == 255 and xp.min() == 0


def test_mnist_balanced(mnist_pool):
    b = build_data(DataConfig(name="mnist"))
    assert (len(b.train), len(b.val), len(b.test)) == (54000, 6000, 10000)
    assert ids_disjoint(b) and b.train.ids[0] == "mnist/train/00000"
    assert b.train.load(0).size == (28, 28)
    # Digits are not mirror-symmetric: no flip in MNIST's training augmentation.
    assert b.meta["hflip"] is False
    assert not any(isinstance(t, RandomHorizontalFlip) for t in b.train.transform.transforms)


def test_mnist_lt_counts(mnist_pool):
    b = build_data(DataConfig(name="mnist-lt", imbalance_factor=100, split_seed=0))
    assert b.train_counts.tolist() == LT_COUNTS and len(b.train) == 12406
    assert np.bincount(b.val.labels).tolist() == [100] * 10
    assert len(b.test) == 10000 and ids_disjoint(b)
    # The training set is exactly the LDAM-style subsample of the 60k pool.
    chosen = subsample_long_tailed(mnist_pool[0][1], 100, seed=0, n_max=5000)
    assert b.train.ids == [f"mnist/train/{j:05d}" for j in chosen]
    assert b.meta["imbalance_factor"] == 100 and b.meta["n_max"] == 5000
    b10 = build_data(DataConfig(name="mnist-lt", imbalance_factor=10, split_seed=3))
    assert b10.train_counts.tolist() == long_tailed_counts(5000, 10, 10)
    assert b10.train.ids != b.train.ids


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_lt():
    if not Path(mnist.FASHION_MNIST_DIR).is_dir():
        pytest.skip("Fashion-MNIST not installed (make fashion-mnist)")
    b = build_data(DataConfig(name="fashion-mnist-lt"))
    assert b.train_counts.tolist() == LT_COUNTS and np.bincount(b.test.labels).tolist() == [1000] * 10
    assert b.class_names[0] == "tshirt_top" and ids_disjoint(b)
    full = build_data(DataConfig(name="fashion-mnist", val_fraction=0.2))
    assert full.train_counts.tolist() == [4800] * 10 and len(full.val) == 12000


def test_fashion_mnist_missing_says_make(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="make fashion-mnist") as e:
        build_data(DataConfig(name="fashion-mnist"))
    assert str(tmp_path) in str(e.value) and e.value.short == "not installed: make fashion-mnist"


def test_truncated_idx_file(tmp_path):
    (tmp_path / "x.idx").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02")
    with pytest.raises(UserError, match="truncated"):
        mnist._read_idx(tmp_path / "x.idx")


# ----------------------------------------------------------------------------- CIFAR


def fake_cifar10(parent: Path, per_class: int = 130, test_per_class: int = 3) -> Path:
    """A cifar-10-batches-py folder in the real format; image j has pixel (R, G, B) = (j % 256, class, 7)."""
    d = parent / "cifar-10-batches-py"
    d.mkdir(parents=True)
    labels = np.tile(np.arange(10), per_class)

    def batch(labels):
        n = len(labels)
        planes = np.zeros((n, 3, 32, 32), dtype=np.uint8)
        planes[:, 0] = (np.arange(n) % 256)[:, None, None]
        planes[:, 1] = np.asarray(labels)[:, None, None]
        planes[:, 2] = 7
        return {b"data": planes.reshape(n, 3072), b"labels": list(map(int, labels))}

    for k, part in enumerate(np.array_split(labels, 5), start=1):
        (d / f"data_batch_{k}").write_bytes(pickle.dumps(batch(part)))
    (d / "test_batch").write_bytes(pickle.dumps(batch(np.tile(np.arange(10), test_per_class))))
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return d


def test_cifar_needs_root():
    with pytest.raises(DataNotFoundError, match="cifar10 needs data.root.*cifar-10-batches-py") as e:
        build_data(DataConfig(name="cifar10-lt"))
    assert e.value.short == "needs data.root"


def test_cifar_missing_folder_names_it(tmp_path):
    for name, folder in [("cifar10", "cifar-10-batches-py"), ("cifar100-lt", "cifar-100-python")]:
        with pytest.raises(UserError, match=f"folder {folder}/ not found") as e:
            build_data(DataConfig(name=name, root=str(tmp_path)))
        assert str(tmp_path) in str(e.value)


def test_cifar10_from_pickles(tmp_path):
    d = fake_cifar10(tmp_path)
    b = build_data(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.1))
    assert b.class_names[:2] == ["airplane", "automobile"]
    assert b.train_counts.tolist() == [117] * 10 and len(b.val) == 130 and len(b.test) == 30
    img = b.test.load(13)  # planar RGB rows decoded as H x W x 3
    assert img.size == (32, 32) and img.mode == "RGB" and img.getpixel((5, 9)) == (13, 3, 7)
    assert b.test.labels[13] == 3
    # data.root may also be the pickle folder itself.
    assert build_data(DataConfig(name="cifar10", root=str(d))).train.ids == b.train.ids


def test_cifar10_lt_from_pickles(tmp_path, monkeypatch):
    fake_cifar10(tmp_path)
    monkeypatch.setitem(cifar.CIFAR_LT_VAL_PER_CLASS, "cifar10", 10)
    b = build_data(DataConfig(name="cifar10-lt", root=str(tmp_path), imbalance_factor=10))
    expected = long_tailed_counts(130, 10, 10)  # n_max = the pool's 130 images per class
    assert expected[:3] == [130, 100, 77] and expected[-1] == 13
    expected[0] = 120  # the head gives up its 10 validation images
    assert b.train_counts.tolist() == expected
    assert np.bincount(b.val.labels).tolist() == [10] * 10 and ids_disjoint(b)
    assert b.meta["n_max"] == 130
    with pytest.raises(UserError, match="imbalance_factor=200 leaves class 9 of cifar10-lt with no training"):
        build_data(DataConfig(name="cifar10-lt", root=str(tmp_path), imbalance_factor=200))


def test_cifar_corrupt_pickle(tmp_path):
    d = fake_cifar10(tmp_path)
    (d / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read CIFAR file") as e:
        build_data(DataConfig(name="cifar10", root=str(tmp_path)))
    assert "data_batch_3" in str(e.value)


# ----------------------------------------------------------------------------- listing


def test_describe_builtins(tmp_path):
    fake_cifar10(tmp_path)
    rows = {r["name"]: r for r in describe_builtins(root=str(tmp_path))}
    assert set(rows) == set(DATASETS.names())
    assert rows["cifar10"]["status"] == "ok" and rows["cifar10"]["test"] == 30
    assert rows["cifar100"]["status"].startswith("not found: ")
    assert rows["splitfile"]["status"] == "needs data.root and split files"
    assert rows["imagefolder"]["status"].startswith("error: image folder not found")
    plain = {r["name"]: r for r in describe_builtins()}
    assert plain["cifar10-lt"]["status"] == "needs data.root" and plain["cifar10-lt"]["num_classes"] == 10
    assert plain["imagefolder"]["status"] == "needs data.root"
    if plain["mnist-lt"]["status"] == "ok":
        assert plain["mnist-lt"]["train_class_counts"] == LT_COUNTS
    table = format_datasets_table(list(plain.values()))
    assert table.splitlines()[0].split()[:2] == ["dataset", "classes"]
    assert len(table.splitlines()) == len(plain) + 1 and "needs data.root" in table


def test_describe_reports_missing_packages(monkeypatch, tmp_path):
    def missing(cfg):
        raise DataNotFoundError("x is not installed", fix="pip install x")

    monkeypatch.setitem(DATASETS._items, "elpv", missing)
    monkeypatch.setattr(mnist, "FASHION_MNIST_DIR", str(tmp_path))
    rows = {r["name"]: r["status"] for r in describe_builtins()}
    assert rows["elpv"] == "not installed: pip install x"
    assert rows["fashion-mnist-lt"] == "not installed: make fashion-mnist"
