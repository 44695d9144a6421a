"""``lvmlt compare``: its CLI, the systems as trainer runs, the SAM-fusion rows it picks up, and the files it writes."""

import csv

import numpy as np
import pytest

from helpers import feature_bundle, write_store
from lvmlt import cli
from lvmlt.config import load_config
from lvmlt.experiments.compare import (
    SYSTEMS,
    command_line,
    find_sam_fusion_results,
    run_feature_systems,
    write_report,
)


def test_help_and_unknown_system(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["compare", "--help"])
    assert e.value.code == 0 and "--systems" in capsys.readouterr().out
    assert cli.main(["compare", "--dataset", "elpv", "--systems", "nope"]) == 2
    assert "unknown system group" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["compare", "--dataset", "elpv", "--store", "S", "optim.epochs=5"])
    assert args.seeds == "0,1,2"
    assert command_line(args) == "lvmlt compare --dataset elpv --store S optim.epochs=5"


def test_feature_systems_are_trainer_runs_read_when_finished(tmp_path, monkeypatch):
    from lvmlt.training import trainer

    rng = np.random.default_rng(0)
    counts = {"train": [40, 12, 3], "val": [6, 6, 6], "test": [6, 6, 6]}
    arrays = {}
    for s, n in counts.items():
        y = np.repeat(np.arange(3), n)
        arrays[s] = {"vec": (rng.normal(size=(len(y), 8)) + 4.0 * np.eye(8)[y]).astype(np.float32)}
    bundle = feature_bundle(counts)
    store = write_store(tmp_path / "store", bundle, arrays)
    user = ["optim.epochs=3", "device=cpu", "data.num_workers=0"]
    base = load_config(None, [*user, f"fusion.store={store}", "model.dropout=0.5"])
    fits = []
    real = trainer.Trainer.fit
    monkeypatch.setattr(trainer.Trainer, "fit", lambda self: fits.append(self.run_dir.name) or real(self))
    keys = {o.split("=")[0] for o in user}
    res, cost = run_feature_systems(base, bundle, ["probe", "synthetic"], (0,), tmp_path / "runs", keys, log=lambda s: None)
    assert list(res) == [*SYSTEMS["probe"], *SYSTEMS["synthetic"]] and len(fits) == 4
    saved = (tmp_path / "runs" / "feat-linear-probe-v-sam-la-ce-seed0" / "config.yaml").read_text()
    assert "name: adamw" in saved and "name: logit_adjusted" in saved and "epochs: 3" in saved  # the user's wins
    assert "dropout: 0.0" in saved and "precision: fp32" in saved  # the recipe, whatever the base config says
    assert all(c["params"] == 8 * 3 + 3 and c["seconds"] >= 0 for c in cost.values())
    assert all(0 <= r[0]["top1"] <= 100 and r[0]["seed"] == 0 for r in res.values())
    again, _ = run_feature_systems(base, bundle, ["probe", "synthetic"], (0,), tmp_path / "runs", keys, log=lambda s: None)
    assert len(fits) == 4 and again == res  # every finished run is read, none trained again


def test_sam_fusion_rows_are_read_from_results_files(tmp_path):
    root = tmp_path / "results"
    (root / "other-systems").mkdir(parents=True)
    with (root / "elpv-ablation.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "many", "medium", "few", "top1"])
        w.writerow(["+SAM map&latent", 80, 60, 40, 70])
        w.writerow(["+SAM map&latent", 82, 62, 42, 72])
    (root / "other-systems" / "elpv.csv").write_text("run,top1\nmine,1\n")  # our own output: skipped
    (root / "mnist-lt.csv").write_text("run,top1\nx,1\n")  # another dataset
    (root / "ablation-fashion-mnist-lt-ce.csv").write_text("run,top1\ny,2\n")  # contains "mnist-lt"
    rows, files = find_sam_fusion_results("elpv", root, (root / "other-systems").resolve())
    assert files == [root / "elpv-ablation.csv"]
    _, files = find_sam_fusion_results("mnist-lt", root, (root / "other-systems").resolve())
    assert files == [root / "mnist-lt.csv"]
    (name,) = rows
    assert "+SAM map&latent" in name and [r["top1"] for r in rows[name]] == [70.0, 72.0]


def test_report_holds_the_command_tables_and_the_absence_note(tmp_path):
    m = {"many": 80.0, "medium": 50.0, "few": 20.0, "top1": 70.0, "mean_class_acc": 50.0, "macro_f1": 45.0}
    standard = {"linear probe": [m, m | {"top1": 72.0}]}
    cost = {"linear probe": {"params": 2056, "seconds": 1.5, "encoder": "frozen (stored features)"}}
    text = write_report(
        tmp_path,
        "toy",
        "lvmlt compare --dataset toy",
        (0, 1),
        standard,
        None,
        cost,
        {},
        [],
        None,
        (100, 20),
    )
    assert "lvmlt compare --dataset toy" in text
    assert "| linear probe | 2 | 80.00 ± 0.00 | 50.00 ± 0.00 | 20.00 ± 0.00 | 71.00 ± 1.41 |" in text
    assert "no results file for toy" in text and "| linear probe | 2,056 | 1.5 |" in text
    rows = list(csv.DictReader((tmp_path / "toy.csv").open()))
    assert [r["top1"] for r in rows] == ["70.0", "72.0"] and rows[0]["params"] == "2056"


def test_preconditions_are_checked_before_any_run(tmp_path):
    """A store without SciLT's levels, a store of other data, IFL off ELPV: one error each, no run."""
    from lvmlt.errors import UserError
    from lvmlt.experiments.compare import DEFAULT_OUT, check_preconditions

    assert not DEFAULT_OUT.startswith("benchmarks")  # the committed tables change only on request
    counts = {"train": [8, 4], "val": [2, 2], "test": [2, 2]}
    bundle = feature_bundle(counts)
    arrays = {s: {"vec": np.zeros((sum(n), 4), np.float32)} for s, n in counts.items()}
    store = write_store(tmp_path / "store", bundle, arrays)
    cfg = load_config(None, ["data.name=elpv"])
    assert check_preconditions(cfg, bundle, ["probe"], str(store), set())["levels"] == []
    with pytest.raises(UserError, match=r"SciLT rows also read \['stage3', 'stage4'\].*levels=\[stage3,stage4\]"):
        check_preconditions(cfg, bundle, ["probe", "scilt"], str(store), set())
    other = feature_bundle({"train": [9, 4], "val": [2, 2], "test": [2, 2]})
    with pytest.raises(UserError, match="differs|split"):
        check_preconditions(cfg, other, ["probe"], str(store), set())
    with pytest.raises(UserError, match="ELPV only"):
        check_preconditions(load_config(None, ["data.name=mnist-lt"]), bundle, ["ifl"], None, set())
    with pytest.raises(UserError, match="need a feature store"):
        check_preconditions(cfg, bundle, ["synthetic"], None, set())
    assert not (tmp_path / "runs").exists()
