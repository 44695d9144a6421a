"""lvmlt predict / export: a trained run classifies new images exactly as it scored its test
split, a bundle does the same without torch, and adaptation recovers a shifted class mix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lvmlt.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("cat", "dog", "eel")


def _dataset(root):
    """A small ImageFolder of 3 named classes (28 / 12 / 6 training images) of 24 x 20 px
    images: a class-specific bar and brightness, learnable in a few steps."""
    rng = np.random.default_rng(0)
    for split, per in (("train", (28, 12, 6)), ("val", (6, 6, 6)), ("test", (8, 8, 8))):
        for c, n in enumerate(per):
            d = root / split / CLASSES[c]
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = (rng.random((24, 20)) * 90 + c * 60).astype(np.uint8)
                a[c * 7 : c * 7 + 4] = 255
                Image.fromarray(a).save(d / f"{i:02d}.png")


def _train_args(root, out, name, *extra):
    return [
        "train", "data.name=imagefolder", f"data.root={root}", "data.image_size=16", "data.batch_size=16",
        "model.backbone=resnet8", "optim.epochs=2", "optim.lr=0.05", "optim.precision=fp32", "threads=1",
        "eval.many_threshold=20", "eval.few_threshold=8", f"out_dir={out}", f"run_name={name}", "--quiet", *extra,
    ]


#: Every kind of model `lvmlt train` makes, beside the CNN: (name, overrides; {store} and {cnn} filled in).
KINDS = {
    "fused": ["fusion.store={store}", "fusion.map=true", "fusion.latent=true"],
    "probe": ["fusion.store={store}", "system=sam_probe"],
    "synthetic": ["fusion.store={store}", "system=synthetic_probe", "fusion.sam_norm=cl2n"],
    "scilt": ["fusion.store={store}", "system=scilt"],
    "lws": ["stage.init_from={cnn}", "stage.lws=true", "optim.epochs=1"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A CNN run and one run of each other kind on a tiny_test feature store with two levels."""
    tmp = tmp_path_factory.mktemp("deploy")
    data = tmp / "data"
    _dataset(data)
    store = tmp / "store"
    assert main(["extract", "--dataset", "imagefolder", "--out", str(store), "--encoder", "tiny_test", "--quiet",
                 f"data.root={data}", "precision=fp32", "engine=torch", "pca_images=8", "threads=1",
                 "levels=[stage3,stage4]"]) == 0
    out = {"data": data, "store": store, "tmp": tmp, "cnn": tmp / "runs" / "cnn"}
    assert main(_train_args(data, tmp / "runs", "cnn")) == 0
    for kind, extra in KINDS.items():
        extra = [e.format(store=store, cnn=out["cnn"]) for e in extra]
        assert main(_train_args(data, tmp / "runs", kind, *extra)) == 0
        out[kind] = tmp / "runs" / kind
    return out


def _test_images(data):
    return [str(data / "test" / c / f"{i:02d}.png") for c in CLASSES for i in range(8)]


@pytest.mark.parametrize("kind", ["cnn", *KINDS])
def test_predict_run_equals_its_test_logits(runs, kind):
    from lvmlt import rundir
    from lvmlt.deploy.predictor import predict
    from lvmlt.deploy.run_model import RunModel

    model = RunModel(runs[kind], engine="torch", log=lambda s: None)
    assert model.spec["classes"] == list(CLASSES)
    assert (kind in ("cnn", "lws")) == (not model.sam_keys)
    res = predict(model, _test_images(runs["data"]), progress=False, out=str(runs["tmp"] / f"{kind}.csv"))
    saved = rundir.read_predictions(runs[kind], ("test_logits", "test_labels"))
    assert saved["test_labels"].tolist() == [0] * 8 + [1] * 8 + [2] * 8  # the same order
    np.testing.assert_allclose(res["logits"], saved["test_logits"], rtol=1e-4, atol=1e-4)
    rows = (runs["tmp"] / f"{kind}.csv").read_text().splitlines()
    assert rows[0].startswith("path,status,class,probability,group,top_k")
    assert len(rows) == 25
    first = rows[1].split(",")
    assert first[1] == "ok" and first[2] in CLASSES and first[4] in ("many", "medium", "few")


