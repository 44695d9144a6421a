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
    # same global batches; BatchNorm statistics per rank make the runs differ slightly
    assert abs(a["test"]["top1"] - b["test"]["top1"]) <= 10.0, (a["test"]["top1"], b["test"]["top1"])
    assert b["test"]["top1"] > 60
