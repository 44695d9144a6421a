"""Trainer behaviour on a tiny synthetic bundle: run directory, resume, selection, bad images."""

import json

import numpy as np
import pytest
import torch

from helpers import toy_bundle, train_killed_then_resumed
from lvmlt.config import load_config
from lvmlt.errors import BadImageError, UserError
from lvmlt.training.trainer import Trainer, lr_lambda, train


def _cfg(tmp_path, *extra):
    return load_config(
        None,
        ["model.backbone=resnet8", "optim.epochs=3", f"out_dir={tmp_path}", "run_name=r", "data.batch_size=16",
         "optim.lr=0.05", "optim.precision=fp32", *extra],
    )


def test_run_directory_and_metrics(tmp_path):
    m = train(_cfg(tmp_path), bundle=toy_bundle(), progress=False)
    rd = tmp_path / "r"
    for f in ("config.yaml", "train.log", "history.jsonl", "metrics.json", "predictions.npz", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (rd / f).exists(), f
    assert len((rd / "history.jsonl").read_text().splitlines()) == 3
    saved = json.loads((rd / "metrics.json").read_text())
    assert saved["test"]["top1"] == pytest.approx(m["test"]["top1"])
    hist = [json.loads(line) for line in (rd / "history.jsonl").read_text().splitlines()]
    # "best" is the epoch with the highest validation score (a tie: the lower validation NLL),
    # never chosen on test
    assert saved["best_epoch"] == min(range(len(hist)), key=lambda e: (-hist[e]["val/mean_class_acc"], hist[e]["val/nll"]))
    p = np.load(rd / "predictions.npz")
    assert p["test_logits"].shape == (30, 3) and p["train_counts"].tolist() == [30, 20, 10]
    with pytest.raises(UserError, match="already holds a run"):
        Trainer(_cfg(tmp_path), bundle=toy_bundle(), progress=False)


def test_resume_after_kill_matches_uninterrupted(tmp_path, monkeypatch):
    full = train(_cfg(tmp_path / "a"), bundle=toy_bundle(), progress=False)
    resumed = train_killed_then_resumed(lambda: _cfg(tmp_path / "b"), monkeypatch)
    a = torch.load(tmp_path / "a/r/checkpoints/last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b/r/checkpoints/last.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert resumed["test"]["top1"] == pytest.approx(full["test"]["top1"])
    with pytest.raises(UserError, match="different config"):
        Trainer(_cfg(tmp_path / "b", "optim.lr=0.5"), resume=True, bundle=toy_bundle(), progress=False)


def test_resume_compares_only_the_sections_the_run_uses():
    from lvmlt.config import to_dict, used_sections

    plain = to_dict(load_config(None, []))
    other_scilt = to_dict(load_config(None, ["scilt.dim=3", "proto.beta=0.5", "ifl.center_lr=0.1"]))
    assert used_sections(plain) == used_sections(other_scilt)  # a CE run uses none of these
    proto_a = to_dict(load_config(None, ["proto.enabled=true"]))
    proto_b = to_dict(load_config(None, ["proto.enabled=true", "proto.beta=0.5"]))
    assert used_sections(proto_a)["proto"] != used_sections(proto_b)["proto"]
    assert "proto" not in used_sections(plain) and "data" in used_sections(plain)
    # Each method owns its section: compared once the run uses the method.
    scilt_a = to_dict(load_config(None, ["system=scilt"]))
    scilt_b = to_dict(load_config(None, ["system=scilt", "scilt.dim=3"]))
    assert used_sections(scilt_a)["scilt"] != used_sections(scilt_b)["scilt"]
    assert "synthetic" in used_sections(to_dict(load_config(None, ["system=synthetic_probe"])))
    assert not {"scilt", "synthetic"} & set(used_sections(plain))
    old = {k: v for k, v in plain.items() if k != "ifl"}  # a run saved before a section existed
    assert used_sections(old) == {k: v for k, v in used_sections(plain).items()}


def test_evaluate_rebuilds_the_run_without_a_trainer(tmp_path, monkeypatch):
    from lvmlt.training import trainer as T

    m = train(_cfg(tmp_path), bundle=toy_bundle(), progress=False)
    import lvmlt.data

    monkeypatch.setattr(lvmlt.data, "build_data", lambda cfg: toy_bundle())
    monkeypatch.setattr(T.Trainer, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no Trainer")))
    again = T.evaluate_run(tmp_path / "r", progress=False)
    assert again["test"]["top1"] == pytest.approx(m["test"]["top1"])
    assert again["best_epoch"] == m["best_epoch"]


def test_bad_image_stops_with_one_error_or_is_skipped(tmp_path):
    with pytest.raises(BadImageError, match="img4.png"):
        train(_cfg(tmp_path / "stop"), bundle=toy_bundle(bad={4}), progress=False)
    m = train(_cfg(tmp_path / "skip", "data.skip_bad_images=true"), bundle=toy_bundle(bad={4, 7}), progress=False)
    assert m["skipped_images"] == 2
    assert (tmp_path / "skip/r/bad_images.txt").read_text().split() == ["train/4", "train/7"]


def test_proto_and_accumulation_run(tmp_path):
    m = train(_cfg(tmp_path, "proto.enabled=true", "optim.accumulate=2", "optim.epochs=2", "optim.warmup_epochs=1"), bundle=toy_bundle(), progress=False)
    hist = [json.loads(x) for x in (tmp_path / "r/history.jsonl").read_text().splitlines()]
    assert "train/proto_head" in hist[-1] and np.isfinite(hist[-1]["train/total"])
    assert m["test"]["num_samples"] == 30


def test_lr_schedule():
    cfg = load_config(None, ["optim.epochs=4", "optim.warmup_epochs=1"])
    f = lr_lambda(cfg, 10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(39) < 0.01
    step = lr_lambda(load_config(None, ["optim.schedule=step", "optim.milestones=[2,3]"]), 10)
    assert [step(s) for s in (0, 19, 20, 30)] == pytest.approx([1, 1, 0.1, 0.01])


def test_proco_term_trains(tmp_path):
    m = train(_cfg(tmp_path, "loss.name=logit_adjusted", "proco.enabled=true", "proco.feat_dim=16", "proco.hidden=32", "optim.epochs=2"), bundle=toy_bundle(), progress=False)
    hist = [json.loads(x) for x in (tmp_path / "r/history.jsonl").read_text().splitlines()]
    assert np.isfinite(hist[-1]["train/proco"]) and hist[-1]["train/proco"] > 0
    assert m["test"]["num_samples"] == 30


@pytest.mark.parametrize("mode", ["crt", "lws"])
def test_decoupled_second_stage_keeps_representation(tmp_path, mode):
    train(_cfg(tmp_path / "s1", "optim.epochs=1"), bundle=toy_bundle(), progress=False)
    first = torch.load(tmp_path / "s1/r/checkpoints/best.pt", weights_only=False)["model"]
    extra = ["stage.reset_head=true"] if mode == "crt" else ["stage.lws=true"]
    train(
        _cfg(tmp_path / "s2", "optim.epochs=2", f"stage.init_from={tmp_path / 's1/r'}", "stage.freeze_backbone=true",
             "data.sampler=class_balanced", *extra),
        bundle=toy_bundle(), progress=False,
    )
    second = torch.load(tmp_path / "s2/r/checkpoints/last.pt", weights_only=False)["model"]
    for k, v in first.items():
        if k.startswith("backbone."):  # weights and BN statistics are untouched
            torch.testing.assert_close(second[k], v, msg=k)
    changed = not torch.equal(second["head.weight"], first["head.weight"])
    assert changed == (mode == "crt")
    if mode == "lws":
        assert not torch.equal(second["class_scale.scale"], torch.ones(3))


def test_fusion_training_reads_the_feature_store_and_checks_it(tmp_path):
    from lvmlt.features import ExtractConfig, extract

    bundle = toy_bundle()
    store = tmp_path / "store"
    extract(bundle, ExtractConfig(encoder="tiny_test", precision="fp32", pca_images=4), store, progress=False)
    m = train(
        _cfg(tmp_path, f"fusion.store={store}", "fusion.map=true", "fusion.latent=true", "proto.enabled=true", "optim.epochs=2"),
        bundle=bundle, progress=False,
    )
    assert m["test"]["num_samples"] == 30
    hist = [json.loads(x) for x in (tmp_path / "r/history.jsonl").read_text().splitlines()]
    assert {"train/proto_head", "train/proto_tail_std", "train/proto_tail_dist"} <= set(hist[-1])
    # a store of other data is refused, naming what differs
    other = toy_bundle()
    other.train.labels[0] = 2
    with pytest.raises(UserError, match="feature store .* does not match"):
        Trainer(_cfg(tmp_path / "o", f"fusion.store={store}", "fusion.latent=true"), bundle=other, progress=False)
    with pytest.raises(UserError, match="needs a feature store"):
        Trainer(_cfg(tmp_path / "n", "fusion.latent=true"), bundle=toy_bundle(), progress=False)


def test_dual_supervision_and_alpha_chosen_on_validation(tmp_path):
    """fusion.aux_weight adds the loss on z_CNN and z_SAM; alpha_select=val picks alpha on val only."""
    from lvmlt.evaluation.metrics import ALPHA_GRID, choose_alpha, score
    from lvmlt.features import ExtractConfig, extract

    bundle = toy_bundle()
    store = tmp_path / "store"
    extract(bundle, ExtractConfig(encoder="tiny_test", precision="fp32", pca_images=4), store, progress=False)
    fused = (f"fusion.store={store}", "fusion.latent=true", "optim.epochs=2")
    m = train(_cfg(tmp_path, *fused, "fusion.aux_weight=0.5", "fusion.alpha_select=val"), bundle=bundle, progress=False)
    hist = [json.loads(x) for x in (tmp_path / "r/history.jsonl").read_text().splitlines()]
    assert hist[-1]["train/fusion_branches"] > 0
    p = dict(np.load(tmp_path / "r/predictions.npz"))
    curve = {float(a): v for a, v in m["alpha"]["val_mean_class_acc"].items()}
    assert sorted(curve) == list(ALPHA_GRID) and m["alpha"]["trained"] == 0.5
    a = m["alpha"]["chosen"]
    assert curve[a] == max(curve.values())
    for split in ("val", "test"):  # the saved logits are the mix at the chosen alpha
        mix = (1 - a) * p[f"{split}_z_sam"] + a * p[f"{split}_z_cnn"]
        np.testing.assert_allclose(p[f"{split}_logits"], mix, rtol=1e-6, atol=1e-6)
    again = score(p["val_logits"], p["val_labels"], bundle.train_counts, bundle.meta)
    assert again["mean_class_acc"] == pytest.approx(curve[a])
    # chosen again from the saved branches (what a later study does): the same alpha
    assert choose_alpha(p["val_z_cnn"], p["val_z_sam"], p["val_labels"], bundle.train_counts, bundle.meta)[0] == a
    # without the options: no extra term, fixed alpha, and the branches are still saved
    m2 = train(_cfg(tmp_path / "plain", *fused), bundle=bundle, progress=False)
    assert "alpha" not in m2
    hist = [json.loads(x) for x in (tmp_path / "plain/r/history.jsonl").read_text().splitlines()]
    assert "train/fusion_branches" not in hist[-1]
    p = np.load(tmp_path / "plain/r/predictions.npz")
    np.testing.assert_allclose(p["test_logits"], 0.5 * p["test_z_sam"] + 0.5 * p["test_z_cnn"], rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="latent fusion's two branches"):
        Trainer(_cfg(tmp_path / "x", f"fusion.store={store}", "fusion.alpha_select=val"), bundle=bundle, progress=False)
    with pytest.raises(UserError, match="fusion.alpha_select='test' must be one of fixed, val"):
        Trainer(_cfg(tmp_path / "y", *fused, "fusion.alpha_select=test"), bundle=bundle, progress=False)


def test_the_optimiser_comes_from_the_registry(tmp_path):
    from lvmlt.training.optim import OPTIMIZERS

    assert OPTIMIZERS.names() == ["adamw", "sgd"]
    t = Trainer(_cfg(tmp_path / "a", "optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.001"),
                bundle=toy_bundle(), progress=False)
    assert isinstance(t.opt, torch.optim.AdamW) and t.opt.defaults["weight_decay"] == 0.001
    t = Trainer(_cfg(tmp_path / "b", "optim.nesterov=true"), bundle=toy_bundle(), progress=False)
    assert isinstance(t.opt, torch.optim.SGD) and t.opt.defaults["nesterov"]
    with pytest.raises(UserError, match="unknown optimizer"):
        Trainer(_cfg(tmp_path / "c", "optim.name=lbfgs"), bundle=toy_bundle(), progress=False)


def test_a_run_saved_before_the_trainer_took_over_the_other_systems_still_loads(tmp_path, monkeypatch):
    import yaml

    from lvmlt.training.trainer import check_resume, load_run

    cfg = _cfg(tmp_path, "optim.epochs=1")
    train(cfg, bundle=toy_bundle(), progress=False)
    path = tmp_path / "r" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    c = saved["config"]
    del c["optim"]["name"], c["system"]  # keys added since
    c["fusion"]["sam_only"] = c["synthetic"]["enabled"] = c["scilt"]["enabled"] = False  # mode flags of then
    c["synthetic"] |= {"features": "cl2n", "loss": "auto", "epochs": 100}  # keys retired since
    c["scilt"] |= {"loss": "logit_adjusted", "lr": 0.01}
    # A setting the older lvmlt ignored for this system (a config loaded today refuses it):
    # a finished run is read as it was made, so evaluate and --resume still take it.
    c["fusion"]["sam_norm"] = "cl2n"
    c["optim"]["channels_last"] = True
    del c["optim"]["memory_format"]
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert load_run(tmp_path / "r").optim.name == "sgd"
    assert load_run(tmp_path / "r").optim.memory_format == "auto"
    from lvmlt.cli import _resumed_config
    from lvmlt.training.trainer import evaluate_run

    assert _resumed_config(str(tmp_path / "r"), None, []).fusion.sam_norm == "cl2n"
    monkeypatch.setattr("lvmlt.data.build_data", lambda data: toy_bundle())  # the run's own data
    assert evaluate_run(tmp_path / "r", progress=False)["test"]["num_samples"] == 30
    check_resume(tmp_path / "r", cfg)  # the same run: nothing differs
    with pytest.raises(UserError, match="optim.name: 'sgd' -> 'adamw'"):
        check_resume(tmp_path / "r", _cfg(tmp_path, "optim.epochs=1", "optim.name=adamw"))