def test_predict_skips_bad_images_and_lists_them(runs, tmp_path, capsys):
    good = _test_images(runs["data"])[:3]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(runs["cnn"]), *good, str(tmp_path / "broken.png"), str(tmp_path / "gone.png"),
                 "--out", str(out), "--quiet"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in recs[:3]] == ["ok"] * 3
    assert recs[3]["status"].startswith("error: ") and recs[4]["status"].startswith("error: ")
    assert len(recs[0]["top_k"]) == 3 and abs(sum(t["probability"] for t in recs[0]["top_k"]) - 1) < 1e-5
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.png" in err
    assert main(["predict", str(runs["cnn"]), *good, str(tmp_path / "broken.png"), "--strict", "--quiet"]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_predict_empty_folder_and_old_run_are_one_line(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(runs["cnn"]), str(tmp_path / "empty"), "--quiet"]) == 2
    assert "no images found" in capsys.readouterr().err
    import shutil

    old = tmp_path / "old"
    shutil.copytree(runs["cnn"], old)
    (old / "model.json").unlink()
    assert main(["predict", str(old), *_test_images(runs["data"])[:2], "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lvmlt evaluate" in err
    assert main(["evaluate", str(old), "--quiet"]) == 0  # adds the description
    capsys.readouterr()
    assert main(["predict", str(old), *_test_images(runs["data"])[:2], "--quiet"]) == 0


def test_adaptation_recovers_a_known_prior():
    """Synthetic label shift: a calibrated 3-class model, target prior (0.1, 0.2, 0.7) against a
    training prior of (0.6, 0.3, 0.1); MLLS and BBSE land within 0.08 L1 of the truth, MAPLS
    (which shrinks towards uniform by design) within 0.15, all much closer than the training prior."""
    from lvmlt.deploy.predictor import adapt

    rng = np.random.default_rng(0)
    means = np.eye(3) * 3.0

    def sample(prior, n):
        y = rng.choice(3, size=n, p=prior)
        x = means[y] + rng.normal(size=(n, 3))
        # logits of the Bayes posterior under the source prior
        logits = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1) + np.log(source)
        return logits, y

    source = np.array([0.6, 0.3, 0.1])
    val_logits, val_labels = sample(source, 3000)
    target = np.array([0.1, 0.2, 0.7])
    logits, y = sample(target, 3000)
    counts = np.bincount(val_labels, minlength=3)
    spec = {"classes": ["a", "b", "c"],
            "calibration": {"temperature": 1.0, "bias": [0.0, 0.0, 0.0], "val_label_counts": counts.tolist()}}
    for method, tol in (("mlls", 0.08), ("mapls", 0.15), ("bbse", 0.08)):
        est = adapt(spec, logits, method, val_logits, val_labels)
        err = np.abs(est.prior - target).sum()
        assert err < tol, (method, est.prior)
        assert err < 0.5 * np.abs(source - target).sum()
        assert (est.adapted(logits).argmax(1) == y).mean() > (logits.argmax(1) == y).mean()
        lo, hi = np.array(est.info["prior_interval_90"]).T  # a bootstrap interval around the estimate
        assert (lo <= est.prior + 1e-9).all() and (est.prior <= hi + 1e-9).all() and (hi - lo).max() < 0.1
        assert est.info["warnings"] == []  # 3,000 images of a real shift: nothing to warn about
    # 20 images of no class in particular: each estimate wanders between resamples or moves most labels
    noise = rng.normal(scale=2.0, size=(20, 3))
    for method in ("mlls", "mapls", "bbse"):
        warnings = adapt(spec, noise, method, val_logits, val_labels).info["warnings"]
        assert warnings and all("\n" not in w for w in warnings), method
        assert all(w.startswith(("the estimated mix is unstable", "adapting changed")) for w in warnings)
    from lvmlt.errors import UserError

    with pytest.raises(UserError, match="needs at least 20 images"):
        adapt(spec, logits[:19], "mapls", val_logits, val_labels)


def test_export_bundle_runs_without_torch_and_matches(runs, tmp_path):
    from lvmlt.deploy.export import export_bundle

    bundle = tmp_path / "bundle"
    res = export_bundle(runs["fused"], bundle, check_images=4, log=lambda s: None)
    assert res["same_top1"] and res["max_prob_diff"] <= 1e-4
    images = _test_images(runs["data"])
    code = (
        "import sys, json, numpy as np\n"
        "from lvmlt.deploy.bundle import BundleModel\n"
        "from lvmlt.deploy.predictor import predict\n"
        f"m = BundleModel({str(bundle)!r}, engine='onnxruntime', log=lambda s: None)\n"
        f"r = predict(m, {images!r}, progress=False, out={str(tmp_path / 'b.csv')!r})\n"
        f"np.save({str(tmp_path / 'b.npy')!r}, r['logits'])\n"
        "from lvmlt.cli import main\n"  # the command line too
        f"assert main(['predict', {str(bundle)!r}, {images[0]!r}, '--quiet', '--engine', 'onnxruntime']) == 0\n"
        f"assert main(['predict', {str(bundle)!r}, *{images!r}, '--quiet', '--engine', 'onnxruntime', "
        f"'--adapt', 'mapls', '--out', {str(tmp_path / 'a.csv')!r}]) == 0\n"  # adaptation too
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    from lvmlt.deploy.predictor import predict
    from lvmlt.deploy.run_model import RunModel

    ref = predict(RunModel(runs["fused"], engine="torch", precision="fp32", log=lambda s: None), images,
                  progress=False, show=False)["logits"]
    got = np.load(tmp_path / "b.npy")
    assert (got.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-3)
    assert (tmp_path / "a.prior.json").is_file()


def test_adaptation_warns_when_it_moves_most_labels():
    from lvmlt.deploy.adaptation import adaptation_warnings

    classes, prior = ["a", "b"], np.array([0.5, 0.5])
    tight = (np.array([0.45, 0.45]), np.array([0.55, 0.55]))
    raw, adapted = np.zeros(10, int), np.array([1] * 6 + [0] * 4)
    (w,) = adaptation_warnings(classes, prior, *tight, raw, adapted)
    assert w.startswith("adapting changed the predicted class of 60% of the images")
    assert adaptation_warnings(classes, prior, *tight, raw, raw) == []


def test_the_predictor_still_names_what_its_parts_define():
    """predict's sources, stream, rows and adaptation live in their own modules; the names
    callers import from lvmlt.deploy.predictor are the same objects."""
    from lvmlt.deploy import adaptation, predictor, rows, sources, stream

    for module in (adaptation, rows, sources, stream):
        for name in set(predictor.__all__) & set(vars(module)):
            assert getattr(predictor, name) is getattr(module, name), name
    assert {"predict", "adapt", "softmax", "class_groups", "ADAPT_METHODS", "min_adapt_images",
            "Writer", "iter_sources", "logits_of"} <= set(predictor.__all__)


@pytest.mark.parametrize("kind", ["probe", "synthetic", "scilt", "lws"])
def test_export_checks_every_kind_against_torch(runs, tmp_path, kind):
    from lvmlt.deploy.export import export_bundle

    res = export_bundle(runs[kind], tmp_path / "b", check_images=3, log=lambda s: None)
    assert res["checked"] == 3 and res["same_top1"] and res["max_prob_diff"] <= 1e-4
    spec = json.loads((tmp_path / "b" / "model.json").read_text())
    assert spec["system"] == {"probe": "sam_probe", "synthetic": "synthetic_probe", "scilt": "scilt",
                              "lws": "cnn/lws"}[kind]


def test_bundle_with_a_changed_byte_or_a_missing_file_is_refused(runs, tmp_path, capsys):
    from lvmlt.deploy.export import export_bundle

    bundle = tmp_path / "bundle"
    export_bundle(runs["cnn"], bundle, check_images=2, log=lambda s: None)
    image = _test_images(runs["data"])[0]
    assert main(["predict", str(bundle), image, "--quiet"]) == 0
    capsys.readouterr()
    target = bundle / "classifier.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    assert main(["predict", str(bundle), image, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "classifier.onnx" in err and "sha256" in err
    (bundle / "classes.json").unlink()
    assert main(["predict", str(bundle), image, "--quiet"]) == 2
    assert "classes.json" in capsys.readouterr().err


@pytest.mark.parametrize("fails_at", ["compile", "first inference"])
def test_auto_precision_falls_back_to_float32_where_bf16_kernels_are_missing(tmp_path, monkeypatch, fails_at):
    """OpenVINO reads bf16 off the CPU's flags; with its kernels held to an older instruction
    set (ONEDNN_MAX_CPU_ISA) a bf16 graph fails to compile or to run, and auto then runs float32."""
    ov = pytest.importorskip("openvino")
    import torch

    from lvmlt.deploy import bundle

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.MaxPool2d(2)).eval()
    path = tmp_path / "g.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(path), input_names=["image"], dynamo=False)
    real, hints = ov.Core.compile_model, []

    class Broken:  # compiles, then fails at its first inference
        inputs = ()

        def create_infer_request(self):
            return self

        def infer(self, feeds):
            raise RuntimeError("[CPU] Convolution node with name MaxPool is not initialized")

    def compile_model(self, model, device, config=None):
        hints.append(config["INFERENCE_PRECISION_HINT"])
        if config["INFERENCE_PRECISION_HINT"] != "bf16":
            return real(self, model, device, config)
        if fails_at == "compile":
            raise RuntimeError("Supported primitive descriptors list is empty for node: MaxPool")
        return Broken()

    monkeypatch.setattr(ov.Core, "compile_model", compile_model)
    monkeypatch.setattr(bundle, "openvino_precision", lambda precision: "bf16")
    run = bundle._session(path, "openvino", 1, "auto")
    x = np.ones((1, 3, 8, 8), np.float32)
    with torch.inference_mode():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run({"image": x})[0], want, rtol=1e-5, atol=1e-5)
    assert hints == ["bf16", "f32"]
    with pytest.raises(RuntimeError, match="MaxPool"):  # bf16 asked for: no silent float32
        bundle._session(path, "openvino", 1, "bf16")({"image": x})


