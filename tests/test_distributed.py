"""torchrun with 2 gloo processes on the CPU gives the single-process result (within tolerance)."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image


def _dataset(root):
    """A small real-file split-file dataset: 3 classes of noisy 16 px images."""
    rng = np.random.default_rng(0)
    for split, per in (("train", (40, 24, 8)), ("val", (6, 6, 6)), ("test", (10, 10, 10))):
        lines = []
        for c, n in enumerate(per):
            for i in range(n):
                a = (rng.random((16, 16)) * 90 + c * 70).astype(np.uint8)
                a[c * 5 : c * 5 + 4] = 255  # a class-specific bar: learnable in a few steps
                rel = f"{split}/{c}_{i}.png"
                (root / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(a).save(root / rel)
                lines.append(f"{rel} {c}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def _args(root, out, name):
    return [
        "train", "data.name=splitfile", f"data.root={root}", f"data.train_split={root}/train.txt",
        f"data.val_split={root}/val.txt", f"data.test_split={root}/test.txt", "data.image_size=16",
        "data.batch_size=16", "model.backbone=resnet8", "optim.epochs=4", "optim.lr=0.05",
        "optim.precision=fp32", "proto.enabled=true", "threads=1", f"out_dir={out}", f"run_name={name}", "--quiet",
    ]


def test_torchrun_gloo_matches_single_process(tmp_path):
    _dataset(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "lvmlt", *_args(tmp_path / "data", tmp_path, "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "lvmlt", *_args(tmp_path / "data", tmp_path, "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    a = json.loads((tmp_path / "one/metrics.json").read_text())
    b = json.loads((tmp_path / "two/metrics.json").read_text())
    # sharded evaluation is gathered back into split order on every rank
    p = np.load(tmp_path / "two/predictions.npz")
    assert p["test_labels"].tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert b["test"]["num_samples"] == 30
    # one log and one history, written by rank 0 only
    assert len((tmp_path / "two/history.jsonl").read_text().splitlines()) == 4
    # Same global batches; BatchNorm statistics per rank (8 images) make the runs differ slightly:
    # the first epoch's loss within 15 % (measured 8 %), and both learn the task (chance: 33 %).
    # Their test top-1 on 30 images is not compared: it was 100 / 93.3 here and 100 / 86.7 with
    # the kernels held to AVX2.
    first = [json.loads((tmp_path / n / "history.jsonl").read_text().splitlines()[0])["train/total"] for n in ("one", "two")]
    assert abs(first[0] - first[1]) <= 0.15 * first[0], first
    assert a["test"]["top1"] >= 80 and b["test"]["top1"] >= 80, (a["test"]["top1"], b["test"]["top1"])


def _extract_args(root, out):
    return [
        "extract", "--dataset", "splitfile", "--out", str(out), "--encoder", "tiny_test", "--quiet",
        f"data.root={root}", f"data.train_split={root}/train.txt", f"data.val_split={root}/val.txt",
        f"data.test_split={root}/test.txt", "precision=fp32", "chunk_size=7", "batch_size=3",
        "pca_images=9", "threads=1",
    ]


def _torchrun(args, port):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         "-m", "lvmlt", *args], env=env, capture_output=True, text=True, timeout=300,
    )


def _same_store(a, b):
    assert a.split_names == b.split_names
    for name in a.split_names:
        for key in ("vec", "map"):
            x = np.asarray(getattr(a.split(name), key), np.float32)
            y = np.asarray(getattr(b.split(name), key), np.float32)
            assert x.shape == y.shape
            # equal within float16 rounding (batches differ, so kernels may round differently)
            np.testing.assert_allclose(x, y, rtol=2e-3, atol=2e-3 * float(np.abs(x).max()))


def test_torchrun_extraction_matches_single_process_and_resumes_per_shard(tmp_path, monkeypatch):
    import pytest

    from lvmlt.errors import UserError
    from lvmlt.features import pipeline
    from lvmlt.features.cli import run_extract
    from lvmlt.features.store import FeatureStore

    data = tmp_path / "data"
    _dataset(data)
    args = _extract_args(data, tmp_path / "one")
    overrides = args[args.index("--quiet") + 1 :]
    single = run_extract(tmp_path / "one", dataset="splitfile", overrides=overrides, progress=False,
                         encoder="tiny_test")

    two = _torchrun(_extract_args(data, tmp_path / "two"), 29519)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("feature store") == 1  # rank 0 reports, once
    sharded = FeatureStore.open(tmp_path / "two")
    _same_store(single, sharded)
    assert sharded.manifest["map"]["fit_vectors"] == single.manifest["map"]["fit_vectors"]
    np.testing.assert_allclose(sharded.pca().component, single.pca().component, atol=1e-6)

    # A single-process run killed after 5 of its 19 chunks, resumed by 2 processes.
    written = []
    real_write = pipeline._write_chunk

    def crashing_write(*a, **kw):
        if len(written) == 5:
            raise KeyboardInterrupt("killed")
        real_write(*a, **kw)
        written.append(a[2])

    monkeypatch.setattr(pipeline, "_write_chunk", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        run_extract(tmp_path / "part", dataset="splitfile", overrides=overrides, progress=False,
                    encoder="tiny_test")
    with pytest.raises(UserError, match="incomplete"):
        FeatureStore.open(tmp_path / "part")
    resumed = _torchrun([*_extract_args(data, tmp_path / "part"), "--resume"], 29521)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    _same_store(single, FeatureStore.open(tmp_path / "part"))
