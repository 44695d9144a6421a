"""Transforms: any PIL image -> normalised 3 x S x S float tensor."""

import numpy as np
import pytest
import torch
from PIL import Image

from lvmlt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from lvmlt.errors import UserError


def test_grayscale_becomes_three_equal_normalised_channels():
    img = Image.fromarray(np.full((28, 28), 255, dtype=np.uint8))  # white, mode "L"
    x = build_transform(32, train=False)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-5)
    assert torch.allclose(x.std(dim=(1, 2)), torch.zeros(3), atol=1e-5)


def test_rgb_values_and_resize():
    a = np.zeros((10, 20, 3), dtype=np.uint8)
    a[..., 0] = 255  # pure red, non-square: resized to a square
    x = build_transform(16, train=False)(Image.fromarray(a))
    assert x.shape == (3, 16, 16)
    red = (np.array([1.0, 0.0, 0.0]) - IMAGENET_MEAN) / IMAGENET_STD
    assert np.allclose(x[:, 8, 8].numpy(), red, atol=1e-5)


def test_eval_is_deterministic_and_train_augments():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    ev = build_transform(32, train=False)
    assert torch.equal(ev(img), ev(img))
    tr = build_transform(32, train=True, augment=True)
    torch.manual_seed(0)
    outs = [tr(img) for _ in range(8)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert torch.equal(build_transform(32, train=True, augment=False)(img), ev(img))


@pytest.mark.parametrize("mode", ["I;16", "F", "P", "RGBA", "1", "CMYK"])
def test_odd_modes(mode):
    assert build_transform(16, train=True)(Image.new(mode, (9, 7))).shape == (3, 16, 16)


def test_too_small_size_is_a_user_error():
    with pytest.raises(UserError, match="image_size"):
        build_transform(2, train=False)


def test_a_split_resizes_each_image_once_and_gives_the_same_tensors(monkeypatch):
    """The resized image is kept (RGB + resize run once per image); the augmentation is still
    drawn at every call, so a cached item equals an uncached one under the same seed."""
    from lvmlt.data import base
    from lvmlt.data.base import ImageSplit
    from lvmlt.errors import BadImageError

    imgs = (np.random.default_rng(0).random((6, 40, 40)) * 255).astype(np.uint8)
    loads = []

    def load(i):
        loads.append(i)
        if i == 5:
            raise BadImageError("cannot decode image", where="img5.png")
        return Image.fromarray(imgs[i])

    def items(split):
        torch.manual_seed(0)
        return [split[i]["image"] for i in range(5)]

    split = ImageSplit("train", [str(i) for i in range(6)], np.zeros(6, int), load, transform=build_transform(16, True))
    split.skip_bad_images = True
    first, again = items(split), items(split)
    assert loads == [0, 1, 2, 3, 4] and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], split[0]["image"])  # the crop and flip are drawn anew
    assert [split[5]["valid"], split[5]["valid"]] == [False, False] and loads.count(5) == 2  # a bad image is never kept
    monkeypatch.setattr(base, "RESIZED_CACHE_BYTES", 6 * 16 * 16 * 3 - 1)  # does not fit: decoded every time
    split.transform = build_transform(16, True)
    loads.clear()
    uncached = items(split)
    assert loads == [0, 1, 2, 3, 4] and all(torch.equal(a, b) for a, b in zip(first, uncached, strict=True))
    items(split)
    assert len(loads) == 10


@pytest.mark.parametrize("fits", [True, False])
def test_an_evaluation_split_converts_a_batch_together_bit_for_bit(monkeypatch, fits):
    """With the evaluation transform a split keeps uint8 images and converts a batch at once
    (``__getitems__``, what a DataLoader calls): equal bit for bit to the transform applied to
    each PIL image, a bad image still a placeholder, the DataLoader's batch the same."""
    from lvmlt.data import base
    from lvmlt.data.base import ImageSplit
    from lvmlt.errors import BadImageError
    from lvmlt.features.dataset import FeatureDataset
    from lvmlt.training.build import collate

    if not fits:
        monkeypatch.setattr(base, "RESIZED_CACHE_BYTES", 0)
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray((rng.random((30, 23, 3)) * 255).astype(np.uint8)), Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8))] * 3

    def load(i):
        if i == 4:
            raise BadImageError("cannot decode image", where="img4.png")
        return imgs[i]

    tf = build_transform(20, False)
    assert tf.fixed and not build_transform(20, True).fixed
    split = ImageSplit("test", [str(i) for i in range(6)], np.arange(6), load, transform=tf)
    split.skip_bad_images = True
    want = [tf(imgs[i]) for i in (0, 1, 2, 3, 5)]
    for _ in range(2):  # the second round reads the kept images (when they fit)
        got = split.__getitems__([0, 1, 2, 3, 4, 5])
        assert [g["valid"] for g in got] == [True] * 4 + [False, True]
        assert all(g["image"].dtype == torch.float32 and g["image"].shape == (3, 20, 20) for g in got)
        assert all(torch.equal(g["image"], w) for g, w in zip([got[i] for i in (0, 1, 2, 3, 5)], want, strict=True))
        assert torch.equal(split[5]["image"], want[4])
    assert (len(split._resized) if fits else split._resized) == (5 if fits else None)
    wrapped = FeatureDataset(split, {"sam_vec": np.arange(12, dtype=np.float32).reshape(6, 2)}, {"image", "sam_vec"}, 6)
    loader = torch.utils.data.DataLoader(wrapped, batch_size=4, collate_fn=collate)
    batch = next(iter(loader))
    assert torch.equal(batch["image"], torch.stack(want[:4])) and batch["sam_vec"][3].tolist() == [6.0, 7.0]
    assert batch["label"].tolist() == [0, 1, 2, 3]
