"""End to end on real data through the CLI: train, evaluate, resume (MNIST-LT, tiny budget)."""

import json

import pytest

from lvmlt.cli import main

pytest.importorskip("mnist")

ARGS = [
    "--config", "configs/mnist-lt.yaml", "model.backbone=resnet8", "optim.epochs=2", "optim.warmup_epochs=0",
    "optim.max_steps_per_epoch=30", "data.batch_size=64", "optim.lr=0.05", "data.sampler=class_balanced",
]


def test_train_evaluate_resume_on_mnist_lt(tmp_path, capsys):
    out = [f"out_dir={tmp_path}", "run_name=e2e", "--quiet"]
    assert main(["train", *ARGS, *out]) == 0
    table = capsys.readouterr().out
    assert "| e2e" in table and "many" in table
    rd = tmp_path / "e2e"
    m = json.loads((rd / "metrics.json").read_text())
    # 60 class-balanced steps of 64 MNIST images beat chance (10 %) by far
    assert m["test"]["top1"] > 20
    assert m["test"]["num_samples"] == 10000
    assert m["test"]["group_sizes"] == {"many": 8, "medium": 2, "few": 0}
    assert main(["evaluate", str(rd), "--quiet"]) == 0
    again = json.loads((rd / "metrics.json").read_text())
    assert again["test"]["top1"] == pytest.approx(m["test"]["top1"], abs=1e-6)
    # a finished run refuses a fresh start, and resuming it is a no-op that re-evaluates
    assert main(["train", *ARGS, *out]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", *ARGS, *out, "--resume"]) == 0


def test_cli_config_errors_are_one_line(tmp_path, capsys):
    assert main(["train", *ARGS, "optim.lrr=1", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lvmlt: error: unknown config key 'optim.lrr'") and "\n" not in err
    assert main(["train", *ARGS, "optim.epochs=x", f"out_dir={tmp_path}"]) == 2
    assert "wrong type" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
