"""system=sam_finetune: the SAM encoder's last stages trained on images, the rest frozen."""

import pytest
import torch

from helpers import toy_bundle
from lvmlt.config import load_config
from lvmlt.data.transforms import build_transform
from lvmlt.encoders import build_encoder
from lvmlt.errors import UserError
from lvmlt.rundir import load_checkpoint
from lvmlt.systems import build_model
from lvmlt.training import runtime
from lvmlt.training.trainer import train


def _cfg(tmp_path, *extra):
    return load_config(None, [
        "system=sam_finetune", "finetune.encoder=tiny_test", "data.image_size=64", "optim.epochs=2",
        "data.batch_size=16", "optim.lr=0.01", "optim.name=adamw", "optim.precision=fp32", f"out_dir={tmp_path}",
        "run_name=ft", *extra,
    ])


def _bundle64():
    b = toy_bundle()
    for s in b.splits().values():
        s.transform = build_transform(64, s.name == "train")
    return b


def test_only_the_last_stages_train_and_the_frozen_ones_match_the_encoder(tmp_path):
    m = train(_cfg(tmp_path, "finetune.stages=1"), bundle=_bundle64(), progress=False)
    assert 0 <= m["test"]["top1"] <= 100
    state = load_checkpoint(tmp_path / "ft" / "checkpoints" / "last.pt")["model"]
    ref = build_encoder("tiny_test", 64).vit.state_dict()
    changed = {k for k, v in ref.items() if not torch.equal(state["vit." + k], v)}
    assert changed and all(k.startswith(("layers.3.", "neck.")) for k in changed), sorted(changed)[:5]


@pytest.mark.parametrize("engine", ["openvino", "torch"])
def test_frozen_stages_through_the_engine_equal_torch(engine):
    cfg = _cfg("unused", "finetune.stages=2", f"finetune.engine={engine}")
    model = build_model(cfg, 3).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model.vit.patch_embed(x)
        for layer in model.vit.layers[:2]:
            want = layer(want)
        with runtime.autocast(torch.device("cpu"), "fp32"):
            got = model._frozen_tokens(x)
    assert (model._runner.compiled is not None) == (engine == "openvino")
    assert got.shape == want.shape
    assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.9999


def test_full_fine_tuning_trains_the_patch_embedding_too():
    model = build_model(_cfg("unused", "finetune.stages=4"), 3)
    assert all(p.requires_grad for p in model.vit.patch_embed.parameters())
    assert model.frozen == []


def test_sizes_and_stages_are_checked_in_one_line():
    with pytest.raises(UserError, match="multiple of 64"):
        _cfg("unused", "data.image_size=96")
    with pytest.raises(UserError, match="finetune.stages=9"):
        build_model(_cfg("unused", "finetune.stages=9"), 3)
    with pytest.raises(UserError, match="fusion.map"):
        _cfg("unused", "fusion.map=true")


def test_a_finetuned_run_predicts_from_its_directory_and_refuses_export_in_one_line(tmp_path):
    import numpy as np

    from lvmlt.deploy.export import export_bundle
    from lvmlt.deploy.run_model import RunModel

    b = _bundle64()
    train(_cfg(tmp_path, "finetune.stages=1", "optim.epochs=1"), bundle=b, progress=False)
    with pytest.raises(UserError, match="system=sam_finetune run, which lvmlt cannot export"):
        export_bundle(tmp_path / "ft", tmp_path / "bundle", log=lambda s: None)
    assert not (tmp_path / "bundle").exists()
    model = RunModel(tmp_path / "ft", log=lambda s: None)
    x = np.stack([b.test.transform(b.test.load(i)).numpy() for i in range(6)])
    logits = model.classify({"image": x})
    saved = np.load(tmp_path / "ft" / "predictions.npz")["test_logits"][:6]
    assert logits.shape == (6, 3) and (logits.argmax(1) == saved.argmax(1)).all()


def test_scilt_end_to_end_fuses_the_trained_stages_with_dual_supervision(tmp_path):
    import json

    m = train(_cfg(tmp_path, "finetune.stages=2", "finetune.head=scilt", "scilt.aux_weight=0.5"), bundle=_bundle64(),
              progress=False)
    assert 0 <= m["test"]["top1"] <= 100
    hist = [json.loads(x) for x in (tmp_path / "ft" / "history.jsonl").read_text().splitlines()]
    assert hist[-1]["train/scilt_levels"] > 0  # a head on each of the two stages, besides the fused one
    model = build_model(_cfg("unused", "finetune.head=scilt"), 3).eval()
    out = model({"image": torch.randn(2, 3, 64, 64)})
    from lvmlt import outputs as o

    w = out[o.LEVEL_WEIGHTS]
    assert len(out[o.LEVEL_LOGITS]) == 2 and w.shape == (2, 2) and torch.allclose(w.sum(1), torch.ones(2))
