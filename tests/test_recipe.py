"""The strong recipe's parts: dihedral symmetries, mixup / cutmix, label smoothing, EMA, MaxNorm, policies."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms as T

from helpers import toy_bundle, train_killed_then_resumed
from lvmlt.config import load_config
from lvmlt.data.build import dihedral_on
from lvmlt.data.transforms import build_transform
from lvmlt.errors import UserError
from lvmlt.losses import build_loss
from lvmlt.rundir import load_checkpoint
from lvmlt.training import recipe
from lvmlt.training.trainer import train


def _cfg(tmp_path, *extra):
    return load_config(
        None,
        ["model.backbone=resnet8", "optim.epochs=2", f"out_dir={tmp_path}", "run_name=r", "data.batch_size=16",
         "optim.lr=0.05", "optim.precision=fp32", *extra],
    )


def test_dihedral_turns_image_and_map_together_and_covers_the_group():
    torch.manual_seed(0)
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8).repeat(16, 1, 1, 1)
    # the "map" is the image's 2x2 average pool: a correct turn keeps map == pool(image)
    batch = {"image": img, "sam_map": F.avg_pool2d(img[:, :1], 2), "sam_vec": torch.randn(32, 5),
             "label": torch.zeros(32, dtype=torch.long)}
    out = recipe.BatchDihedral()(batch)
    assert torch.equal(out["sam_map"], F.avg_pool2d(out["image"][:, :1], 2))
    assert torch.equal(out["sam_vec"], batch["sam_vec"])  # not spatial: untouched
    # exact: every output is a permutation of its input's pixels
    assert torch.equal(out["image"].flatten(1).sort(1).values, img.flatten(1).sort(1).values)
    assert len({tuple(recipe._dihedral(img[0], k)[0].flatten().tolist()) for k in range(8)}) == 8
    many = recipe.BatchDihedral()({"image": img[:1].repeat(64, 1, 1, 1)})["image"]
    assert len({tuple(many[i, 0].flatten().tolist()) for i in range(64)}) == 8  # the whole group is drawn


def test_dihedral_keeps_channels_last():
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    out = recipe.BatchDihedral()({"image": x})
    assert out["image"].is_contiguous(memory_format=torch.channels_last)


def test_dihedral_is_on_where_the_dataset_declares_it():
    assert not dihedral_on(load_config(None, []).data, {"dihedral": True})  # off by default
    cfg = load_config(None, ["data.dihedral=auto"])
    assert dihedral_on(cfg.data, {"dihedral": True}) and not dihedral_on(cfg.data, {})
    assert dihedral_on(load_config(None, ["data.dihedral=always"]).data, {})
    assert not dihedral_on(load_config(None, ["data.dihedral=never"]).data, {"dihedral": True})
    assert not dihedral_on(load_config(None, ["data.augment=false", "data.dihedral=auto"]).data, {"dihedral": True})


def test_mixup_mixes_images_and_features_with_the_weight_of_the_targets():
    torch.manual_seed(1)
    mixer = recipe.BatchMixer(mixup=1.0, cutmix=0.0, prob=1.0, num_classes=4)
    x, v = torch.randn(6, 3, 8, 8), torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    mixed, paired, lam = mixer({"image": x, "sam_vec": v, "label": y})
    assert 0.0 <= lam <= 1.0
    assert torch.allclose(mixed["image"], lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert torch.allclose(mixed["sam_vec"], lam * v + (1 - lam) * v.flip(0), atol=1e-6)
    assert torch.equal(paired["label"], y.flip(0)) and torch.equal(mixed["label"], y)
    assert torch.equal(x, x.clone()) and not torch.equal(mixed["image"], x)  # the input batch is kept
    assert mixer({"image": x[:5], "label": y[:5]}) is None  # odd batch: timm needs pairs


def test_cutmix_weight_is_the_pasted_area():
    torch.manual_seed(2)
    mixer = recipe.BatchMixer(mixup=0.0, cutmix=1.0, prob=1.0, num_classes=3)
    x = torch.zeros(4, 1, 16, 16)
    x[:2] = 1.0  # the reverse pairs 0<->3, 1<->2: ones meet zeros
    mixed, _, lam = mixer({"image": x, "label": torch.tensor([0, 1, 2, 0])})
    kept = float(mixed["image"][0].mean())  # share of image 0 still its own
    assert kept == pytest.approx(lam, abs=1e-6)


def test_mixing_refuses_terms_that_update_in_forward(tmp_path):
    with pytest.raises(UserError, match="cannot be combined with proco.enabled"):
        recipe.build_mixer(load_config(None, ["data.mixup=0.2", "proco.enabled=true", "loss.name=logit_adjusted"]), 3)
    assert recipe.build_mixer(load_config(None, []), 3) is None


def test_label_smoothing_in_the_softmax_losses():
    counts = np.array([50, 10, 2])
    logits, y = torch.randn(7, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    for name, shift in (("ce", 0.0), ("balanced_softmax", 1.0)):
        cfg = load_config(None, [f"loss.name={name}", "loss.label_smoothing=0.2"]).loss
        z = logits + shift * torch.log(torch.tensor(counts / counts.sum(), dtype=torch.float32))
        target = torch.full((7, 3), 0.2 / 3).scatter_(1, y[:, None], 1 - 0.2 + 0.2 / 3)
        want = -(target * z.log_softmax(1)).sum(1).mean()
        assert float(build_loss(cfg, counts, 1)(logits, y)) == pytest.approx(float(want), rel=1e-5)
    with pytest.raises(UserError, match="loss.label_smoothing"):
        load_config(None, ["loss.name=focal", "loss.label_smoothing=0.1"])


def test_max_norm_projects_only_rows_outside_the_ball():
    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4, 0, 0], [0.1, 0, 0, 0], [0, 0, 6, 8]]))
    recipe.max_norm_([lin], 2.0)
    assert lin.weight.norm(dim=1).tolist() == pytest.approx([2.0, 0.1, 2.0], rel=1e-5)
    assert lin.weight[0].tolist() == pytest.approx([1.2, 1.6, 0, 0], rel=1e-5)  # direction kept


def test_policy_is_torchvisions_and_unknown_policies_are_refused():
    tf = build_transform(32, train=True, policy="trivialaugment")
    assert any(isinstance(op, T.TrivialAugmentWide) for op in tf.transforms)
    assert not any(isinstance(op, T.TrivialAugmentWide) for op in build_transform(32, train=False, policy="trivialaugment").transforms)
    with pytest.raises(UserError):
        load_config(None, ["data.policy=autoaugment"])


def test_ema_run_saves_the_average_as_its_model_and_resumes(tmp_path, monkeypatch):
    extra = ("optim.ema=0.9", "data.mixup=0.4", "data.cutmix=1.0", "loss.label_smoothing=0.1", "optim.max_norm=1.5",
             "data.dihedral=always", "data.policy=trivialaugment", "optim.epochs=3")
    m = train(_cfg(tmp_path / "a", *extra), bundle=toy_bundle(), progress=False)
    assert np.isfinite(m["test"]["top1"])
    best = load_checkpoint(tmp_path / "a" / "r" / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "a" / "r" / "checkpoints" / "last.pt")
    w = "head.weight"
    assert last["ema"] is not None and not torch.equal(last["model"][w], last["ema"][w])
    if best["epoch"] == last["epoch"]:
        assert torch.equal(best["model"][w], last["ema"][w])  # the best checkpoint holds the average
    assert float(last["model"][w].norm(dim=1).max()) <= 1.5 + 1e-5  # MaxNorm after every step
    # a kill before the last epoch resumes to the same weights, the average included
    train_killed_then_resumed(lambda: _cfg(tmp_path / "b", *extra), monkeypatch)
    again = load_checkpoint(tmp_path / "b" / "r" / "checkpoints" / "last.pt")
    for k in ("model", "ema"):
        assert torch.allclose(again[k][w], last[k][w], atol=1e-6), k


def test_yaml_numbers_without_a_dot_are_floats(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5E-4\n")
    cfg = load_config(str(cfg_file), ["optim.ema=9.99e-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.ema) == (1e-3, 5e-4, 0.999)
    with pytest.raises(UserError, match="wrong type"):
        load_config(None, ["optim.lr=fast"])
