"""Precision chosen by the hardware, and the CPU inference engines of the frozen encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lvmlt import hardware
from lvmlt.data.base import DataBundle, ImageSplit
from lvmlt.encoders import build_encoder
from lvmlt.encoders.tinyvit import build_tiny_test
from lvmlt.errors import UserError
from lvmlt.features import ExtractConfig, FeatureStore, engines, extract
from lvmlt.training import runtime

ENGINES = [e for e in ("openvino", "onnxruntime") if engines.engine_version(e) is not None]


def _cpu(amx=False, bf16=False, isa="AVX2") -> hardware.CpuInfo:
    return hardware.CpuInfo(model="test CPU", cores=2, isa=isa, avx512=isa.startswith("AVX512"), amx=amx,
                            avx512_bf16=bf16)  # fmt: skip


@pytest.fixture
def flags(monkeypatch):
    """Set the CPU's capability flags (and a fast bf16 probe) for resolve_precision."""

    def set_flags(**kw):
        monkeypatch.setattr(hardware, "cpu_info", lambda: _cpu(**kw))
        monkeypatch.setattr(hardware, "bf16_probe_ratio", lambda n=256: 0.4)
        hardware._WARNED.clear()

    return set_flags


@pytest.mark.parametrize(
    "kw, want",
    [
        (dict(), "fp32"),  # AVX2 only: bf16 emulated
        (dict(isa="AVX512"), "fp32"),  # AVX-512 without BF16
        (dict(isa="AVX512", bf16=True), "bf16"),  # e.g. AMD Zen 4/5
        (dict(isa="AVX512", amx=True, bf16=True), "bf16"),  # Intel Xeon with AMX
    ],
)
def test_auto_precision_follows_the_cpu_flags(flags, kw, want):
    flags(**kw)
    assert hardware.resolve_precision("auto", "cpu") == want
    assert hardware.resolve_precision("fp32", "cpu") == "fp32"


def test_flags_without_speed_are_not_trusted(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: _cpu(isa="AVX512", bf16=True))
    monkeypatch.setattr(hardware, "bf16_probe_ratio", lambda n=256: 150.0)  # the guest emulates it
    assert hardware.resolve_precision("auto", "cpu") == "fp32"


def test_auto_precision_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.resolve_precision("auto", "cuda") == "fp32"
    assert hardware.resolve_precision("fp16", "cuda") == "fp16"


def test_explicit_emulated_bf16_works_and_warns_once(flags, capsys):
    flags()
    assert hardware.resolve_precision("bf16", "cpu", "optim.precision") == "bf16"
    assert hardware.resolve_precision("bf16", "cpu", "optim.precision") == "bf16"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.precision=bf16 is emulated" in err[0] and "slow" in err[0]
    flags(isa="AVX512", bf16=True)
    hardware.resolve_precision("bf16", "cpu")
    assert capsys.readouterr().err == ""  # native: nothing to say


def test_bad_precisions_are_user_errors():
    with pytest.raises(UserError, match="unknown"):
        hardware.resolve_precision("fp8", "cpu")
    with pytest.raises(UserError, match="CUDA"):
        hardware.resolve_precision("fp16", "cpu")


def test_autocast_resolves_auto(flags):
    flags()
    with runtime.autocast(torch.device("cpu"), "auto"):
        y = torch.randn(4, 4) @ torch.randn(4, 4)
    assert y.dtype == torch.float32
    flags(isa="AVX512", bf16=True)
    with runtime.autocast(torch.device("cpu"), "auto"):
        y = torch.randn(4, 4) @ torch.randn(4, 4)
    assert y.dtype == torch.bfloat16


def test_real_cpu_is_described():
    info = hardware.cpu_info()
    assert info.cores >= 1 and info.model
    assert ("bf16 native" in info.describe()) == info.native_bf16


