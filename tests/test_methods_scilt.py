"""SciLT fusion, dual supervision, LoRA on the tiny TinyViT, and the stored-level checks."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from lvmlt.config import LossConfig, SciLTConfig
from lvmlt.errors import UserError
from lvmlt.losses import build_loss
from lvmlt.methods.common import load_levels
from lvmlt.methods.scilt import (
    AdaptiveFusion,
    LoRALinear,
    SciLTHead,
    apply_lora,
    build_encoder_scilt,
    dual_supervision_loss,
    fit_scilt,
    inference_logits,
)

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
    y = torch.tensor([0, 1])
    ce = build_loss(LossConfig(name="ce"), np.array([5, 5]), 1)
    terms = dual_supervision_loss(out, y, ce, aux_weight=0.5)

    def ce_hand(z, k):  # -log softmax(z)[k]
        return -(z[k] - math.log(sum(math.exp(v) for v in z)))

    fused = (ce_hand([2, 0], 0) + ce_hand([0, 1], 1)) / 2
    lv1 = (ce_hand([1, 1], 0) + ce_hand([3, 0], 1)) / 2
    lv2 = (ce_hand([0, 0], 0) + ce_hand([0, 2], 1)) / 2
    assert terms["fused"].item() == pytest.approx(fused, rel=1e-6)
    assert terms["levels"].item() == pytest.approx(lv1 + lv2, rel=1e-6)
    assert terms["total"].item() == pytest.approx(fused + 0.5 * (lv1 + lv2), rel=1e-6)
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
    from lvmlt.methods.common import count_trainable

    cfg = dataclasses.replace(SciLTConfig(), levels=("stage3", "vec"), dim=32, lora_rank=4)
    model, n_lora = build_encoder_scilt(cfg, build_encoder("tiny_test", 64), num_classes=3)
    out = model(torch.randn(2, 3, 64, 64))
    assert out["logits"].shape == (2, 3) and out["weights"].shape == (2, 2)
    assert count_trainable(model) == n_lora + count_trainable(model.head)


def test_missing_levels_are_a_user_error_that_says_how_to_extract_them(tmp_path):
    class Split:
        levels: dict = {}
        vec = np.zeros((2, 4), np.float32)
        bad: dict = {}

    class Store:
        root = tmp_path

        def check(self, bundle):
            pass

        def split(self, name):
            return Split()

    class Bundle:
        def splits(self):
            return {"train": None, "val": None, "test": None}

    with pytest.raises(UserError, match=r"no pooled level 'stage3'.*levels=\[stage3,stage4\]"):
        load_levels(Store(), Bundle(), ["stage3", "stage4"])


def test_fit_scilt_on_toy_levels_reports_weights_and_parameters():
    rng = np.random.default_rng(0)
    levels, labels = {}, {}
    for s, n in (("train", [60, 20, 6]), ("val", [10, 10, 10]), ("test", [10, 10, 10])):
        y = np.repeat(np.arange(3), n)
        levels[s] = {
            "stage3": (rng.normal(size=(len(y), 8)) + 3 * np.eye(8)[y]).astype(np.float32),
            "stage4": rng.normal(size=(len(y), 8)).astype(np.float32),  # pure noise
        }
        labels[s] = y
    cfg = dataclasses.replace(SciLTConfig(), epochs=30, batch_size=32)
    r = fit_scilt(levels, labels, 3, {"many_threshold": 50, "few_threshold": 10}, cfg, seed=0)
    assert r.trainable_params == (16 * 2 + 2) + 3 * (3 * 8)  # gate + three cosine heads
    assert r.test["mean_class_acc"] > 80
    w = r.info["mean_fusion_weight"]
    assert w["stage3"] + w["stage4"] == pytest.approx(1.0)
    assert w["stage3"] > w["stage4"]  # the gate learns to trust the informative level
