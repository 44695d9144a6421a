"""Metrics and tables against hand-computed examples."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lvmlt.evaluation import compute_metrics, format_table, group_classes, mean_std_table, write_csv

EXPECTED_KEYS = [
    "top1",
    "many",
    "medium",
    "few",
    "mean_class_acc",
    "per_class_acc",
    "macro_f1",
    "worst_class_acc",
    "hmean_class_acc",
    "gmean_class_acc",
    "ece",
    "nll",
    "group_sizes",
    "groups",
    "num_samples",
    "confusion",
]


def logits_for(preds: list[int], num_classes: int) -> np.ndarray:
    """Logits whose argmax is ``preds`` (5 on the predicted class, 0 elsewhere)."""
    out = np.zeros((len(preds), num_classes))
    out[np.arange(len(preds)), preds] = 5.0
    return out


# Hand example: 3 classes, 6 samples.
#   true  0 0 0 1 1 2
#   pred  0 0 1 1 0 1
LABELS = [0, 0, 0, 1, 1, 2]
PREDS = [0, 0, 1, 1, 0, 1]
TRAIN = [150, 50, 5]  # many, medium, few


def test_group_boundaries():
    assert group_classes([101, 100, 20, 19, 0]) == ["many", "medium", "medium", "few", "few"]
    assert group_classes([11, 10, 3, 2], many=10, few=3) == ["many", "medium", "medium", "few"]
    with pytest.raises(ValueError):
        group_classes([1, 2], many=10, few=20)
    # None means the default thresholds (callers pass an unset EvalConfig value through)
    assert group_classes([101, 100, 20, 19], many=None, few=None) == ["many", "medium", "medium", "few"]


def test_keys():
    m = compute_metrics(logits_for(PREDS, 3), np.array(LABELS), np.array(TRAIN))
    assert list(m) == EXPECTED_KEYS


def test_per_class_accuracy_and_groups_by_hand():
    m = compute_metrics(logits_for(PREDS, 3), np.array(LABELS), np.array(TRAIN))
    # class 0: 2 of 3 right, class 1: 1 of 2, class 2: 0 of 1; overall 3 of 6.
    assert m["per_class_acc"] == pytest.approx([200 / 3, 50.0, 0.0])
    assert m["top1"] == pytest.approx(50.0)
    assert m["many"] == pytest.approx(200 / 3)
    assert m["medium"] == pytest.approx(50.0)
    assert m["few"] == pytest.approx(0.0)
    assert m["mean_class_acc"] == pytest.approx((200 / 3 + 50 + 0) / 3)
    assert m["worst_class_acc"] == 0.0
    assert m["hmean_class_acc"] == 0.0  # a class at zero accuracy zeroes the harmonic mean
    assert m["gmean_class_acc"] == 0.0
    assert m["confusion"] == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    assert m["groups"] == ["many", "medium", "few"]
    assert m["group_sizes"] == {"many": 1, "medium": 1, "few": 1}
    assert m["num_samples"] == 6


def test_macro_f1_by_hand():
    m = compute_metrics(logits_for(PREDS, 3), np.array(LABELS), np.array(TRAIN))
    # F1 = 2TP / (2TP + FP + FN)
    # class 0: TP 2, FP 1 (a 1 predicted 0), FN 1 -> 4/6
    # class 1: TP 1, FP 2 (a 0 and a 2 predicted 1), FN 1 -> 2/5
    # class 2: TP 0 -> 0
    assert m["macro_f1"] == pytest.approx(100 * (4 / 6 + 2 / 5 + 0) / 3)


def test_hmean_and_gmean_without_zero():
    # per-class accuracy 100 and 50
    m = compute_metrics(logits_for([0, 1, 0], 2), np.array([0, 1, 1]), np.array([10, 10]))
    assert m["hmean_class_acc"] == pytest.approx(2 / (1 / 100 + 1 / 50))
    assert m["gmean_class_acc"] == pytest.approx(math.sqrt(100 * 50))


def _two_class_logits(confidences: list[float]) -> np.ndarray:
    # softmax([log p, log(1 - p)]) = [p, 1 - p]: class 0 predicted with confidence p
    return np.array([[math.log(p), math.log(1 - p)] for p in confidences])


def test_ece_and_nll_by_hand():
    conf = [0.85, 0.85, 0.55, 0.75]
    labels = np.array([0, 1, 0, 0])  # the second is wrong
    m = compute_metrics(_two_class_logits(conf), labels, np.array([10, 10]), ece_bins=10)
    # bins (0.8, 0.9]: 2 samples, acc 0.5, conf 0.85 -> 2/4 * 0.35
    #      (0.5, 0.6]: 1 sample, acc 1, conf 0.55    -> 1/4 * 0.45
    #      (0.7, 0.8]: 1 sample, acc 1, conf 0.75    -> 1/4 * 0.25
    assert m["ece"] == pytest.approx(100 * (0.5 * 0.35 + 0.25 * 0.45 + 0.25 * 0.25))
    # one bin: mean accuracy 0.75 equals mean confidence 0.75
    assert compute_metrics(_two_class_logits(conf), labels, np.array([10, 10]), ece_bins=1)[
        "ece"
    ] == pytest.approx(0.0, abs=1e-9)
    nll = -(math.log(0.85) + math.log(0.15) + math.log(0.55) + math.log(0.75)) / 4
    assert m["nll"] == pytest.approx(nll)


def test_ece_bins_include_their_upper_edge():
    # Confidence exactly 0.5 belongs to (0, 0.5], not (0.5, 1].
    logits = np.array([[0.0, 0.0], [math.log(0.6), math.log(0.4)]])
    m = compute_metrics(logits, np.array([0, 1]), np.array([10, 10]), ece_bins=2)
    # bin 1: correct at 0.5 -> |1 - 0.5|; bin 2: wrong at 0.6 -> |0 - 0.6|
    assert m["ece"] == pytest.approx(100 * (0.5 * 0.5 + 0.5 * 0.6))


def test_empty_group_is_none_and_absent_classes_are_excluded():
    # Every class has > 100 training images; class 2 has no test sample.
    m = compute_metrics(logits_for([0, 1, 1], 3), np.array([0, 1, 0]), np.array([500, 300, 200]))
    assert m["medium"] is None and m["few"] is None
    assert m["group_sizes"] == {"many": 3, "medium": 0, "few": 0}
    assert m["per_class_acc"] == [50.0, 100.0, None]
    assert m["mean_class_acc"] == pytest.approx(75.0)
    assert m["many"] == pytest.approx(75.0)
    assert m["worst_class_acc"] == pytest.approx(50.0)


def test_negative_labels_are_skipped_and_torch_inputs_work():
    logits = torch.tensor(logits_for([0, 1, 1, 0], 2), dtype=torch.bfloat16)
    m = compute_metrics(logits, torch.tensor([0, -1, 1, 1]), torch.tensor([30, 3]))
    assert m["num_samples"] == 3
    assert m["top1"] == pytest.approx(200 / 3)
    assert m["confusion"] == [[1, 0], [1, 1]]


def test_bad_inputs():
    with pytest.raises(ValueError, match="classes"):
        compute_metrics(np.zeros((2, 3)), np.array([0, 1]), np.array([5, 5]))
    with pytest.raises(ValueError, match="out of range"):
        compute_metrics(np.zeros((2, 2)), np.array([0, 2]), np.array([5, 5]))
    with pytest.raises(ValueError, match="no samples"):
        compute_metrics(np.zeros((1, 2)), np.array([-1]), np.array([5, 5]))


def test_format_table():
    rows = {
        "ce": {"many": 70.0, "medium": 40.5, "few": None, "top1": 55.254},
        "ldam": {"many": 65.126, "medium": 45.0, "few": 10.0, "top1": 50},
    }
    assert format_table(rows) == (
        "| run | many | medium | few | top1 |\n"
        "| --- | ---: | ---: | ---: | ---: |\n"
        "| ce | 70.00 | 40.50 | - | 55.25 |\n"
        "| ldam | 65.13 | 45.00 | 10.00 | 50 |\n"
    )
    assert format_table(rows, columns=("top1", "ece")) == (
        "| run | top1 | ece |\n| --- | ---: | ---: |\n| ce | 55.25 | - |\n| ldam | 50 | - |\n"
    )


def test_mean_std_table():
    rows = {
        "ce": [{"top1": 70.0, "few": None}, {"top1": 72.0, "few": None}],
        "bs": [{"top1": 60.0, "few": 12.5}],
    }
    # std over seeds with n - 1: values 70, 72 -> sqrt(2) = 1.41
    assert mean_std_table(rows, columns=("top1", "few")) == (
        "| run | n | top1 | few |\n"
        "| --- | ---: | ---: | ---: |\n"
        "| ce | 2 | 71.00 ± 1.41 | - |\n"
        "| bs | 1 | 60.00 | 12.50 |\n"
    )


def test_write_csv(tmp_path):
    m = compute_metrics(logits_for(PREDS, 3), np.array(LABELS), np.array(TRAIN))
    path = write_csv(tmp_path / "out" / "results.csv", {"ce": m, "bs": [m, {**m, "top1": 40.0}]})
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["ce", "bs", "bs"]
    assert float(table[0]["top1"]) == 50.0 and float(table[2]["top1"]) == 40.0
    assert table[0]["few"] == "0.0" and table[0]["num_samples"] == "6"
    assert "confusion" not in table[0] and "per_class_acc" not in table[0]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 40), c=st.integers(2, 6))
def test_metric_invariants(seed, n, c):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, c))
    labels = rng.integers(0, c, size=n)
    m = compute_metrics(logits, labels, rng.integers(0, 200, size=c))
    conf = np.array(m["confusion"])
    assert conf.sum() == n
    assert m["top1"] == pytest.approx(100 * np.trace(conf) / n)
    assert 0.0 <= m["ece"] <= 100.0 and m["nll"] >= 0.0
    acc = [a for a in m["per_class_acc"] if a is not None]
    assert m["mean_class_acc"] == pytest.approx(np.mean(acc))
    # harmonic <= geometric <= arithmetic
    assert m["hmean_class_acc"] <= m["gmean_class_acc"] + 1e-9
    assert m["gmean_class_acc"] <= m["mean_class_acc"] + 1e-9


def test_score_honours_the_runs_eval_thresholds_over_the_datasets():
    from lvmlt.config import EvalConfig
    from lvmlt.evaluation.metrics import score, thresholds

    logits = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    labels = np.array([0, 1, 2, -1])  # the skipped image is left out
    counts = np.array([150, 50, 10])
    meta = {"many_threshold": 100, "few_threshold": 20}
    m = score(logits, labels, counts, meta)
    assert m["thresholds"] == {"many": 100, "few": 20} and m["group_sizes"] == {"many": 1, "medium": 1, "few": 1}
    assert m["top1"] == 100.0
    ev = EvalConfig(many_threshold=40, few_threshold=None)
    m = score(torch.from_numpy(logits), labels, counts, meta, ev)
    assert m["thresholds"] == {"many": 40, "few": 20} and m["group_sizes"] == {"many": 2, "medium": 0, "few": 1}
    assert thresholds({}, None) == (100, 20)


def test_one_device_choice():
    from lvmlt.errors import UserError
    from lvmlt.hardware import pick_device

    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            pick_device("cuda")
