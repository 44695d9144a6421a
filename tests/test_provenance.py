"""A run is re-read only with what it was made from: all its epochs, its data, its feature store.

Each case was silently wrong before: ``lvmlt evaluate`` of a killed run wrote metrics as if
finished; of changed test images re-scored other images over the old metrics; from another
folder it rebuilt the run from whatever store its relative ``fusion.store`` path named there;
``--resume`` after training images were added continued on other data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import killed_at
from lvmlt.cli import main


def _dataset(root, per_class=(16, 8, 6)):
    rng = np.random.default_rng(0)
    for split, per in (("train", per_class), ("val", (4, 4, 4)), ("test", (5, 5, 5))):
        for c, n in enumerate(per):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray((rng.random((20, 20)) * 90 + c * 60).astype(np.uint8)).save(d / f"{i:02d}.png")


def _args(root, out, *extra):
    return ["train", "data.name=imagefolder", f"data.root={root}", "data.image_size=16", "data.batch_size=8",
            "model.backbone=resnet8", "optim.epochs=3", "optim.precision=fp32", "threads=1", f"out_dir={out}",
            "run_name=r", "--quiet", *extra]


def _killed(data, out, monkeypatch, capsys, at: int):
    """Train with a kill at the start of epoch ``at``; the run directory keeps what finished."""
    with killed_at(monkeypatch, at):
        assert main(_args(data, out)) != 0  # "interrupted; finished epochs are saved"
    capsys.readouterr()
    return out / "r"


def _files(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.suffix in (".json", ".npz")}


@pytest.fixture()
def data(tmp_path):
    _dataset(tmp_path / "data")
    return tmp_path / "data"


def test_an_unfinished_run_is_evaluated_only_when_asked_and_marked(data, tmp_path, monkeypatch, capsys):
    run = _killed(data, tmp_path / "runs", monkeypatch, capsys, at=2)
    before = _files(run)
    assert main(["evaluate", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"lvmlt: error: {run} stopped after 2 of its 3 epochs")
    assert _files(run) == before and not (run / "metrics.json").exists()
    assert main(["evaluate", str(run), "--quiet", "--allow-unfinished"]) == 0
    assert json.loads((run / "metrics.json").read_text())["unfinished"] == {"epochs_done": 2, "epochs": 3}


def test_changed_test_images_are_refused_and_nothing_is_rewritten(data, tmp_path, capsys):
    assert main(_args(data, tmp_path / "runs")) == 0
    run = tmp_path / "runs" / "r"
    assert main(["evaluate", str(run), "--quiet"]) == 0  # unchanged data: fine
    before = _files(run)
    shutil.copy(data / "test" / "c0" / "00.png", data / "test" / "c0" / "99.png")
    assert main(["evaluate", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the test split (16 images) is not the one" in err
    assert _files(run) == before


def test_resume_refuses_added_training_images(data, tmp_path, monkeypatch, capsys):
    _killed(data, tmp_path / "runs", monkeypatch, capsys, at=1)
    shutil.copy(data / "train" / "c2" / "00.png", data / "train" / "c2" / "50.png")
    assert main(["train", "--resume", str(tmp_path / "runs" / "r"), "--quiet"]) == 2
    assert "the train split (31 images) is not the one" in capsys.readouterr().err


def test_evaluate_reads_the_store_the_run_recorded_not_one_at_the_same_relative_path(data, tmp_path, monkeypatch,
                                                                                    capsys):
    def extract(where, size):
        assert main(["extract", "--dataset", "imagefolder", "--out", "store", "--encoder", "tiny_test", "--quiet",
                     f"--img-size={size}", f"data.root={data}", "precision=fp32", "engine=torch", "pca_images=4",
                     "threads=1"]) == 0

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    monkeypatch.chdir(a)
    extract(a, 64)
    assert main(_args(data, tmp_path / "runs", "fusion.store=store", "fusion.latent=true", "optim.epochs=1")) == 0
    run = tmp_path / "runs" / "r"
    want = json.loads((run / "metrics.json").read_text())["test"]["top1"]
    monkeypatch.chdir(b)
    extract(b, 128)  # another store at the same relative path
    assert main(["evaluate", str(run), "--quiet"]) == 0
    assert json.loads((run / "metrics.json").read_text())["test"]["top1"] == want
    assert json.loads((run / "model.json").read_text())["features"]["img_size"] == 64
    # the run's own store gone: the store found at the relative path differs, and is refused
    shutil.rmtree(a / "store")
    before = _files(run)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not the one" in err and "img_size 128 instead of 64" in err
    assert _files(run) == before


def test_resume_takes_the_run_spelled_absolute_or_relative(data, tmp_path, monkeypatch, capsys):
    """--resume RUN was refused when the path was spelled absolute for a run made relative."""
    monkeypatch.chdir(tmp_path)
    _killed(data, Path("runs"), monkeypatch, capsys, at=1)
    assert main(["train", "--resume", str(tmp_path / "runs" / "r"), "--quiet"]) == 0
    assert json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())["best_epoch"] >= 0
