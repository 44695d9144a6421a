"""``lvmlt compare``: its CLI, the systems as trainer runs, the SAM-fusion rows it picks up, and the files it writes."""

import csv

import numpy as np
import pytest

from helpers import feature_bundle, write_store
from lvmlt import cli
from lvmlt.config import load_config
from lvmlt.experiments.cli import command_line
from lvmlt.experiments.compare_report import find_sam_fusion_results, write_report
from lvmlt.experiments.compare_runs import Comparison, run_feature_systems
from lvmlt.experiments.recipes import GROUP_BY_NAME


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
    assert list(res) == [r.label for g in ("probe", "synthetic") for r in GROUP_BY_NAME[g].rows] and len(fits) == 4
    saved = (tmp_path / "runs" / "feat-linear_probe__v_sam__la_ce-seed0" / "config.yaml").read_text()
    assert "name: adamw" in saved and "name: logit_adjusted" in saved and "epochs: 3" in saved  # the user's wins
    assert "dropout: 0.0" in saved and "precision: fp32" in saved  # the recipe, whatever the base config says
    assert all(c["params"] == 8 * 3 + 3 and c["seconds"] >= 0 for c in cost.values())
    assert all("torch threads" in c["machine"] for c in cost.values())  # from each run's runtime record
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
    cost = {"linear probe": {"params": 2056, "seconds": 1.5, "encoder": "frozen (stored features)", "machine": "M1"}}
    c = Comparison(standard=standard, cost=cost)
    text = write_report(tmp_path, "toy", "lvmlt compare --dataset toy", (0, 1), c, {}, [], None, (100, 20))
    assert "lvmlt compare --dataset toy" in text
    assert "| linear probe | 2 | 80.00 ± 0.00 | 50.00 ± 0.00 | 20.00 ± 0.00 | 71.00 ± 1.41 |" in text
    assert "no results file for toy" in text and "| linear probe | 2,056 | 1.5 |" in text
    assert "wall time per fit on M1," in text and "GLT" not in text
    rows = list(csv.DictReader((tmp_path / "toy.csv").open()))
    assert [r["top1"] for r in rows] == ["70.0", "72.0"] and rows[0]["params"] == "2056"
    assert "mono_acc" not in rows[0]  # attribute columns only where the data has attributes


def test_preconditions_are_checked_before_any_run(tmp_path):
    """A store without SciLT's levels, a store of other data, IFL without a GLT protocol: one error each, no run."""
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
    with pytest.raises(UserError, match="runs a GLT protocol, and mnist-lt has none"):
        check_preconditions(load_config(None, ["data.name=mnist-lt"]), bundle, ["ifl"], None, set())
    with pytest.raises(UserError, match="need a feature store"):
        check_preconditions(cfg, bundle, ["synthetic"], None, set())
    assert not (tmp_path / "runs").exists()


def test_what_a_run_trains_is_named_once():
    """The mode flags of older lvmlt appear only where lvmlt.config.compat reads them as a system; the
    experiments name no dataset either."""
    from pathlib import Path

    import lvmlt

    root = Path(lvmlt.__file__).parent
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        for flag in ("sam_only", "synthetic.enabled", "scilt.enabled"):
            assert flag not in text or path.relative_to(root).as_posix() == "config/compat.py", (
                f"{path.relative_to(root)} names {flag}"
            )
        if path.parent.name == "experiments":
            assert '"elpv"' not in text, f"{path.name} branches on a dataset's name"


def test_default_groups_come_from_the_data_not_its_name(tmp_path):
    from lvmlt.experiments.compare import default_groups

    counts = {"train": [8, 4], "val": [2, 2], "test": [2, 2]}
    bundle = feature_bundle(counts)
    plain = write_store(tmp_path / "plain", bundle, {s: {"vec": np.zeros((sum(n), 4), np.float32)} for s, n in counts.items()})
    levels = write_store(tmp_path / "levels", bundle, {
        s: {"vec": np.zeros((sum(n), 4), np.float32), "level_stage3": np.zeros((sum(n), 2), np.float32),
            "level_stage4": np.zeros((sum(n), 2), np.float32)} for s, n in counts.items()
    })  # fmt: skip
    elpv, mnist = (load_config(None, [f"data.name={d}"]) for d in ("elpv", "mnist-lt"))
    assert default_groups(elpv, str(plain), set()) == ["probe", "synthetic", "ifl"]  # a GLT protocol, no levels
    assert default_groups(mnist, str(levels), set()) == ["probe", "synthetic", "scilt"]  # levels, no GLT protocol
    assert default_groups(elpv, str(levels), set()) == ["probe", "synthetic", "scilt", "ifl"]
    assert default_groups(mnist, None, set()) == ["probe", "synthetic"]