@pytest.mark.parametrize("case", ["store", "thesis", "extra file", "foreign manifest"])
def test_overwrite_replaces_only_a_bundle_lvmlt_wrote(runs, tmp_path, case, capsys):
    """--overwrite deleted a feature store and a folder with a thesis beside a manifest.json once."""
    from lvmlt.deploy.export import export_bundle

    out = tmp_path / "out"
    if case == "store":
        shutil.copytree(runs["store"], out)  # a feature store also holds a manifest.json
    elif case == "thesis":
        out.mkdir()
        (out / "manifest.json").write_text('{"title": "my thesis"}')
        (out / "thesis.tex").write_text("\\chapter{One}")
    else:
        export_bundle(runs["cnn"], out, check_images=1, log=lambda s: None)
        if case == "extra file":
            (out / "notes.txt").write_text("mine")
        else:
            m = json.loads((out / "manifest.json").read_text())
            (out / "manifest.json").write_text(json.dumps({**m, "format": 99}))
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    args = ["export", str(runs["cnn"]), "--out", str(out), "--overwrite"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"lvmlt: error: --overwrite replaces only a bundle lvmlt wrote, and {out}")
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before


def test_overwrite_replaces_a_bundle(runs, tmp_path):
    from lvmlt.deploy.export import export_bundle

    out = tmp_path / "out"
    export_bundle(runs["cnn"], out, check_images=1, log=lambda s: None)
    (out / "classifier.onnx").write_bytes(b"damaged")  # ours, though damaged: may be replaced
    export_bundle(runs["cnn"], out, check_images=1, overwrite=True, log=lambda s: None)
    assert (out / "classifier.onnx").stat().st_size > 100


