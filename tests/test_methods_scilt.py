"""SciLT fusion, dual supervision, LoRA on the tiny TinyViT, and the stored-level checks."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers import feature_bundle, write_store
from lvmlt import systems
from lvmlt.config import SciLTConfig, load_config
from lvmlt.encoders.lora import LoRALinear, apply_lora
from lvmlt.errors import UserError
from lvmlt.losses.terms import TermParts, build_terms
from lvmlt.models.heads import count_trainable
from lvmlt.models.scilt import AdaptiveFusion, SciLTHead, build_encoder_scilt, inference_logits
from lvmlt.training.trainer import build_run, train

torch.set_num_threads(1)


@pytest.mark.parametrize("mode", ["sample", "channel"])
def test_adaptive_fusion_weights_are_input_dependent_and_sum_to_one(mode):
    torch.manual_seed(0)
    fusion = AdaptiveFusion(2, 6, mode)
    a, b = torch.randn(5, 6), torch.randn(5, 6)
    fused, w = fusion([a, b])
    assert torch.allclose(w.sum(dim=1), torch.ones_like(w.sum(dim=1)))
    assert (w >= 0).all()
    assert (w[0] - w[1]).abs().max() > 1e-3  # different images, different weights
    ww = w if w.ndim == 3 else w[:, :, None]
    torch.testing.assert_close(fused, ww[:, 0] * a + ww[:, 1] * b)
    fixed_fused, fixed_w = AdaptiveFusion(2, 6, "fixed")([a, b])
    torch.testing.assert_close(fixed_fused, (a + b) / 2)
    assert sum(p.numel() for p in AdaptiveFusion(2, 6, "fixed").parameters()) == 0


def test_fusion_starts_as_the_average_when_the_gate_is_zero():
    fusion = AdaptiveFusion(3, 4, "sample")
    nn.init.zeros_(fusion.gate.weight)
    _, w = fusion([torch.randn(2, 4) for _ in range(3)])
    torch.testing.assert_close(w, torch.full((2, 3), 1 / 3))


def test_dual_supervision_is_the_weighted_sum_of_per_head_cross_entropies():
    out = {
        "logits": torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
        "level_logits": [torch.tensor([[1.0, 1.0], [3.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]])],
    }
    batch = {"label": torch.tensor([0, 1])}
    cfg = load_config(None, ["system=scilt", "scilt.aux_weight=0.5"])
    parts = TermParts.of(cfg, np.array([5, 5]), 8, systems.of(cfg).outputs(cfg))
    terms = build_terms(cfg, parts)  # the trainer's objective: value x weight, summed
    values = {name: (v, t.weight) for name, t in terms.items() for name, v in t(out, batch).items()}

    def ce_hand(z, k):  # -log softmax(z)[k]
        return -(z[k] - math.log(sum(math.exp(v) for v in z)))

    fused = (ce_hand([2, 0], 0) + ce_hand([0, 1], 1)) / 2
    lv1 = (ce_hand([1, 1], 0) + ce_hand([3, 0], 1)) / 2
    lv2 = (ce_hand([0, 0], 0) + ce_hand([0, 2], 1)) / 2
    assert set(values) == {"baseline", "scilt_levels"}
    assert values["baseline"][0].item() == pytest.approx(fused, rel=1e-6)
    assert values["scilt_levels"][0].item() == pytest.approx(lv1 + lv2, rel=1e-6)
    total = sum(w * v for v, w in values.values())
    assert total.item() == pytest.approx(fused + 0.5 * (lv1 + lv2), rel=1e-6)
    mean = inference_logits(out, "mean")
    torch.testing.assert_close(mean, (out["logits"] + sum(out["level_logits"])) / 3)


def test_head_needs_a_projection_for_levels_of_different_widths():
    with pytest.raises(UserError, match="scilt.dim"):
        SciLTHead([320, 256], 4)
    head = SciLTHead([320, 256], 4, dim=32)
    out = head(torch.randn(3, 320), torch.randn(3, 256))
    assert out["logits"].shape == (3, 4) and len(out["level_logits"]) == 2


def test_lora_starts_as_identity_and_only_lora_parameters_train():
    from lvmlt.encoders import build_encoder

    enc = build_encoder("tiny_test", 64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = enc.forward_levels(x, ["stage3", "stage4"])
    attn = [m for m in enc.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)]
    expected = sum(
        8 * (m.qkv.in_features + m.qkv.out_features + m.proj.in_features + m.proj.out_features) for m in attn
    )
    n = apply_lora(enc, rank=8, alpha=16)
    assert n == expected > 0
    trainable = {name: p for name, p in enc.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == n
    assert all(name.endswith(("lora_a", "lora_b")) for name in trainable)
    assert sum(isinstance(m, LoRALinear) for m in enc.modules()) == 2 * len(attn)
    with torch.no_grad():
        after = enc.forward_levels(x, ["stage3", "stage4"])
    for k in before:
        torch.testing.assert_close(after[k], before[k])  # B = 0: exactly the frozen encoder
    enc.forward_levels(x, ["stage4"])["out"].float().pow(2).mean().backward()
    lora = [m for m in enc.modules() if isinstance(m, LoRALinear)]
    assert any(m.lora_b.grad is not None and m.lora_b.grad.abs().sum() > 0 for m in lora)
    assert all(p.grad is None for p in enc.parameters() if not p.requires_grad)


def test_encoder_scilt_end_to_end_counts_lora_and_head_parameters():
    from lvmlt.encoders import build_encoder

    cfg = dataclasses.replace(SciLTConfig(), levels=("stage3", "vec"), dim=32, lora_rank=4)
    model, n_lora = build_encoder_scilt(cfg, build_encoder("tiny_test", 64), num_classes=3)
    out = model(torch.randn(2, 3, 64, 64))
    assert out["logits"].shape == (2, 3) and out["weights"].shape == (2, 2)
    assert count_trainable(model) == n_lora + count_trainable(model.head)


def _levels_store(tmp_path, levels=True):
    """Three classes (60 / 20 / 6 training images): stage3 is informative, stage4 pure noise."""
    rng = np.random.default_rng(0)
    counts = {"train": [60, 20, 6], "val": [10, 10, 10], "test": [10, 10, 10]}
    arrays = {}
    for s, n in counts.items():
        y = np.repeat(np.arange(3), n)
        arrays[s] = {"vec": rng.normal(size=(len(y), 4)).astype(np.float32)}
        if levels:
            arrays[s] |= {
                "level_stage3": (rng.normal(size=(len(y), 8)) + 3 * np.eye(8)[y]).astype(np.float32),
                "level_stage4": rng.normal(size=(len(y), 8)).astype(np.float32),
            }
    bundle = feature_bundle(counts)
    return bundle, write_store(tmp_path / "store", bundle, arrays)


def _scilt_cfg(tmp_path, store, *extra):
    from lvmlt.experiments.recipes import SCILT

    recipe = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SCILT.items()]
    return load_config(None, [
        *recipe, f"fusion.store={store}", "optim.epochs=30", "data.batch_size=32", "device=cpu",
        "optim.precision=fp32", "data.num_workers=0", "eval.many_threshold=50", "eval.few_threshold=10",
        f"out_dir={tmp_path / 'runs'}", "run_name=r", *extra,
    ])


def test_missing_levels_are_a_user_error_that_says_how_to_extract_them(tmp_path):
    bundle, store = _levels_store(tmp_path, levels=False)
    with pytest.raises(UserError, match=r"pooled level\(s\) \['stage3', 'stage4'\].*has none.*levels=\[stage3,stage4\]"):
        build_run(_scilt_cfg(tmp_path, store), bundle)


def test_scilt_trained_by_the_trainer_on_stored_levels_reports_weights_and_parameters(tmp_path):
    bundle, store = _levels_store(tmp_path)
    cfg = _scilt_cfg(tmp_path, store, "seed=0")
    m = train(cfg, bundle=bundle, progress=False)
    assert m["trainable_params"] == (16 * 2 + 2) + 3 * (3 * 8)  # gate + three cosine heads
    assert m["test"]["mean_class_acc"] > 80
    history = [json.loads(line) for line in (tmp_path / "runs/r/history.jsonl").read_text().splitlines()]
    assert {"train/baseline", "train/scilt_levels"} <= set(history[0])  # dual supervision: both terms
    # The fusion weights of the selected checkpoint on the test split: the gate trusts stage3.
    run = build_run(cfg, bundle, load_init=False)
    run.model.load_state_dict(torch.load(tmp_path / "runs/r/checkpoints/best.pt", weights_only=False)["model"])
    run.model.eval()
    with torch.no_grad():
        w = torch.cat([run.model(b)["weights"] for b in run.loaders["test"]]).mean(dim=0)
    assert w.sum().item() == pytest.approx(1.0) and w[0] > w[1]
    # Standardised per level by the feature dataset, with training statistics.
    x = run.splits["train"].arrays["level/stage3"]
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)


def test_scilt_inference_mean_averages_all_heads_in_evaluation_only(tmp_path):
    bundle, store = _levels_store(tmp_path)
    run = build_run(_scilt_cfg(tmp_path, store, "scilt.inference=mean"), bundle)
    batch = next(iter(run.loaders["val"]))
    run.model.train()
    out = run.model(batch)
    torch.testing.assert_close(out["logits"], run.model.head(batch["level/stage3"], batch["level/stage4"])["logits"])
    run.model.eval()
    ev = run.model(batch)
    torch.testing.assert_close(ev["logits"], torch.stack([out["logits"], *out["level_logits"]]).mean(dim=0))