def test_loader_workers_auto():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.loader_workers(3, cpu) == 3
    auto = runtime.loader_workers(-1, cpu)
    assert auto == (0 if hardware.cpu_info().cores <= 4 else min(4, hardware.cpu_info().cores // 4))
    assert 1 <= runtime.loader_workers(-1, cuda) <= 8


# --- engines ---------------------------------------------------------------------------
def test_choose_engine_rules():
    cpu, cuda, logs = torch.device("cpu"), torch.device("cuda"), []
    assert engines.choose_engine("auto", cuda, "bf16", False, logs.append) == "torch"
    with pytest.raises(UserError, match="CPU only"):
        engines.choose_engine("openvino", cuda, "fp32", False, logs.append)
    assert engines.choose_engine("auto", cpu, "fp32", True, logs.append) == "torch"  # compile is torch's
    with pytest.raises(UserError, match="float32 only"):
        engines.choose_engine("onnxruntime", cpu, "bf16", False, logs.append)
    if ENGINES:
        assert engines.choose_engine("auto", cpu, "fp32", False, logs.append) == ENGINES[0]
    assert logs == []


def test_a_missing_engine_package_falls_back_to_torch(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # import openvino now fails
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    logs: list[str] = []
    assert engines.choose_engine("openvino", torch.device("cpu"), "fp32", False, logs.append) == "torch"
    assert engines.choose_engine("auto", torch.device("cpu"), "fp32", False, logs.append) == "torch"
    assert len(logs) == 2 and all("cannot be imported" in s and "using torch" in s for s in logs)


def _bundle(n=6, size=40) -> DataBundle:
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((size, size + 8 * (i % 2))) * 255).astype(np.uint8)) for i in range(n)]
    labels = [i % 2 for i in range(n)]

    def split(name):
        return ImageSplit(name, [f"{name}/{i}" for i in range(n)], labels, lambda i: images[i].copy())

    return DataBundle("tiny", split("train"), split("val"), split("test"), ["a", "b"])


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_store_matches_torch_fp32(engine, tmp_path):
    bundle = _bundle()
    base = dict(encoder="tiny_test", precision="fp32", pca_images=3, levels=("stage2",))
    ref = extract(bundle, ExtractConfig(**base, engine="torch"), tmp_path / "torch", progress=False, log=lambda s: None)
    logs: list[str] = []
    got = extract(bundle, ExtractConfig(**base, engine=engine), tmp_path / engine, progress=False, log=logs.append)
    for split in ("train", "test"):
        a, b = ref.split(split), got.split(split)
        for x, y in [(a.vec, b.vec), (a.map, b.map), (a.levels["stage2"], b.levels["stage2"])]:
            for i in range(len(x)):
                assert _cos(x[i], y[i]) >= 0.999
    manifest = json.loads((tmp_path / engine / "manifest.json").read_text())
    assert manifest["engine"]["engine"] == engine and manifest["engine"]["cosine_to_torch_fp32"] >= 0.999
    assert manifest["provenance"]["precision"] == "fp32"
    assert any(f"engine {engine}" in s for s in logs)


