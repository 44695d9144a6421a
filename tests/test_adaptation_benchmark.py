"""benchmarks/adaptation.py on a tiny fabricated run: a well-separated 3-class problem whose
logits are the Bayes posterior under a long-tailed source prior."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import adaptation  # noqa: E402

TRAIN_COUNTS = np.array([600, 300, 100])
MEANS = np.eye(3) * 2.0


def _sample(rng, labels):
    x = MEANS[labels] + rng.normal(size=(len(labels), 3))
    source = TRAIN_COUNTS / TRAIN_COUNTS.sum()
    return (-0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(-1) + np.log(source)).astype(np.float32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from lvmlt.rundir import write_config, write_description, write_predictions

    rng = np.random.default_rng(0)
    val_labels = rng.choice(3, size=1000, p=TRAIN_COUNTS / TRAIN_COUNTS.sum())
    test_labels = np.repeat(np.arange(3), 200)
    test_labels[:3] = -1  # skipped images: left out of the pool
    d = tmp_path_factory.mktemp("runs") / "toy-ce"
    d.mkdir()
    counts = np.bincount(val_labels, minlength=3)
    spec = {"classes": ["a", "b", "c"],
            "calibration": {"temperature": 1.0, "bias": [0.0] * 3, "val_label_counts": counts.tolist()}}
    write_config(d, {"config": {"data": {"name": "toy"}, "model": {"backbone": "none"}, "loss": {"name": "ce"},
                                "optim": {"epochs": 1}}, "seed": 0})
    write_description(d, spec, {"dummy": np.zeros(1)})
    write_predictions(d, {"val_logits": _sample(rng, val_labels), "val_labels": val_labels,
                          "test_logits": _sample(rng, np.maximum(test_labels, 0)), "test_labels": test_labels,
                          "train_counts": TRAIN_COUNTS})
    return d


def test_priors():
    present = np.array([True, True, True])
    assert np.allclose(adaptation.target_prior("reversed", TRAIN_COUNTS, present, 0), [0.1, 0.3, 0.6])
    assert np.allclose(adaptation.target_prior("reversed", np.array([3, 9, 1]), present, 0), [3 / 13, 1 / 13, 9 / 13])
    assert np.allclose(adaptation.target_prior("train", TRAIN_COUNTS, np.array([True, False, True]), 0),
                       [6 / 7, 0, 1 / 7])
    d0, d1 = (adaptation.target_prior("dirichlet", TRAIN_COUNTS, present, s) for s in (0, 1))
    assert np.isclose(d0.sum(), 1) and not np.allclose(d0, d1)
    p = adaptation.target_prior("uniform", TRAIN_COUNTS, np.array([True, False, True]), 0)
    assert np.allclose(p, [0.5, 0, 0.5])


def test_study_adapts_on_the_reversed_tail(run_dir):
    spec, preds = adaptation.load_run(run_dir)
    assert len(preds["labels"]) == 597 and preds["labels"].min() >= 0
    rows = adaptation.study(spec, preds, n=400, seeds=range(3), sweep_ns=(10, 400), sweep_reps=4)
    shift = [r for r in rows if r["study"] == "shift"]
    assert len(shift) == 4 * 3 * 4  # priors x seeds x (bcts + 3 methods)
    assert {(r["prior"], r["method"]) for r in shift} == {(p, m) for p in adaptation.PRIORS
                                                          for m in adaptation.ROW_METHODS}
    sweep = [r for r in rows if r["study"] == "sweep"]
    assert len(sweep) == 2 * 3 * 4 * 3 and {r["n"] for r in sweep} == {10, 400}

    def mean(prior, method, key, study="shift", **kw):
        return np.mean([r[key] for r in rows if r["study"] == study and r["prior"] == prior and r["method"] == method
                        and all(r[k] == v for k, v in kw.items())])

    for m in adaptation.METHODS:
        assert mean("reversed", m, "adapted_top1") > mean("reversed", m, "raw_top1") + 2
        # towards the uniform prior the adapted posterior is the balanced one: mean class accuracy rises
        assert mean("uniform", m, "adapted_mca") > mean("uniform", m, "raw_mca")
        assert mean("reversed", m, "l1_est") < 0.5 * mean("reversed", m, "l1_train")
    # calibration alone is the identity here (T = 1, b = 0)
    assert mean("reversed", "bcts", "adapted_top1") == mean("reversed", "bcts", "raw_top1")
    # 400 images: MAPLS's estimate beats the training prior on both shifted priors
    for p in adaptation.SHIFTED:
        assert adaptation.crossing(rows, p, "l1") in (10, 400)
        assert adaptation.crossing(rows, p, "top1") in (10, 400)
    table = adaptation.shift_table(rows)
    assert len(table) == 2 + 4 * 4 and table[2].startswith("| uniform | bcts |")
    lines = adaptation.verdict(rows)
    assert lines[0].startswith("On the reversed tail, adapted vs raw: mapls beats")


def test_main_writes_md_and_csv(run_dir, tmp_path):
    out = tmp_path / "res"
    assert adaptation.main(["--runs", str(run_dir), "--out", str(out), "--n", "300", "--seeds", "2",
                            "--sweep-reps", "2"]) == 0
    text = (out / "adaptation.md").read_text()
    assert "CPU: " in text and "## toy-ce (3 classes, N = 300)" in text and "(597 images)" in text
    assert "Supported rule: at least **max(" in text
    with open(out / "adaptation.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert tuple(got[0]) == adaptation.CSV_FIELDS
    assert len(got) == 4 * 2 * 4 + 7 * 3 * 2 * 3