def _attribute_bundle(cfg):
    """4 classes x 2 attributes of tiny images, label = attribute * 4 + class (as ELPV's)."""
    from lvmlt.data.base import DataBundle
    from lvmlt.data.datasets import array_split
    from lvmlt.data.transforms import build_transform

    rng = np.random.default_rng(0)
    per = [40, 14, 24, 30, 12, 30, 14, 12]
    labels = np.repeat(np.arange(8), per)
    images = (rng.random((len(labels), 16, 16)) * 60 + (labels % 4)[:, None, None] * 60).astype(np.uint8)
    idx = np.arange(len(labels))
    parts = [array_split(s, "attr", images, labels, idx[k::3]) for k, s in enumerate(("train", "val", "test"))]
    for p in parts:
        p.transform = build_transform(cfg.data.image_size, train=False)
    return DataBundle("attr", *parts, [f"c{i}" for i in range(8)], {"many_threshold": 30, "few_threshold": 10})


def test_glt_rows_train_once_and_test_both_checkpoints_through_the_build_path(tmp_path, monkeypatch):
    """A GLT protocol found in the data's table; its runs rebuilt by build_run for each test set."""
    from lvmlt.data import glt
    from lvmlt.experiments.compare_runs import run_glt
    from lvmlt.training import trainer

    spec = glt.GLTSpec(attr_ratio=2.0, gbl_per_attr=2, cbl_per_class=4, val_per_class=3)

    def toy(source):
        return glt.glt_bundles(source, lambda y: y % 4, lambda y: y // 4, list("abcd"), ["dark", "light"], spec,
                               {"many_threshold": 10, "few_threshold": 4})  # fmt: skip

    monkeypatch.setattr(glt, "toy_glt_bundles", toy, raising=False)
    monkeypatch.setitem(glt.GLT_PROTOCOLS, "toy", {"build": "toy_glt_bundles", "title": "Toy", "classes": "shade",
                                                       "attribute": "tone"})  # fmt: skip
    builds = []
    real = trainer.build_run
    monkeypatch.setattr(trainer, "build_run", lambda *a, **k: builds.append(a[1].meta["test_protocol"]) or real(*a, **k))
    cfg = load_config(None, ["data.name=toy", "data.image_size=16", "data.batch_size=16", "model.backbone=resnet8",
                             "optim.precision=fp32", "device=cpu", "data.num_workers=0"])  # fmt: skip
    run = [cfg, _attribute_bundle(cfg), ["ifl"], (0,), tmp_path / "runs", 2]
    tables, cost, facts = run_glt(*run, log=lambda s: None)
    names = [r.label.format(backbone="resnet8") for r in GROUP_BY_NAME["ifl"].rows]
    assert list(tables["best"]["gbl"]) == names and list(cost) == names
    assert (tmp_path / "runs" / "attr-glt-ifl-center-seed0" / "glt_metrics.json").exists()
    row = tables["last"]["cbl"][names[1]][0]
    assert row["seed"] == 0 and row["best_epoch"] == 1 and {"dark_acc", "light_acc"} <= set(row)
    assert builds.count("Test-CBL") == 3 and builds.count("Test-GBL") == 6  # training (GBL) + 2 evaluations each
    assert facts["attributes"] == ["dark", "light"] and facts["title"] == "Toy" and facts["val_images"] == 12
    again = run_glt(*run, log=lambda s: None)
    assert again[0] == tables and len(builds) == 9  # finished runs and their GLT metrics are read
    c = Comparison(glt=tables, glt_facts=facts, cost=cost)
    text = write_report(tmp_path / "out", "toy", "lvmlt compare --dataset toy", (0,), c, {}, [], None, (10, 4))
    assert "## GLT protocol on Toy\n\nClass = shade (4), attribute = tone (dark / light); many > 10, few < 4" in text
    assert "dark_acc / light_acc: mean per-class accuracy on the dark / light images" in text
    header = (tmp_path / "out" / "toy.csv").read_text().splitlines()[0]
    assert header.endswith("macro_f1,dark_acc,light_acc,val_mean_class_acc,best_epoch,params,seconds")
