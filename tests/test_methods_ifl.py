"""IFL: environments from predictions, the shared-centre term, and the GLT protocol on ELPV."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from helpers import toy_bundle
from lvmlt.config import IFLConfig, load_config
from lvmlt.data.base import DataBundle, ImageSplit
from lvmlt.data.glt import GLTSpec, attribute_accuracy, elpv_glt_bundles, glt_bundles
from lvmlt.errors import UserError
from lvmlt.losses import TERMS
from lvmlt.losses.ifl import IFLTerm, environment_weights, irm_penalty, resolve_schedule

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- environments


def test_environment_weights_follow_the_authors_formula_on_a_hand_example():
    s = np.array([0.9, 0.8, 0.5, 0.1, 0.95])  # true-class confidences of one class
    w = environment_weights(s, np.zeros(5, int), 1, env_scale=4.0, min_scores=5)
    sn = (s - 0.1) / (0.95 - 0.1 + 1e-9)
    v = np.abs(1 - sn) + 1e-5
    vs = np.sort(v)
    r = vs[4:].mean() / vs[:4].mean() + 1e-5  # top 20 % (1 image) over bottom 80 % (4 images)
    gamma = min(max(math.log(4) / math.log(r), 1), 10)
    expected = v**gamma + 1e-12
    np.testing.assert_allclose(w, expected / expected.sum())
    assert w.sum() == pytest.approx(1.0)
    assert np.argmax(w) == 3 and np.argmin(w) == 4  # least confident weighs most


def test_the_tail_is_the_largest_fifth_as_in_the_authors_code_also_when_n_is_not_a_multiple_of_5():
    # n = 7: int(0.8 n) = 5 values in the head mean, int(0.2 n) = 1 in the tail mean; the
    # sixth is in neither (taking all n - int(0.8 n) = 2 as the tail gives gamma 1.89).
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9])
    w = environment_weights(s, np.zeros(7, int), 1, env_scale=4.0, min_scores=5)
    v = np.abs(1 - (s - 0.1) / (0.8 + 1e-9)) + 1e-5  # 1, .875, .75, .625, .5, .375, 0 (+1e-5)
    head = (0 + 0.375 + 0.5 + 0.625 + 0.75 + 5 * 1e-5) / 5  # the five smallest
    r = (1.0 + 1e-5) / head + 1e-5  # the largest one
    gamma = math.log(4) / math.log(r)
    assert gamma == pytest.approx(1.736, abs=1e-3)
    expected = v**gamma + 1e-12
    np.testing.assert_allclose(w, expected / expected.sum(), rtol=1e-6)


def test_environment_two_is_class_balanced_and_hard_first_inside_each_class():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [50, 10, 3])
    scores = rng.uniform(0.05, 0.95, size=len(labels))
    scores[5] = np.nan  # not drawn in the scoring epoch: its class's mean weight
    w = environment_weights(scores, labels, 3, min_scores=5)
    for c in range(3):
        assert w[labels == c].sum() == pytest.approx(1.0)  # every class the same mass
    np.testing.assert_allclose(w[labels == 2], 1 / 3)  # < 5 scored images: uniform
    c0 = np.flatnonzero(labels == 0)
    seen = c0[np.isfinite(scores[c0])]
    assert w[seen[np.argmin(scores[seen])]] == w[seen].max()
    assert w[5] == pytest.approx(w[seen].mean())
    hard = scores[seen] < np.median(scores[seen])
    assert w[seen][hard].sum() > 2 * w[seen][~hard].sum()  # low confidence is up-weighted


def test_schedule_defaults_to_60_and_80_percent():
    assert resolve_schedule(IFLConfig(), 100) == (60, 80)
    assert resolve_schedule(IFLConfig(), 10) == (6, 8)
    with pytest.raises(UserError, match="warmup_epochs"):
        resolve_schedule(IFLConfig(warmup_epochs=0), 10)


# ----------------------------------------------------------------------------- the term


def _term(counts, dim=2, **kw):
    cfg = dataclasses.replace(IFLConfig(enabled=True, warmup_epochs=1, step_epoch=2), **kw)
    probs = np.asarray(counts) / np.sum(counts)  # the instance sampler
    return IFLTerm(counts, dim, cfg, epochs=4, sampler_class_probs=probs)


def test_centres_start_at_the_class_means_and_step_towards_the_batch():
    term = _term([2, 2])
    batch = {"label": torch.tensor([0, 0, 1, 1]), "index": torch.arange(4)}
    h = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    out = {"embedding": h, "logits": torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0]])}
    term.on_epoch_start(0)  # the scoring epoch
    assert term({"embedding": h, "logits": out["logits"]}, batch) == {}  # warm-up: no IFL yet
    term.after_step(out, batch)
    term.on_epoch_start(1)  # rebuild; centres = class means of the scoring epoch
    torch.testing.assert_close(term.centers, torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    assert term.env2.sum().item() == pytest.approx(1.0)
    moved = {"embedding": h + torch.tensor([1.0, 1.0]), "logits": out["logits"]}
    term.after_step(moved, batch)
    # Uniform instance sampler: env-1 weights 1/4; centre step c <- c - 0.5 * sum w 2 (c - h).
    a1, a2, _ = term._env_weights(batch)
    torch.testing.assert_close(a1, torch.full((4,), 0.25))
    w = 0.5 * (a1 + a2)
    expected0 = torch.tensor([2.0, 0.0]) - 0.5 * 2 * (
        w[0] * (torch.tensor([2.0, 0.0]) - h[0] - 1) + w[1] * (torch.tensor([2.0, 0.0]) - h[1] - 1)
    )
    torch.testing.assert_close(term.centers[0], expected0)


def test_ifl_term_is_finite_and_decreases_on_a_toy_problem():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    counts = [40, 12, 4]
    y = np.repeat(np.arange(3), counts)
    attr = rng.uniform(size=len(y)) < 0.2  # a rare attribute shifts the inputs
    x = np.eye(6)[y] * 2 + attr[:, None] * np.array([0, 0, 0, 3, 3, 3]) + 0.3 * rng.normal(size=(len(y), 6))
    x, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    emb, head = nn.Linear(6, 4), nn.Linear(4, 3)
    term = _term(counts, dim=4, weights=(0.1, 0.1), center_lr=0.5)
    opt = torch.optim.SGD([*emb.parameters(), *head.parameters()], lr=0.05)
    centre_losses = []
    for epoch in range(12):
        term.on_epoch_start(epoch)
        for idx in torch.randperm(len(y)).split(16):
            h = emb(x[idx])
            out = {"embedding": h, "logits": head(h)}
            batch = {"label": yt[idx], "index": idx}
            terms = term(out, batch)
            loss = nn.functional.cross_entropy(out["logits"], yt[idx]) + sum(terms.values(), torch.zeros(()))
            opt.zero_grad()
            loss.backward()
            opt.step()
            term.after_step({k: v.detach() for k, v in out.items()}, batch)
            if terms:
                assert all(torch.isfinite(v) for v in terms.values())
                centre_losses.append(terms["ifl_center"].item() / 0.1)
    assert len(centre_losses) > 20 and np.isfinite(centre_losses).all()
    first, last = np.mean(centre_losses[:4]), np.mean(centre_losses[-4:])
    assert last < 0.5 * first


def test_irm_penalty_matches_autograd_of_the_dummy_scale():
    torch.manual_seed(0)
    logits, y, w = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0]), torch.rand(5)
    s = torch.ones(3, requires_grad=True)
    risk = (w * nn.functional.cross_entropy(logits * s, y, reduction="none")).sum()
    (g,) = torch.autograd.grad(risk, s)
    assert irm_penalty(logits, y, w).item() == pytest.approx((g**2).sum().item(), rel=1e-5)


def test_ifl_runs_in_the_trainer_under_any_baseline(tmp_path):
    from lvmlt.training.trainer import train

    assert "ifl" in TERMS
    cfg = load_config(
        None,
        [
            "model.backbone=resnet8",
            "optim.epochs=3",
            f"out_dir={tmp_path}",
            "run_name=r",
            "data.batch_size=16",
            "optim.lr=0.05",
            "optim.precision=fp32",
            "loss.name=logit_adjusted",
            "ifl.enabled=true",
            "ifl.warmup_epochs=1",
            "ifl.step_epoch=2",
            "ifl.irm_weight=0.01",
        ],
    )
    m = train(cfg, bundle=toy_bundle(48, 24, 24), progress=False)
    hist = [json.loads(line) for line in (tmp_path / "r/history.jsonl").read_text().splitlines()]
    assert "train/ifl_center" not in hist[0]  # warm-up
    for h in hist[1:]:
        for k in ("train/ifl_center", "train/ifl_env2_cls", "train/ifl_irm"):
            assert np.isfinite(h[k])
    assert m["test"]["num_samples"] == 24


# ----------------------------------------------------------------------------- GLT protocol


def _pool_bundle(cells):
    """A bundle whose labels are attribute * 2 + class, with ``cells[class][attribute]`` images."""
    labels = np.concatenate([np.full(cells[c][a], a * 2 + c) for c in range(2) for a in range(2)])
    n = len(labels)
    split = ImageSplit("train", [f"x/{i}" for i in range(n)], labels, lambda i: Image.new("RGB", (4, 4)))
    empty = split.subset([], "val")
    return DataBundle("toy", split, empty, split.subset([], "test"), [str(k) for k in range(4)])


def test_glt_split_sizes_and_attribute_balance():
    cells = [[300, 100], [30, 60]]  # class 0: attribute 0 is the majority; class 1: attribute 1
    spec = GLTSpec(attr_ratio=4, gbl_per_attr=5, cbl_per_class=10, val_per_class=5, seed=3)
    b = glt_bundles(_pool_bundle(cells), lambda y: y % 2, lambda y: y // 2, ["c0", "c1"], ["a0", "a1"], spec)
    gbl, cbl = b["gbl"], b["cbl"]
    assert gbl.train is cbl.train and gbl.meta["majority_attribute"] == [0, 1]
    at = gbl.meta["attributes"]

    def cell_counts(bundle, split):
        y, a = bundle.splits()[split].labels, bundle.meta["attributes"][split]
        return [[int(((y == c) & (a == k)).sum()) for k in range(2)] for c in range(2)]

    assert cell_counts(gbl, "test") == [[5, 5], [5, 5]]  # class- and attribute-balanced
    assert cell_counts(cbl, "test") == [[8, 2], [2, 8]]  # class-balanced, training ratio 4 : 1
    assert cell_counts(gbl, "val") == [[4, 1], [1, 4]]
    # Training: the majority keeps the rest, the minority at most a quarter of it.
    assert cell_counts(gbl, "train") == [[300 - 17, (300 - 17) // 4], [(60 - 17) // 4, 60 - 17]]
    all_ids = [set(s.ids) for s in (gbl.train, gbl.val, gbl.test, cbl.test)]
    assert sum(map(len, all_ids)) == len(set().union(*all_ids))  # no image in two splits
    assert len(at["train"]) == len(gbl.train)
    again = glt_bundles(
        _pool_bundle(cells), lambda y: y % 2, lambda y: y // 2, ["c0", "c1"], ["a0", "a1"], spec
    )
    assert again["gbl"].test.ids == gbl.test.ids  # seeded
    with pytest.raises(UserError, match="fewer than"):
        glt_bundles(
            _pool_bundle(cells),
            lambda y: y % 2,
            lambda y: y // 2,
            ["c0", "c1"],
            ["a0", "a1"],
            GLTSpec(gbl_per_attr=40),
        )


def test_attribute_accuracy_is_per_class_mean_inside_each_attribute():
    logits = np.eye(2)[[0, 1, 1, 1]]  # predictions 0, 1, 1, 1
    labels = np.array([0, 0, 1, 1])
    attrs = np.array([0, 1, 0, 1])
    assert attribute_accuracy(logits, labels, attrs, 2) == [100.0, 50.0]


@pytest.mark.slow  # decodes all 2,624 ELPV images (~5-10 s); the toy pool above checks the rules
def test_elpv_glt_protocol_has_the_documented_sizes():
    pytest.importorskip("elpv_dataset")
    b = elpv_glt_bundles()
    assert b["gbl"].train_counts.tolist() == [1098, 171, 18, 451]
    assert len(b["gbl"].val) == 48 and len(b["gbl"].test) == 96 and len(b["cbl"].test) == 96
    a = b["gbl"].meta["attributes"]["test"]
    y = b["gbl"].test.labels
    assert [int(((y == c) & (a == 0)).sum()) for c in range(4)] == [12, 12, 12, 12]
    assert b["gbl"].meta["majority_attribute"] == [1, 1, 0, 1]  # poly, poly, mono, poly