def test_predict_topk_out_and_list_mistakes_are_one_line(runs, tmp_path, capsys):
    images = _test_images(runs["data"])[:3]
    cnn = str(runs["cnn"])
    assert main(["predict", cnn, *images, "--quiet", "--topk", "0"]) == 2
    assert capsys.readouterr().err.strip() == "lvmlt: error: --topk 0 must be at least 1; e.g. --topk 3"
    assert main(["predict", cnn, *images, "--quiet", "--topk", "2"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 3 and all(line.count(", ") == 1 for line in table)  # the stdout table lists the top 2
    assert main(["predict", cnn, *images, "--topk", "99", "--out", str(tmp_path / "a.csv")]) == 0
    assert "--topk 99: the model has 3 classes; listing all 3" in capsys.readouterr().err
    (tmp_path / "dir.csv").mkdir()
    assert main(["predict", cnn, *images, "--quiet", "--out", str(tmp_path / "dir.csv")]) == 2
    assert f"--out {tmp_path / 'dir.csv'} is a folder" in capsys.readouterr().err
    lst = tmp_path / "list.csv"
    lst.write_text("\n".join(images) + "\n")
    before = lst.read_bytes()
    assert main(["predict", cnn, "--from", str(lst), "--quiet", "--out", str(lst)]) == 2
    assert "is the --from list being read" in capsys.readouterr().err and lst.read_bytes() == before


def test_the_printed_mix_is_one_short_line_at_any_class_count():
    from lvmlt.deploy.cli import describe_mix

    few = {"classes": ["a", "b"], "train_counts": [150, 5], "thresholds": {"many": 100, "few": 20}}
    assert describe_mix(few, np.array([0.25, 0.75])) == "a 0.250, b 0.750"
    n = 1000
    counts = np.r_[np.full(100, 500), np.full(900, 10)]
    spec = {"classes": [f"class{k}" for k in range(n)], "train_counts": counts.tolist(),
            "thresholds": {"many": 100, "few": 20}}
    prior = np.full(n, 0.5 / 999)
    prior[7] = 0.5
    line = describe_mix(spec, prior)
    assert len(line) < 300 and line.startswith("largest class7 0.500") and "by group many" in line


def test_sigterm_during_predict_leaves_no_temporary_file(runs, tmp_path):
    """A stopped `predict --out` left `.x.csv.tmp-PID` behind; SIGTERM now ends it as Ctrl-C does."""
    import signal
    import time

    many = tmp_path / "many"
    many.mkdir()
    src = _test_images(runs["data"])[0]
    for i in range(1500):  # enough that the command is still classifying when it is stopped
        shutil.copy(src, many / f"{i:04d}.png")
    out = tmp_path / "p.csv"
    proc = subprocess.Popen([sys.executable, "-m", "lvmlt", "predict", str(runs["cnn"]), str(many), "--out", str(out),
                             "--batch-size", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".p.csv*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert not out.exists() and not list(tmp_path.glob(".p.csv*")) and not list(tmp_path.glob("p.csv.*"))


@pytest.mark.parametrize("case, message", [
    ("format", "has description format 99; this lvmlt reads format 1"),
    ("size", "image.size 200000 must be an integer from 8 to 4096"),
    ("counts", "key 'train_counts' is missing or not a list"),
    ("classes", "classes.json: 2 class names for 3 classes in model.json"),
    ("unlisted", "which its manifest does not list"),
    ("not json", "model.json cannot be read as JSON"),
])
def test_a_bundle_is_checked_as_a_whole_in_one_line(runs, tmp_path, case, message, capsys):
    """Each case was a traceback, a MemoryError per image, or accepted as it was."""
    from lvmlt.deploy.bundle import MANIFEST
    from lvmlt.deploy.export import export_bundle
    from lvmlt.rundir import file_sha256

    bundle = tmp_path / "b"
    export_bundle(runs["cnn"], bundle, check_images=1, log=lambda s: None)
    spec = json.loads((bundle / "model.json").read_text())
    if case == "format":
        spec["format"] = 99
    elif case == "size":
        spec["image"]["size"] = 200000
    elif case == "counts":
        del spec["train_counts"]
    if case == "classes":
        (bundle / "classes.json").write_text(json.dumps(["cat", "dog"]))
    elif case == "unlisted":
        (bundle / "extra.onnx_data").write_bytes(b"\0" * 10)
    elif case == "not json":
        (bundle / "model.json").write_text("{not json")
    else:
        (bundle / "model.json").write_text(json.dumps(spec))
    manifest = json.loads((bundle / MANIFEST).read_text())  # re-hashed, as someone editing it would
    for name in manifest["files"]:
        manifest["files"][name] = {"bytes": (bundle / name).stat().st_size, "sha256": file_sha256(bundle / name)}
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    assert main(["predict", str(bundle), _test_images(runs["data"])[0], "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_predict_encodes_with_the_engine_and_precision_its_store_was_extracted_with(runs):
    """predict RUN ran at 0.55x the extraction's rate: it encoded in another precision than the
    store. The choice is what a test can hold (not a timing): the same engine and precision."""
    from lvmlt.deploy.run_model import RunModel
    from lvmlt.features.store import read_manifest

    said = []
    model = RunModel(runs["fused"], log=said.append)
    manifest = read_manifest(runs["store"])
    assert model.runner.engine == manifest["engine"]["engine"]
    assert model.encoder_precision == manifest["provenance"]["precision"]
    assert any(s.startswith(f"encoding with {model.runner.engine} ({model.encoder_precision})") for s in said)


def test_a_file_name_that_is_not_utf8_is_classified_and_written_back_as_its_bytes(runs, tmp_path, capsys):
    """predict --out x.csv lost all 400 rows on one such name (UnicodeEncodeError after classifying)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    src = _test_images(runs["data"])[0]
    odd = os.fsencode(folder) + b"/caf\xe9.png"  # latin-1, not UTF-8
    shutil.copy(src, odd)
    shutil.copy(src, folder / "plain.png")
    out = tmp_path / "p.csv"
    assert main(["predict", str(runs["cnn"]), str(folder), "--quiet", "--out", str(out)]) == 0
    raw = out.read_bytes()
    assert b"caf\xe9.png" in raw and b"plain.png" in raw and raw.count(b"\n") == 3  # header + 2 rows
    assert main(["predict", str(runs["cnn"]), str(folder), "--quiet"]) == 0
    assert "caf\ufffd.png" in capsys.readouterr().out


#: What the torch-free core needs (pyproject.toml's dependencies and theirs), by site-packages entry.
CORE_ENTRIES = ("numpy", "numpy.libs", "numpy-", "PIL", "pillow.libs", "pillow-", "yaml", "_yaml", "pyyaml-", "tqdm",
                "tqdm-", "onnxruntime", "onnxruntime-", "flatbuffers", "flatbuffers-", "packaging", "packaging-",
                "google", "protobuf-")


def test_the_wheel_installs_without_torch_and_runs_a_bundle(runs, tmp_path):
    """pip install lvmlt needed torch and torchvision (6.4 GB); a bundle then ran only after
    --no-deps and missing packages found through tracebacks. The wheel's core is torch-free:
    built here, installed into a fresh venv whose only other packages are the core's
    dependencies (linked from this environment, so no download), it answers --help and
    classifies from a bundle, and `import torch` fails there."""
    import sysconfig
    import venv

    from lvmlt.deploy.export import export_bundle

    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info into its source tree
    shutil.copytree(repo / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, capture_output=True)
    (wheel,) = dist.glob("lvmlt-*.whl")
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    deps = tmp_path / "deps"
    deps.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in sorted(here.iterdir()):
        if entry.name in CORE_ENTRIES or (entry.name.endswith(".dist-info") and entry.name.startswith(
                tuple(e for e in CORE_ENTRIES if e.endswith("-")))):
            (deps / entry.name).symlink_to(entry)
    target = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    Path(target, "core-deps.pth").write_text(str(deps) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True)
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, env=env)
    assert no_torch.returncode != 0
    check = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    lvmlt = str(env_dir / "bin" / "lvmlt")
    assert subprocess.run([lvmlt, "--help"], capture_output=True, env=env).returncode == 0
    bundle = tmp_path / "bundle"
    export_bundle(runs["cnn"], bundle, check_images=1, log=lambda s: None)
    out = subprocess.run([lvmlt, "predict", str(bundle), *_test_images(runs["data"])[:2], "--quiet"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0 and len(out.stdout.strip().splitlines()) == 2, out.stderr
    train = subprocess.run([lvmlt, "train", "data.name=elpv"], capture_output=True, text=True, env=env)
    assert train.returncode == 2 and train.stderr.strip() == (
        "lvmlt: error: this command needs torch, which is not installed; pip install 'lvmlt[train]' brings it")


def test_two_predicts_to_one_out_file_the_second_stops(runs, tmp_path, capsys):
    """Two `predict --out same.csv` both reported success (the last rename won)."""
    from lvmlt import locks

    out = tmp_path / "same.csv"
    image = _test_images(runs["data"])[0]
    with locks.hold_file(out, "--out"):  # another process writing it
        assert main(["predict", str(runs["cnn"]), image, "--quiet", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"lvmlt: error: --out {out} is being written by pid {os.getpid()}")
    assert main(["predict", str(runs["cnn"]), image, "--quiet", "--out", str(out)]) == 0
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["same.csv"]  # no lock file left


def test_a_latin1_list_finds_its_files_and_a_binary_list_is_one_line(runs, tmp_path, capsys):
    """A latin-1 --from list was a UnicodeDecodeError traceback."""
    src = _test_images(runs["data"])[0]
    shutil.copy(src, os.fsencode(tmp_path) + b"/caf\xe9.png")
    (tmp_path / "list.txt").write_bytes(b"caf\xe9.png\n")
    assert main(["predict", str(runs["cnn"]), "--from", str(tmp_path / "list.txt"), "--quiet"]) == 0
    assert "caf\ufffd.png" in capsys.readouterr().out
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\n")
    assert main(["predict", str(runs["cnn"]), "--from", str(tmp_path / "bin.txt"), "--quiet"]) == 2
    assert "line 1 holds a NUL byte" in capsys.readouterr().err


def test_an_image_reached_twice_is_noted(runs, tmp_path, capsys):
    """An image reached twice through a symlink was classified twice without a note."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(_test_images(runs["data"])[0], folder / "a.png")
    os.symlink(folder / "a.png", folder / "b.png")
    assert main(["predict", str(runs["cnn"]), str(folder), "--quiet"]) == 0
    out = capsys.readouterr()
    assert len(out.out.strip().splitlines()) == 2  # both names answered, in order
    assert f"{folder / 'b.png'} is the file {folder / 'a.png'} again" in out.err
