"""Feature store: PCA conventions, stored values, resume, provenance checks, bad images, CLI."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lvmlt.data.base import DataBundle, ImageSplit
from lvmlt.encoders import build_encoder
from lvmlt.errors import BadImageError, UserError
from lvmlt.features import ExtractConfig, FeatureStore, extract
from lvmlt.features import pipeline as extract_mod
from lvmlt.features.pca import CovarianceAccumulator, fix_sign, image_pca_map

# fp32 so that values can be compared exactly; tiny chunks so that resume has work to skip.
# engine=torch: these tests count and patch the torch encoder's calls (engines: test_engines.py).
CFG = ExtractConfig(
    encoder="tiny_test", precision="fp32", engine="torch", chunk_size=3, batch_size=2, pca_images=4
)


def _split(name: str, n: int, seed: int, sizes=None) -> ImageSplit:
    rng = np.random.default_rng(seed)
    shapes = sizes or [(48, 48)] * n
    imgs = [Image.fromarray(rng.integers(0, 256, shapes[i], dtype=np.uint8)) for i in range(n)]
    return ImageSplit(
        name, [f"{name}/{i:03d}.png" for i in range(n)], rng.integers(0, 3, n), lambda i: imgs[i].copy()
    )


@pytest.fixture
def bundle() -> DataBundle:
    return DataBundle(
        "synthetic", _split("train", 8, 0), _split("val", 4, 1), _split("test", 5, 2), ["a", "b", "c"]
    )


def _run(bundle, out, cfg=CFG, **kw):
    return extract(bundle, cfg, out, progress=False, log=lambda s: None, **kw)


# ------------------------------------------------------------------------- PCA
def test_fix_sign_makes_the_largest_loading_positive():
    w = torch.tensor([0.1, -0.9, 0.3])
    assert torch.equal(fix_sign(w), -w)
    assert torch.equal(fix_sign(-w), -w)


def test_global_pca_is_the_first_principal_component():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) * torch.tensor([5.0, 2, 1, 1, 0.5, 0.1]) + 3.0
    acc = CovarianceAccumulator(6)
    for part in x.split(128):  # streaming in chunks gives the same basis as all at once
        acc.add(part)
    basis = acc.fit()
    centred = x - x.mean(0)
    u, s, vt = torch.linalg.svd(centred, full_matrices=False)
    top = fix_sign(vt[0])
    np.testing.assert_allclose(basis.component, top.numpy(), atol=1e-8)
    assert basis.component[np.abs(basis.component).argmax()] > 0  # the sign convention
    assert basis.variance == pytest.approx(float(s[0] ** 2 / (len(x) - 1)))
    # Projecting C x h x w maps gives each cell's coordinate on the first component.
    fmap = x.T.reshape(6, 20, 25).float()
    proj = basis.project(fmap)
    sign = float(torch.sign(top @ vt[0]))
    expected = (u[:, 0] * s[0] * sign).reshape(1, 20, 25).float()
    torch.testing.assert_close(proj, expected, atol=1e-3, rtol=1e-4)


def test_per_image_pca_matches_svd():
    g = torch.Generator().manual_seed(1)
    fmap = torch.randn(8, 5, 5, generator=g) * torch.arange(1, 9).view(8, 1, 1)
    m = image_pca_map(fmap)
    x = fmap.reshape(8, 25).T.double()
    x = x - x.mean(0)
    u, s, vt = torch.linalg.svd(x, full_matrices=False)
    expected = (x @ fix_sign(vt[0])).float().reshape(1, 5, 5)
    torch.testing.assert_close(m, expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------- stored values
def test_store_holds_pooled_vectors_and_projected_maps(bundle, tmp_path):
    store = _run(bundle, tmp_path / "s")
    enc = build_encoder("tiny_test")
    basis = store.pca()
    for name, split in bundle.splits().items():
        s = store.split(name)
        assert s.vec.shape == (len(split), 256) and s.vec.dtype == np.float16
        assert s.map.shape == (len(split), 1, 4, 4)
        with torch.inference_mode():
            out = enc(enc.preprocess([split.load(i) for i in range(len(split))]))
        np.testing.assert_allclose(s.vec, out.mean(dim=(2, 3)).numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(s.map, basis.project(out).numpy(), rtol=2e-3, atol=5e-3)
    m = store.manifest
    assert m["complete"] and m["map"]["pca"] == "global" and m["map"]["fit_split"] == "train"
    assert m["splits"]["val"]["fingerprint"] == bundle.val.fingerprint()
    assert m["encoder"]["preprocessing"].startswith("RGB uint8, longest side -> 64")
    assert not (tmp_path / "s" / "chunks").exists()


def test_footprint_with_defaults_is_under_10_kib_per_image():
    from lvmlt.encoders import resolve_geometry

    _, grid = resolve_geometry("mobilesam", 1024)
    assert 256 * 2 + grid * grid * 2 <= 10 * 1024  # vec + 64 x 64 map in float16


def test_padding_is_left_out_of_vectors_and_maps(tmp_path):
    wide = DataBundle(
        "wide", _split("train", 4, 0, [(16, 48)] * 4), _split("val", 1, 1), _split("test", 1, 2), ["a"]
    )
    cfg = ExtractConfig(encoder="tiny_test", precision="fp32", pca="per_image")
    store = _run(wide, tmp_path / "s", cfg)
    enc = build_encoder("tiny_test")
    img = wide.train.load(0)  # 48 x 16 -> 64 x 22 input: the top 2 of 4 rows hold the image
    with torch.inference_mode():
        out = enc(enc.preprocess([img]))[0]
    np.testing.assert_allclose(
        store.split("train").vec[0], out[:, :2, :].mean(dim=(1, 2)).numpy(), rtol=2e-3, atol=2e-3
    )
    assert store.split("train").map.shape == (4, 1, 4, 4)  # the 2 x 4 valid map, resized square


def test_levels_are_stored_pooled(bundle, tmp_path):
    cfg = ExtractConfig(encoder="tiny_test", precision="fp32", levels=("stage2", "stage4"), pca="per_image")
    store = _run(bundle, tmp_path / "s", cfg)
    levels = store.split("test").levels
    assert levels["stage2"].shape == (5, 64) and levels["stage4"].shape == (5, 320)


def test_stored_split_pickles_paths_not_arrays(bundle, tmp_path):
    s = _run(bundle, tmp_path / "s").split("train")
    _ = s.vec
    clone = pickle.loads(pickle.dumps(s))
    assert clone._arrays == {} and np.array_equal(clone.vec, s.vec)


# ------------------------------------------------------------------------- resume
def _counting(enc):
    calls = []
    forward = enc.forward_levels

    def counted(x, levels=None):
        calls.extend([1] * x.shape[0])
        return forward(x, levels)

    enc.forward_levels = counted
    return calls


def test_resume_after_a_crash_recomputes_nothing_written(bundle, tmp_path, monkeypatch):
    full = _run(bundle, tmp_path / "full")

    # Crash right after the 3rd chunk is written (train has 3 chunks of <= 3 samples).
    written = []
    real_write = extract_mod._write_chunk

    def crashing_write(*args, **kw):
        if len(written) == 3:
            raise KeyboardInterrupt("killed")
        real_write(*args, **kw)
        written.append(args[2])

    monkeypatch.setattr(extract_mod, "_write_chunk", crashing_write)
    enc = build_encoder("tiny_test")
    first_calls = _counting(enc)
    with pytest.raises(KeyboardInterrupt):
        _run(bundle, tmp_path / "part", encoder=enc)
    assert len(first_calls) == 4 + 8 + 3  # PCA sample, all of train, val's first chunk (unwritten)
    with pytest.raises(UserError, match="incomplete"):
        FeatureStore.open(tmp_path / "part")
    with pytest.raises(UserError, match="--resume"):
        _run(bundle, tmp_path / "part", resume=False)

    monkeypatch.setattr(extract_mod, "_write_chunk", real_write)
    enc = build_encoder("tiny_test")
    calls = _counting(enc)
    resumed = _run(bundle, tmp_path / "part", encoder=enc)
    assert len(calls) == 4 + 5  # all of val, all of test: no PCA refit, no train chunk redone
    for name in bundle.splits():
        for key in ("vec", "map"):
            assert np.array_equal(getattr(resumed.split(name), key), getattr(full.split(name), key))
    assert resumed.manifest["map"]["basis_sha256"] == full.manifest["map"]["basis_sha256"]


def test_the_pca_sample_is_encoded_once_and_stored_as_if_encoded_again(bundle, tmp_path, monkeypatch):
    cfg = dataclasses.replace(CFG, batch_size=1)  # image by image, as the compiled engines run
    enc = build_encoder("tiny_test")
    calls = _counting(enc)
    once = _run(bundle, tmp_path / "once", cfg, encoder=enc)
    assert len(calls) == 8 + 4 + 5  # every image once: the 4 sample images' outputs were kept
    monkeypatch.setattr(extract_mod, "KEEP_SAMPLE_BYTES", 0)  # nothing fits: the sample is encoded again
    enc = build_encoder("tiny_test")
    calls = _counting(enc)
    twice = _run(bundle, tmp_path / "twice", cfg, encoder=enc)
    assert len(calls) == 4 + 8 + 4 + 5
    for name in bundle.splits():
        for key in ("vec", "map"):
            assert np.array_equal(getattr(once.split(name), key), getattr(twice.split(name), key))


def test_the_store_writer_plans_the_work_and_travels_to_other_ranks(bundle, tmp_path):
    """StoreWriter.open checks or creates the store and lists the chunks to do; under torchrun
    rank 0 hands it to the other ranks, so it pickles as plain data."""
    from lvmlt.features.store import expected_provenance
    from lvmlt.features.writer import StoreWriter

    enc = build_encoder("tiny_test")
    provenance = expected_provenance(CFG, enc.weights_sha256) | {"weights_sha256": enc.weights_sha256}

    def open_writer(root):
        return StoreWriter.open(root, bundle, CFG, enc, provenance, resume=True, overwrite=False, log=lambda s: None)

    writer = open_writer(tmp_path / "s")
    assert {k: [c for c, _ in v] for k, v in writer.pending.items()} == {"train": [0, 1, 2], "val": [0, 1], "test": [0, 1]}
    assert writer.pending["test"][1] == (1, [3, 4]) and not writer.manifest["complete"]
    clone = pickle.loads(pickle.dumps(writer))
    assert clone.manifest == writer.manifest and clone.pending == writer.pending and clone.root == writer.root
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a store")
    with pytest.raises(UserError, match="not empty"):
        open_writer(tmp_path / "other")
    _run(bundle, tmp_path / "s")  # resumes what the writer created
    assert open_writer(tmp_path / "s") is None  # complete and intact: nothing to do


def test_a_complete_matching_store_is_reused(bundle, tmp_path):
    _run(bundle, tmp_path / "s")
    enc = build_encoder("tiny_test")
    calls = _counting(enc)
    _run(bundle, tmp_path / "s", encoder=enc)
    assert calls == []


def test_manifest_not_marked_complete_refuses_to_load(bundle, tmp_path):
    _run(bundle, tmp_path / "s")
    path = tmp_path / "s" / "manifest.json"
    m = json.loads(path.read_text())
    m["complete"] = False
    path.write_text(json.dumps(m))
    with pytest.raises(UserError, match="incomplete"):
        FeatureStore.open(tmp_path / "s")
    with pytest.raises(UserError, match="no feature store"):
        FeatureStore.open(tmp_path / "nothing")


# ------------------------------------------------------------------------- provenance
def test_provenance_mismatch_names_the_field(bundle, tmp_path):
    store = _run(bundle, tmp_path / "s")
    store.check(bundle)  # the trainer's call: data only
    store.check(bundle, CFG)
    cases = [
        (ExtractConfig(encoder="tiny_test_vit", precision="fp32"), "encoder"),
        (ExtractConfig(encoder="tiny_test", precision="fp32", pca_images=4, map_size=8), "map_size"),
        (ExtractConfig(encoder="tiny_test", precision="fp32", pca_images=4, img_size=128), "resolution"),
        (ExtractConfig(encoder="tiny_test", precision="bf16", pca_images=4), "precision"),
    ]
    for cfg, field in cases:
        with pytest.raises(UserError, match=field):
            store.check(bundle, cfg)
    with pytest.raises(UserError, match="weights"):
        store.check(bundle, CFG, expected_sha256="ab" * 32)
    # One label changed in the validation split: its fingerprint no longer matches.
    val = bundle.val
    changed = ImageSplit("val", val.ids, np.r_[(val.labels[0] + 1) % 3, val.labels[1:]], val.load)
    other = DataBundle("synthetic", bundle.train, changed, bundle.test, bundle.class_names)
    with pytest.raises(UserError, match="split 'val'"):
        store.check(other)
    # Extracting into the same directory with other settings is refused too.
    with pytest.raises(UserError, match="map_size"):
        _run(bundle, tmp_path / "s", ExtractConfig(encoder="tiny_test", precision="fp32", map_size=2))


def test_invalid_settings_are_user_errors():
    with pytest.raises(UserError, match="pca"):
        ExtractConfig(pca="kernel")
    with pytest.raises(UserError, match="batch_size"):
        ExtractConfig(batch_size=-1)


# ------------------------------------------------------------------------- bad images
def _files_bundle(tmp_path) -> DataBundle:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(p)
        paths.append(p)
    paths[4].write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    paths[4] = paths[4].rename(tmp_path / "img" / "broken.png")
    ids = [f"img/{p.name}" for p in paths]

    def split(name, idx):
        return ImageSplit(
            name, [ids[i] for i in idx], np.zeros(len(idx)), lambda j: Image.open(paths[idx[j]])
        )

    return DataBundle("files", split("train", [0, 1, 2, 3, 4]), split("val", [5]), split("test", [0]), ["x"])


def test_corrupt_image_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(BadImageError, match="broken.png"):
        _run(_files_bundle(tmp_path), tmp_path / "s", ExtractConfig(encoder="tiny_test", pca_images=2))


def test_skip_bad_images_stores_zeros_and_lists_them(tmp_path):
    cfg = ExtractConfig(encoder="tiny_test", precision="fp32", skip_bad_images=True, pca_images=5)
    store = _run(_files_bundle(tmp_path), tmp_path / "s", cfg)
    train = store.split("train")
    assert list(train.bad) == [4] and "broken.png" in train.bad[4]
    assert not train.vec[4].any() and not train.map[4].any() and train.vec[3].any()
    assert "broken.png" in store.manifest["splits"]["train"]["bad"]["4"]


# ------------------------------------------------------------------------- CLI
def test_cli_extract_and_weights(tmp_path, capsys):
    from lvmlt.cli import main

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("cat", "dog"):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (tmp_path / "run.yaml").write_text(
        f"data:\n  name: imagefolder\n  root: {tmp_path / 'data'}\n  val_fraction: 0.34\n"
    )
    out = tmp_path / "feats"
    argv = [
        "extract",
        "--data-config",
        str(tmp_path / "run.yaml"),
        "--encoder",
        "tiny_test",
        "--out",
        str(out),
    ]
    # key=value overrides may sit between options, as users type them
    assert main([*argv[:-2], "pca=per_image", *argv[-2:], "--quiet", "precision=fp32"]) == 0
    assert "feature store" in capsys.readouterr().out
    store = FeatureStore.open(out)
    assert store.manifest["provenance"]["pca"] == "per_image"
    assert store.manifest["provenance"]["precision"] == "fp32"
    with pytest.raises(SystemExit):
        main([*argv, "--bogus"])
    assert store.config["pca"] == "per_image" and sum(len(store.split(s)) for s in store.split_names) == 16
    assert main([*argv, "--quiet", "pca=global"]) == 2  # settings differ from the store in DIR
    assert "pca" in capsys.readouterr().err
    assert main(["weights", "list"]) == 0
    assert "mobilesam" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_extraction_matches_eager(bundle, tmp_path):
    eager = _run(bundle, tmp_path / "eager")
    compiled = _run(bundle, tmp_path / "compiled", dataclasses.replace(CFG, compile=True))
    for name in bundle.splits():
        np.testing.assert_allclose(compiled.split(name).vec, eager.split(name).vec, rtol=1e-2, atol=1e-2)
