"""Losses against values computed by hand (plain ``math``), plus edge cases.

Expected numbers are written out independently of the implementation: a row's
cross-entropy is log(sum_j exp z_j) - z_y.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lvmlt.config import LossConfig
from lvmlt.errors import UserError
from lvmlt.losses import LOSSES, build_loss

LOGITS = [[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]]
TARGETS = [0, 2]
COUNTS = [60, 30, 10]  # prior 0.6, 0.3, 0.1

ALL_CONFIGS = [
    LossConfig(name="ce"),
    LossConfig(name="balanced_softmax"),
    LossConfig(name="logit_adjusted", tau=0.7),
    LossConfig(name="ldam_drw", drw_epoch=0),  # DRW weights on from the start
    LossConfig(name="ldam_drw"),  # DRW off until 80% of the epochs
    LossConfig(name="focal"),
    LossConfig(name="class_balanced", cb_beta=0.99),
    LossConfig(name="class_balanced", cb_beta=0.99, cb_base="focal"),
]


def _id(cfg: LossConfig) -> str:
    return f"{cfg.name}-{cfg.cb_base}-{cfg.drw_epoch}"


def ce_row(z: list[float], y: int) -> float:
    return math.log(sum(math.exp(v) for v in z)) - z[y]


def loss_value(cfg: LossConfig, logits=LOGITS, targets=TARGETS, counts=COUNTS, epochs: int = 10) -> float:
    fn = build_loss(cfg, np.array(counts), epochs)
    out = fn(torch.tensor(logits), torch.tensor(targets))
    assert out.shape == () and out.dtype == torch.float32
    return out.item()


HAND_CE = (ce_row(LOGITS[0], 0) + ce_row(LOGITS[1], 2)) / 2


def test_registry_names():
    assert LOSSES.names() == sorted(
        ["ce", "balanced_softmax", "logit_adjusted", "ldam_drw", "focal", "class_balanced"]
    )


def test_ce_hand_value():
    # row 0: log(e^2 + e^1 + e^0.1) - 2 = 0.41703; row 1: log(e^.5 + e^2.5 + e^-1) + 1 = 3.65318
    assert HAND_CE == pytest.approx((0.417030 + 3.653178) / 2, abs=1e-5)
    assert loss_value(LossConfig(name="ce")) == pytest.approx(HAND_CE, rel=1e-6)


def test_balanced_softmax_hand_value():
    log_p = [math.log(0.6), math.log(0.3), math.log(0.1)]
    adj = [[z + lp for z, lp in zip(row, log_p, strict=True)] for row in LOGITS]
    expected = (ce_row(adj[0], 0) + ce_row(adj[1], 2)) / 2
    assert loss_value(LossConfig(name="balanced_softmax")) == pytest.approx(expected, rel=1e-6)


def test_balanced_softmax_equals_ce_when_balanced():
    got = loss_value(LossConfig(name="balanced_softmax"), counts=[7, 7, 7])
    assert got == pytest.approx(HAND_CE, rel=1e-6)


def test_logit_adjusted_hand_value_and_tau_zero():
    tau = 0.5
    log_p = [math.log(0.6), math.log(0.3), math.log(0.1)]
    adj = [[z + tau * lp for z, lp in zip(row, log_p, strict=True)] for row in LOGITS]
    expected = (ce_row(adj[0], 0) + ce_row(adj[1], 2)) / 2
    assert loss_value(LossConfig(name="logit_adjusted", tau=tau)) == pytest.approx(expected, rel=1e-6)
    assert loss_value(LossConfig(name="logit_adjusted", tau=0.0)) == pytest.approx(HAND_CE, rel=1e-6)


def test_logit_adjusted_tau_one_is_balanced_softmax():
    a = loss_value(LossConfig(name="logit_adjusted", tau=1.0))
    b = loss_value(LossConfig(name="balanced_softmax"))
    assert a == pytest.approx(b, rel=1e-6)


# ----------------------------------------------------------------------------- LDAM-DRW

LDAM_LOGITS = [[0.3, -0.2], [0.1, 0.4]]
LDAM_TARGETS = [0, 1]
LDAM_COUNTS = [100, 10]
# m_c ~ n_c^(-1/4): 100^(-1/4) / 10^(-1/4) = 10^(-1/4); the rarest class gets 0.5.
LDAM_MARGINS = [0.5 * 10**-0.25, 0.5]


def _ldam_rows(scale: float) -> list[float]:
    m0, m1 = LDAM_MARGINS
    z0 = [scale * (0.3 - m0), scale * -0.2]
    z1 = [scale * 0.1, scale * (0.4 - m1)]
    return [ce_row(z0, 0), ce_row(z1, 1)]


def test_ldam_margins_for_100_and_10():
    fn = build_loss(LossConfig(name="ldam_drw", ldam_max_margin=0.5), np.array(LDAM_COUNTS), 10)
    assert fn.margins.tolist() == pytest.approx([0.281171, 0.5], abs=1e-6)
    assert fn.margins.tolist() == pytest.approx(LDAM_MARGINS, rel=1e-6)


@pytest.mark.parametrize("scale", [30.0, 2.0])
def test_ldam_hand_value_before_drw(scale):
    cfg = LossConfig(name="ldam_drw", ldam_scale=scale, drw_epoch=5)
    l0, l1 = _ldam_rows(scale)
    got = loss_value(cfg, LDAM_LOGITS, LDAM_TARGETS, LDAM_COUNTS)
    assert got == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_drw_weights_switch_on_exactly_at_drw_epoch():
    beta = 0.9
    cfg = LossConfig(name="ldam_drw", ldam_scale=2.0, drw_epoch=3, drw_beta=beta)
    fn = build_loss(cfg, np.array(LDAM_COUNTS), epochs=10)
    # Effective-number weights (1 - b) / (1 - b^n), normalised to sum to C = 2.
    raw = [(1 - beta) / (1 - beta**100), (1 - beta) / (1 - beta**10)]
    w0, w1 = (2 * r / sum(raw) for r in raw)
    assert fn.drw_weights.tolist() == pytest.approx([w0, w1], rel=1e-6)
    l0, l1 = _ldam_rows(2.0)
    plain, weighted = (l0 + l1) / 2, (w0 * l0 + w1 * l1) / (w0 + w1)
    assert abs(plain - weighted) > 1e-3  # the example can tell them apart
    logits, targets = torch.tensor(LDAM_LOGITS), torch.tensor(LDAM_TARGETS)
    for epoch in range(10):
        fn.set_epoch(epoch)
        expected = weighted if epoch >= 3 else plain
        assert fn(logits, targets).item() == pytest.approx(expected, rel=1e-5), epoch


def test_drw_default_epoch_is_80_percent():
    fn = build_loss(LossConfig(name="ldam_drw", drw_epoch=-1), np.array(LDAM_COUNTS), epochs=10)
    assert fn.drw_epoch == 8
    fn.set_epoch(7)
    assert not fn.drw_active
    fn.set_epoch(8)
    assert fn.drw_active


def test_set_epoch_is_a_noop_for_other_losses():
    for cfg in ALL_CONFIGS:
        if cfg.name == "ldam_drw":
            continue
        fn = build_loss(cfg, np.array(COUNTS), 10)
        before = fn(torch.tensor(LOGITS), torch.tensor(TARGETS)).item()
        fn.set_epoch(9)
        assert fn(torch.tensor(LOGITS), torch.tensor(TARGETS)).item() == before


# ----------------------------------------------------------------------------- focal, CB


def _focal_row(z: list[float], y: int, gamma: float) -> float:
    p = math.exp(z[y]) / sum(math.exp(v) for v in z)
    return -((1 - p) ** gamma) * math.log(p)


def test_focal_hand_value():
    gamma = 2.0
    expected = (_focal_row(LOGITS[0], 0, gamma) + _focal_row(LOGITS[1], 2, gamma)) / 2
    assert loss_value(LossConfig(name="focal", focal_gamma=gamma)) == pytest.approx(expected, rel=1e-5)


def test_focal_gamma_zero_is_ce():
    assert loss_value(LossConfig(name="focal", focal_gamma=0.0)) == pytest.approx(HAND_CE, rel=1e-6)


def _cb_weights(counts: list[int], beta: float) -> list[float]:
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    return [len(raw) * r / sum(raw) for r in raw]


def test_class_balanced_ce_hand_value():
    w = _cb_weights(COUNTS, 0.9)
    expected = (w[0] * ce_row(LOGITS[0], 0) + w[2] * ce_row(LOGITS[1], 2)) / 2
    got = loss_value(LossConfig(name="class_balanced", cb_beta=0.9))
    assert got == pytest.approx(expected, rel=1e-5)


def test_class_balanced_focal_hand_value():
    w = _cb_weights(COUNTS, 0.9)
    rows = [_focal_row(LOGITS[0], 0, 1.5), _focal_row(LOGITS[1], 2, 1.5)]
    expected = (w[0] * rows[0] + w[2] * rows[1]) / 2
    cfg = LossConfig(name="class_balanced", cb_beta=0.9, cb_base="focal", focal_gamma=1.5)
    assert loss_value(cfg) == pytest.approx(expected, rel=1e-5)


def test_class_balanced_beta_zero_is_ce():
    assert loss_value(LossConfig(name="class_balanced", cb_beta=0.0)) == pytest.approx(HAND_CE, rel=1e-6)


def test_class_balanced_beta_one_is_inverse_frequency():
    fn = build_loss(LossConfig(name="class_balanced", cb_beta=1.0), np.array([10, 40]), 10)
    # 1/n normalised to sum to 2: [0.1, 0.025] * 2 / 0.125
    assert fn.weights.tolist() == pytest.approx([1.6, 0.4], rel=1e-6)


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=_id)
def test_ignored_targets_are_skipped(cfg):
    fn = build_loss(cfg, np.array(COUNTS), 10)
    logits = torch.tensor([LOGITS[0], [9.0, -9.0, 3.0], LOGITS[1]])
    with_skip = fn(logits, torch.tensor([0, -1, 2])).item()
    valid_only = fn(torch.tensor(LOGITS), torch.tensor(TARGETS)).item()
    assert with_skip == pytest.approx(valid_only, rel=1e-6)


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=_id)
def test_all_ignored_batch_is_zero_with_grad(cfg):
    fn = build_loss(cfg, np.array(COUNTS), 10)
    logits = torch.tensor(LOGITS, requires_grad=True)
    out = fn(logits, torch.tensor([-1, -1]))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=_id)
def test_bf16_autocast_computes_in_float32(cfg):
    torch.manual_seed(0)
    fn = build_loss(cfg, np.array(COUNTS), 10)
    layer = torch.nn.Linear(4, 3)
    x, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 2, -1, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        out = fn(logits, targets)
    assert logits.dtype == torch.bfloat16
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert out.item() == pytest.approx(fn(logits.float(), targets).item(), rel=1e-6)
    out.backward()
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=_id)
def test_zero_count_class_has_finite_loss_and_grad(cfg):
    counts = np.array([50, 5, 0])
    fn = build_loss(cfg, counts, 10)
    for buf in fn.buffers():
        assert torch.isfinite(buf).all()
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.1, 3.0], [-2.0, 0.5, 0.0]], requires_grad=True)
    out = fn(logits, torch.tensor([2, 2, 1]))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(logits.grad).all()


def test_class_counts_are_buffers_that_follow_the_module():
    fn = build_loss(LossConfig(name="balanced_softmax"), np.array(COUNTS), 10)
    assert "log_prior" in fn.state_dict()
    fn = fn.to(torch.float64)  # moved like model parameters; the loss still runs in float32
    out = fn(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(TARGETS))
    assert out.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_losses_run_on_cuda():
    for cfg in ALL_CONFIGS:
        fn = build_loss(cfg, np.array(COUNTS), 10).to("cuda")
        cpu = loss_value(cfg)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn(torch.tensor(LOGITS, device="cuda"), torch.tensor(TARGETS, device="cuda"))
        assert out.device.type == "cuda" and out.item() == pytest.approx(cpu, rel=1e-5)


def test_bad_settings_are_user_errors():
    counts = np.array(COUNTS)
    with pytest.raises(UserError, match="unknown loss 'nope'"):
        build_loss(LossConfig(name="nope"), counts, 10)
    with pytest.raises(UserError, match="loss.cb_base"):
        build_loss(LossConfig(name="class_balanced", cb_base="bce"), counts, 10)
    with pytest.raises(UserError, match="loss.drw_beta"):
        build_loss(LossConfig(name="ldam_drw", drw_beta=1.5), counts, 10)
    with pytest.raises(UserError, match="loss.focal_gamma"):
        build_loss(LossConfig(name="focal", focal_gamma=-1.0), counts, 10)


def test_shape_mismatch_is_a_clear_error():
    fn = build_loss(LossConfig(name="ce"), np.array(COUNTS), 10)
    with pytest.raises(ValueError, match="B x 3"):
        fn(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="targets"):
        fn(torch.zeros(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="non-negative"):
        build_loss(LossConfig(name="ce"), np.array([3, -1]), 10)


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.integers(0, 1000), min_size=2, max_size=5),
    seed=st.integers(0, 2**16),
    cfg_index=st.integers(0, len(ALL_CONFIGS) - 1),
)
def test_losses_are_finite_and_non_negative(counts, seed, cfg_index):
    g = torch.Generator().manual_seed(seed)
    c = len(counts)
    logits = 5 * torch.randn(4, c, generator=g)
    targets = torch.randint(-1, c, (4,), generator=g)
    out = build_loss(ALL_CONFIGS[cfg_index], np.array(counts), 10)(logits, targets)
    assert torch.isfinite(out) and out.item() >= 0.0


@settings(max_examples=20, deadline=None)
@given(counts=st.lists(st.integers(1, 500), min_size=3, max_size=3), factor=st.integers(2, 50))
def test_balanced_softmax_depends_only_on_the_prior(counts, factor):
    a = loss_value(LossConfig(name="balanced_softmax"), counts=counts)
    b = loss_value(LossConfig(name="balanced_softmax"), counts=[factor * n for n in counts])
    assert a == pytest.approx(b, rel=1e-5)
