"""The ablation and baselines runners on a tiny real-file dataset with a tiny encoder's store."""

import json

import numpy as np
import pytest
from PIL import Image

from lvmlt.config import load_config
from lvmlt.experiments import ablate, baselines, tables
from lvmlt.experiments.grid import slug


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lvmlt.features.cli import run_extract

    root = tmp_path_factory.mktemp("exp")
    rng = np.random.default_rng(0)
    for split, per in (("train", (30, 12, 4)), ("val", (4, 4, 4)), ("test", (6, 6, 6))):
        lines = []
        for c, n in enumerate(per):
            for i in range(n):
                a = (rng.random((16, 16)) * 90 + c * 70).astype(np.uint8)
                rel = f"{split}/{c}_{i}.png"
                (root / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(a).save(root / rel)
                lines.append(f"{rel} {c}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    data = [f"data.root={root}", f"data.train_split={root}/train.txt", f"data.val_split={root}/val.txt",
            f"data.test_split={root}/test.txt"]
    run_extract(root / "store", dataset="splitfile", encoder="tiny_test", progress=False,
                overrides=[*data, "precision=fp32", "pca_images=4"])
    cfg = load_config(None, [
        "data.name=splitfile", *data, "data.image_size=16", "data.batch_size=16", "model.backbone=resnet8",
        "optim.epochs=2", "optim.lr=0.05", "optim.precision=fp32", f"fusion.store={root / 'store'}",
        "eval.many_threshold=20", "eval.few_threshold=5",
    ])
    return root, cfg


def _count_fits(monkeypatch):
    from lvmlt.training import trainer

    fits = []
    real = trainer.Trainer.fit

    def counted(self):
        fits.append(self.run_dir.name)
        return real(self)

    monkeypatch.setattr(trainer.Trainer, "fit", counted)
    return fits


def test_ablation_grid_trains_each_variant_once_and_writes_tables(setup, tmp_path, monkeypatch):
    root, cfg = setup
    fits = _count_fits(monkeypatch)
    names = ["baseline", "+SAM latent", "+SAM features+L_proto (ours)"]
    res = ablate.run_grid(cfg, names, (0, 1), tmp_path, "t", progress=False, log=lambda s: None)
    assert list(res) == names and all(len(v) == 2 for v in res.values())
    assert sorted(fits) == sorted(f"t-{slug(n)}-seed{s}" for n in names for s in (0, 1))
    cfg_saved = (tmp_path / "t-sam_latent-seed1" / "config.yaml").read_text()
    assert "latent: true" in cfg_saved and "seed: 1" in cfg_saved
    # a second call reuses every finished run
    again = ablate.run_grid(cfg, names, (0, 1), tmp_path, "t", progress=False, log=lambda s: None)
    assert len(fits) == 6 and again == res
    assert [m["seed"] for m in res["baseline"]] == [0, 1]
    md = tables.write_tables(res, tmp_path / "tab", title="T")
    assert md.startswith("# T") and "+SAM latent" in md
    rows = (tmp_path / "tab.csv").read_text().splitlines()
    assert len(rows) >= 4 and "many" in rows[0]


def test_baselines_share_runs_and_apply_posthoc_and_second_stages(setup, tmp_path, monkeypatch):
    root, cfg = setup
    ablate.run_grid(cfg, ["baseline"], (0,), tmp_path, "d-ce", progress=False, log=lambda s: None)
    fits = _count_fits(monkeypatch)
    rows = ["CE", "Label Shift (MAPLS)", "cRT"]
    res = baselines.run_rows(cfg, rows, (0,), tmp_path, "d", stage_epochs=1, progress=False, log=lambda s: None)
    from lvmlt.experiments.recipes import SAM_TWIN as sam
    assert list(res) == [r + s for r in rows for s in ("", f" {sam}")] == baselines.table_keys(rows)
    assert all(m["seed"] == 0 for v in res.values() for m in v)
    # the CE baseline came from the ablation grid; its SAM twin and the two cRT stages are new
    assert sorted(fits) == sorted([
        "d-ce-sam_features_l_proto__ours-seed0", "d-ce-baseline-seed0-crt",
        "d-ce-sam_features_l_proto__ours-seed0-crt",
    ])
    m = json.loads((tmp_path / "d-ce-baseline-seed0" / "metrics.json").read_text())
    assert res["CE"][0]["top1"] == m["test"]["top1"]
    assert res["Label Shift (MAPLS)"][0]["top1"] == m["calibrated"]["mapls"]["test"]["top1"]
    crt = (tmp_path / "d-ce-baseline-seed0-crt" / "config.yaml").read_text()
    assert "init_from" in crt and "class_balanced" in crt and "epochs: 1" in crt
    # tabulating only what exists trains nothing
    n = len(fits)
    baselines.run_rows(cfg, rows + ["ProCo"], (0,), tmp_path, "d", stage_epochs=1, progress=False,
                       log=lambda s: None, train_missing=False)
    assert len(fits) == n
    with pytest.raises(Exception, match="unknown baseline row"):
        baselines.run_rows(cfg, ["nope"], (0,), tmp_path, "d")


def test_keep_committed_completes_a_table_from_its_csv(tmp_path):
    # an earlier table: rows a (seeds 0, 1) and b (seed 0), written with its seeds
    old = {"a": [{"seed": 0, "top1": 50.0, "few": None}, {"seed": 1, "top1": 60.0, "few": None}],
           "b": [{"seed": 0, "top1": 70.0, "few": 10.0}]}
    tables.write_tables(old, tmp_path / "tab")
    # runs here: a's seed 1 again (the committed line stays) and seed 2 (new), c (new row)
    here = {"a": [{"seed": 1, "top1": 61.0, "few": None}, {"seed": 2, "top1": 62.0, "few": None}],
            "c": [{"seed": 0, "top1": 80.0, "few": None}]}
    merged = tables.keep_committed(here, tmp_path / "tab.csv", ["c", "a", "b"], (0, 1, 2))
    assert list(merged) == ["c", "a", "b"]
    assert [(m["seed"], m["top1"]) for m in merged["a"]] == [(0, 50.0), (1, 60.0), (2, 62.0)]
    assert merged["b"] == [{"seed": 0, "top1": 70.0, "few": 10.0}]
    md = tables.write_tables(merged, tmp_path / "tab")
    assert "| a | 3 |" in md and "57.33 ± 6.43" in md and "| b | 1 |" in md
    # seeds and rows not asked for are left out; a missing CSV keeps nothing
    assert list(tables.keep_committed(here, tmp_path / "tab.csv", ["a"], (0,))) == ["a"]
    assert tables.keep_committed({}, tmp_path / "none.csv", ["a"], (0,)) == {}


@pytest.mark.parametrize("text, message", [
    ("run,top1\na,50.0\n", "row 'a' has a line without a whole-number seed.*bad.csv"),
    ("run,seed,top1\na,x,50.0\n", "whole-number seed \\('x'\\) in .*bad.csv"),
    ("run,seed,top1\na,0,50.0,7\n", "line 2 has more cells than the header in .*bad.csv"),
    ("name,top1\na,50.0\n", "no 'run' column"),
])
def test_keep_committed_refuses_a_bad_csv(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(Exception, match=message):
        tables.keep_committed({}, tmp_path / "bad.csv", ["a"], (0,))


@pytest.mark.parametrize("command", ["ablate", "baselines"])
def test_bad_seeds_are_one_line_before_any_run(command, capsys, tmp_path):
    from lvmlt.cli import main

    assert main([command, "--seeds", "0,one", "--out", str(tmp_path / "runs")]) == 2
    assert "--seeds '0,one' is not a comma-separated list of integers" in capsys.readouterr().err
    assert main([command, "--seeds", "1,1", "--out", str(tmp_path / "runs")]) == 2
    assert "names a seed twice" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "budget, costs, chosen",
    [
        (10, 300, "full"),  # 4 runs x 60 s + 300 s = 9 min: fits
        (10, 400, "balanced softmax pair"),  # full 10.7 min; the pair 8.7 min
        (10, 500, "balanced softmax pair, 4 epochs"),  # the pair 10.3 min; at 4 epochs 8.6 min
        (10, 900, "balanced softmax pair, 4 epochs"),  # none fits: the lightest
        (0, 900, "full"),  # no budget: the full plan
    ],
)
def test_the_demo_runs_the_richest_plan_that_fits_its_budget(budget, costs, chosen, tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from lvmlt.experiments import demo

    def expected(cfgs, bundle, store_dir, extract_cfg, bundle_dir, rates):
        return {"features": costs, "training": sum(7.5 * c.optim.epochs for c in cfgs.values())}

    monkeypatch.setattr(demo, "expected_seconds", expected)
    args = SimpleNamespace(budget=budget, plan=None, config="configs/elpv.yaml", overrides=[])
    plan, cfgs, extract_cfg, store_dir, _ = demo.choose_plan(args, None, tmp_path)
    assert plan.name == chosen and list(cfgs) == list(plan.runs) and extract_cfg.img_size == plan.img_size
    names = [c.run_name for p in demo.PLANS for c in demo.plan_configs(p, args, tmp_path)[0].values()]
    assert len(set(names)) == len(names) == 8  # each plan's runs are its own (other features or epochs)
    assert store_dir.name == f"elpv-mobilesam-{plan.img_size}"
    said = capsys.readouterr().out
    assert said.startswith(f"plan: {chosen} ") and ("richer plans did not fit" in said) == (chosen != "full")
    assert all(c.fusion.store == str(store_dir) for c in cfgs.values())


def test_the_demo_measures_each_rate_once_for_all_its_plans(tmp_path, monkeypatch, capsys):
    from collections import Counter
    from types import SimpleNamespace

    from helpers import toy_bundle
    from lvmlt.experiments import demo, estimate

    calls = Counter()
    monkeypatch.setattr(estimate, "encoder_seconds", lambda *a, **k: calls.update(["encoder"]) or estimate.EncoderRates(1.0, 1.0, 1.0))
    monkeypatch.setattr(estimate, "decode_seconds", lambda *a, **k: calls.update(["decode"]) or (1e-3, 5e-4))
    monkeypatch.setattr(estimate, "step_seconds", lambda *a, **k: calls.update(["step"]) or 1.0)
    monkeypatch.setattr("lvmlt.encoders.build_encoder", lambda *a, **k: None)
    args = SimpleNamespace(budget=0.001, plan=None, config="configs/elpv.yaml", overrides=[])
    plan, *_ = demo.choose_plan(args, toy_bundle(), tmp_path)  # nothing fits: every plan is estimated
    assert plan is demo.PLANS[-1] and "richer plans did not fit" in capsys.readouterr().out
    assert calls == {"encoder": 2, "decode": 1, "step": 2}  # at 256 and 192 px; the plain CNN and the fused one


def test_the_demo_says_a_missing_weights_file_in_one_line(tmp_path, monkeypatch, capsys):
    from lvmlt.experiments import demo

    monkeypatch.setenv("LVMLT_CACHE", str(tmp_path / "empty-cache"))
    assert demo.main(["--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lvmlt: error: no mobilesam weights in ") and "lvmlt weights fetch mobilesam" in err
    assert "\n" not in err and "Traceback" not in err


def test_the_demo_quotes_the_committed_recipes_table(tmp_path, capsys):
    from lvmlt.experiments import demo

    table = tmp_path / "elpv.csv"
    table.write_text("system,n,top1,mean_class_acc,many,medium,few,minutes\n"
                     "old baseline: CE,3,71.79 ± 0.93,43.17 ± 0.46,78.43,15.80,0.00,-\n"
                     "frozen MobileSAM probe is not quoted,3,71.44,40.80,78.37,6.45,0.00,-\n"
                     "\"MobileSAM, last stage fine-tuned\",0,-,-,-,-,-,-\n")
    demo.print_full_recipes(table)
    out = capsys.readouterr().out
    assert "old baseline: CE: top-1 71.79 ± 0.93, mean class 43.17 ± 0.46" in out
    assert "probe" not in out and "fine-tuned" not in out  # not quoted, and no finished seed
    demo.print_full_recipes(tmp_path / "missing.csv")
    assert capsys.readouterr().out == ""