@pytest.mark.skipif(not ENGINES, reason="no engine package installed")
def test_engine_cache_is_reused_and_rebuilt_on_change(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "cache_root", lambda: tmp_path / "cache")
    engine = "onnxruntime" if "onnxruntime" in ENGINES else ENGINES[0]  # the quicker to build
    logs: list[str] = []
    enc = build_encoder("tiny_test")
    first = engines.compile_encoder(enc, engine, "fp32", (), log=logs.append)
    again = engines.compile_encoder(build_encoder("tiny_test"), engine, "fp32", (), log=logs.append)
    assert not first.info["reused"] and again.info["reused"]
    assert first.info["cache_key"] == again.info["cache_key"]
    # a reused entry reports what building it took (the demo's export estimate), not its load
    assert 0 < first.info["build_seconds"] <= first.info["seconds"] and again.info["build_seconds"] == first.info["build_seconds"]
    assert len(list((tmp_path / "cache").iterdir())) == 1
    other_weights = engines.compile_encoder(build_tiny_test(seed=1), engine, "fp32", (), log=logs.append)
    other_size = engines.compile_encoder(build_encoder("tiny_test", 128), engine, "fp32", (), log=logs.append)
    keys = {first.info["cache_key"], other_weights.info["cache_key"], other_size.info["cache_key"]}
    assert len(keys) == 3 and not other_weights.info["reused"] and not other_size.info["reused"]
    x = build_encoder("tiny_test").preprocess([Image.new("L", (50, 40), 90)])
    with torch.inference_mode():
        want = build_encoder("tiny_test").forward_levels(x, ())["out"]
    assert _cos(again(x)["out"], want) >= 0.999
    # A damaged cache entry is rebuilt, not trusted.
    for f in (tmp_path / "cache").glob(f"tiny_test-64-fp32-{engine}-*/encoder.*"):
        f.write_bytes(b"damaged")
    rebuilt = engines.compile_encoder(build_encoder("tiny_test"), engine, "fp32", (), log=logs.append)
    assert not rebuilt.info["reused"] and any("rebuilding" in s for s in logs)


def test_a_store_records_the_resolved_precision_and_engine(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu": False)
    store = extract(_bundle(), ExtractConfig(encoder="tiny_test", pca_images=3), tmp_path / "s", progress=False,
                    log=lambda s: None)  # fmt: skip
    assert store.manifest["provenance"]["precision"] == "fp32"  # auto, resolved on this "CPU"
    assert store.manifest["engine"]["engine"] == (ENGINES[0] if ENGINES else "torch")
    # The same settings find the store complete; explicit bf16 is another store.
    extract(_bundle(), ExtractConfig(encoder="tiny_test", pca_images=3), tmp_path / "s", progress=False,
            log=lambda s: None)  # fmt: skip
    with pytest.raises(UserError, match="precision"):
        extract(_bundle(), ExtractConfig(encoder="tiny_test", pca_images=3, precision="bf16"), tmp_path / "s",
                progress=False, log=lambda s: None)  # fmt: skip
    assert isinstance(FeatureStore.open(tmp_path / "s"), FeatureStore)


@pytest.mark.weights
@pytest.mark.skipif(not ENGINES, reason="no engine package installed")
def test_real_mobilesam_256_engine_matches_torch_fp32():
    from lvmlt.encoders import cached_path

    if cached_path("mobilesam") is None:
        pytest.skip("MobileSAM weights are not cached (make weights)")
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((300, 300)) * 255).astype(np.uint8)) for _ in range(2)]
    ref_enc = build_encoder("mobilesam", 256)
    ref_enc.prepare("cpu", "fp32", channels_last=False)
    x = ref_enc.preprocess(images)
    with torch.inference_mode():
        want = ref_enc.forward_levels(x, ())["out"]
    for engine in ENGINES:
        precision = "bf16" if engine == "openvino" and hardware.native_bf16("cpu") else "fp32"
        compiled = engines.compile_encoder(build_encoder("mobilesam", 256), engine, precision, (), log=lambda s: None)
        got = compiled(x)["out"]
        for i in range(len(images)):
            assert _cos(got[i], want[i]) >= 0.999  # the map
            assert _cos(got[i].mean((1, 2)), want[i].mean((1, 2))) >= 0.999  # v_SAM


def test_auto_keeps_fp32_for_an_encoder_that_loses_accuracy_in_bf16(flags):
    from lvmlt.encoders.base import auto_precision
    from lvmlt.features.store import expected_provenance

    flags(isa="AVX512", bf16=True)
    assert auto_precision("mobilesam", "cpu") == "bf16"
    assert auto_precision("litemedsam", "cpu") == "fp32"  # its bf16 v_SAM: cosine 0.998
    assert expected_provenance(ExtractConfig(encoder="litemedsam", device="cpu"))["precision"] == "fp32"
    assert expected_provenance(ExtractConfig(encoder="mobilesam", device="cpu"))["precision"] == "bf16"
