"""Images are decoded faithfully for training, extraction and prediction alike: deep images
scaled onto 8 bits (not clipped), EXIF orientation applied, every common mode to RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lvmlt.data.splitfile import split_from_image_folder
from lvmlt.data.transforms import build_transform
from lvmlt.inputs import cnn_input, open_image, sam_input, to_rgb


def _grey16(path, fmt="PNG"):
    """A 16-bit grey ramp of 32 levels spread over the full 16-bit range."""
    a = (np.arange(32 * 32).reshape(32, 32) % 32 * 2047).astype(np.uint16)
    Image.fromarray(a).save(path, fmt)
    return a


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("TIFF", "tif")])
def test_16_bit_images_keep_their_grey_levels(tmp_path, fmt, suffix):
    a = _grey16(tmp_path / f"g.{suffix}", fmt)
    rgb = np.asarray(to_rgb(open_image(tmp_path / f"g.{suffix}")))
    assert rgb.shape == (32, 32, 3)
    assert len(np.unique(rgb[..., 0])) == 32  # before: 97 % of the pixels at 255
    np.testing.assert_allclose(rgb[..., 0], np.round(a / 257.0), atol=1)


def test_float_and_32_bit_images_are_scaled(tmp_path):
    f = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(f).save(tmp_path / "f.tif")
    got = np.asarray(to_rgb(open_image(tmp_path / "f.tif")))[..., 0]
    np.testing.assert_allclose(got, np.round(f * 255), atol=1)
    wide = (np.arange(64).reshape(8, 8) * 1000 - 5000).astype(np.int32)  # negative and > 65535
    got = np.asarray(to_rgb(Image.fromarray(wide)))[..., 0]
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) == 64


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "LA", "1", "L"])
def test_common_modes_become_rgb(mode):
    img = Image.new("RGB", (10, 6), (200, 40, 90)).convert(mode)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (10, 6)
    assert cnn_input(img, 8).shape == (3, 8, 8) and sam_input(img, 16).shape == (3, 16, 16)


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10] = 255  # a white band on the left of a landscape image
    img = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    shown = np.asarray(open_image(tmp_path / "phone.jpg"))
    assert shown.shape[:2] == (40, 20)  # portrait, as a viewer shows it
    assert shown[:10].mean() > 200 and shown[-10:].mean() < 50  # the band is now on top


def test_training_and_extraction_read_16_bit_files_unclipped(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        _grey16(tmp_path / "train" / c / "x.png")
    split, _ = split_from_image_folder(tmp_path / "train", "train")
    img = split.load(0)
    x = build_transform(32, train=False)(img)  # the training / evaluation transform
    assert len(np.unique(x[0].numpy().round(4))) == 32
    from lvmlt.encoders.base import Preprocessing

    s = Preprocessing(32, "sam")(img)  # what extraction feeds the encoder
    assert len(np.unique(s[0].numpy().round(4))) == 32
