"""Synthetic latent features: distribution fitting, borrowing, sampling, top-up, linear head."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from helpers import feature_bundle, write_store
from lvmlt.config import SyntheticConfig, load_config
from lvmlt.errors import UserError
from lvmlt.features.synthetic import (
    estimate_kappa,
    fit_class_distributions,
    ledoit_wolf,
    sample_gaussian,
    sample_vmf,
    synthesize,
)
from lvmlt.inputs import FeatureNorm
from lvmlt.training.trainer import build_run, train

torch.set_num_threads(1)


def _cfg(**kw):
    return dataclasses.replace(SyntheticConfig(), **kw)


def test_gaussian_sampling_reproduces_known_mean_and_covariance():
    rng = np.random.default_rng(0)
    d = 5
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + 0.5 * np.eye(d)
    mean = np.array([1.0, -2.0, 0.5, 3.0, 0.0])
    x = rng.multivariate_normal(mean, cov, size=20000)
    dists = fit_class_distributions(x, np.zeros(len(x), int), 1, _cfg(shrinkage=0.0, n_min=2))
    z = sample_gaussian(dists[0], 50000, np.random.default_rng(1))
    np.testing.assert_allclose(z.mean(axis=0), mean, atol=0.05)
    np.testing.assert_allclose(np.cov(z.T), cov, atol=0.08)
    assert dists[0].borrowed_from == () and dists[0].shrinkage == 0.0


def test_ledoit_wolf_matches_its_definition_and_shrinks_less_with_more_samples():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 20))
    x = rng.normal(size=(10, 20)) @ a
    sig, beta = ledoit_wolf(x)
    # The definition, written out sample by sample (Ledoit & Wolf 2004, lemma 3.2-3.4).
    n, d = x.shape
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / n
    mu = np.trace(s) / d
    delta2 = np.sum((s - mu * np.eye(d)) ** 2) / d
    b2 = sum(np.sum((np.outer(v, v) - s) ** 2) for v in xc) / d / n**2
    assert beta == pytest.approx(min(b2, delta2) / delta2)
    np.testing.assert_allclose(sig, (1 - beta) * s + beta * mu * np.eye(d))
    assert np.trace(sig) == pytest.approx(np.trace(s))  # shrinking towards (tr S / d) I keeps the trace
    assert np.linalg.eigvalsh(sig).min() > 0  # n < d: S is singular, the shrunk estimate is not
    _, beta_many = ledoit_wolf(rng.normal(size=(5000, 20)) @ a)
    assert beta_many < 0.05 < beta


def test_one_sample_class_borrows_the_covariance_of_its_nearest_head_classes():
    rng = np.random.default_rng(0)
    d = 4
    means = [np.array([5.0, 0, 0, 0]), np.array([0, 5.0, 0, 0]), np.array([0, 0, 5.0, 0])]
    scales = [0.5, 1.0, 2.0]
    x = np.concatenate([m + s * rng.normal(size=(200, d)) for m, s in zip(means, scales, strict=True)])
    y = np.repeat([0, 1, 2], 200)
    tail = np.array([[4.0, 3.0, 0.0, 0.0]])  # closest in cosine to classes 0 and 1
    x, y = np.concatenate([x, tail]), np.concatenate([y, [3]])
    cfg = _cfg(n_min=50, borrow_k=2, eps=1e-4, shrinkage=-1.0)
    dists = fit_class_distributions(x, y, 4, cfg)
    assert dists[3].borrowed_from == (0, 1) and dists[3].n == 1
    np.testing.assert_allclose(dists[3].mean, tail[0])
    expected = (dists[0].cov + dists[1].cov) / 2 + 1e-4 * np.eye(d)
    np.testing.assert_allclose(dists[3].cov, expected)
    assert all(dists[c].borrowed_from == () for c in range(3))


def test_vmf_sampler_matches_the_direction_and_concentration():
    d, kappa = 16, 30.0
    mu = np.zeros(d)
    mu[3] = 1.0
    z = sample_vmf(mu, kappa, 40000, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-9)
    # E[<x, mu>] from the marginal density f(w) ~ exp(kappa w) (1 - w^2)^((d - 3) / 2).
    w = np.linspace(-1, 1, 200001)
    f = np.exp(kappa * (w - 1)) * (1 - w**2) ** ((d - 3) / 2)
    expected = (w * f).sum() / f.sum()
    assert (z @ mu).mean() == pytest.approx(expected, abs=3e-3)
    r = np.linalg.norm(z.mean(axis=0))
    assert (z.mean(axis=0) / r) @ mu > 0.999
    assert estimate_kappa(z) == pytest.approx(kappa, rel=0.1)  # Banerjee's approximation


@pytest.mark.parametrize("distribution", ["gaussian", "vmf"])
def test_top_up_gives_exactly_balanced_counts(distribution):
    rng = np.random.default_rng(0)
    counts = [60, 12, 3, 1]
    y = np.repeat(np.arange(4), counts)
    x = FeatureNorm("cl2n").fit(rng.normal(size=(len(y), 8)) + y[:, None])(
        rng.normal(size=(len(y), 8)) + y[:, None]
    )
    x_syn, y_syn, dists = synthesize(x, y, 4, _cfg(distribution=distribution), np.random.default_rng(1))
    assert np.bincount(np.concatenate([y, y_syn]), minlength=4).tolist() == [60, 60, 60, 60]
    assert np.bincount(y_syn, minlength=4).tolist() == [0, 48, 57, 59]
    np.testing.assert_allclose(np.linalg.norm(x_syn, axis=1), 1.0, atol=1e-5)  # back on the sphere
    assert dists[3].borrowed_from and not dists[0].borrowed_from
    capped = synthesize(x, y, 4, _cfg(distribution=distribution, target=20), np.random.default_rng(1))[1]
    assert np.bincount(np.concatenate([y, capped]), minlength=4).tolist() == [60, 20, 20, 20]


def test_vmf_needs_normalised_features():
    x, y = np.ones((4, 3)), np.array([0, 0, 1, 1])
    with pytest.raises(UserError, match="unit-norm"):
        synthesize(x, y, 2, _cfg(distribution="vmf"), np.random.default_rng(0), on_sphere=False)


def _store(tmp_path, feats: dict, labels: dict):
    counts = {k: np.bincount(v).tolist() for k, v in labels.items()}
    bundle = feature_bundle(counts)
    for k, y in labels.items():  # feature_bundle sorts by class
        assert (bundle.splits()[k].labels == y).all()
    return bundle, write_store(tmp_path / "store", bundle, {k: {"vec": v} for k, v in feats.items()})


def _probe_cfg(tmp_path, store, *extra):
    from lvmlt.experiments.recipes import PROBE

    recipe = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in PROBE.items()]
    return load_config(None, [
        *recipe, f"fusion.store={store}", "device=cpu", "optim.precision=fp32", "data.num_workers=0",
        f"out_dir={tmp_path / 'runs'}", *extra,
    ])


def test_linear_probe_learns_a_separable_problem_in_the_trainer(tmp_path):
    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    y = np.repeat(np.arange(3), 40)
    x = (centres[y] + 0.3 * rng.normal(size=(len(y), 2))).astype(np.float32)
    bundle, store = _store(tmp_path, {"train": x, "val": x, "test": x}, {"train": y, "val": y, "test": y})
    cfg = _probe_cfg(tmp_path, store, "fusion.sam_norm=raw", "optim.epochs=60", "optim.lr=0.05",
                     "data.batch_size=32", "run_name=sep")
    m = train(cfg, bundle=bundle, progress=False)
    assert m["test"]["top1"] == 100.0
    history = [json.loads(line) for line in (tmp_path / "runs/sep/history.jsonl").read_text().splitlines()]
    assert history[-1]["train/total"] < history[0]["train/total"] / 5
    assert m["trainable_params"] == 2 * 3 + 3  # FC with bias, nothing else


def test_probe_and_synthetic_report_params_and_borrowing(tmp_path):
    rng = np.random.default_rng(0)
    counts = np.array([80, 30, 4])
    feats, labels = {}, {}
    for s, n in (("train", counts), ("val", [10, 10, 10]), ("test", [10, 10, 10])):
        y = np.repeat(np.arange(3), n)
        feats[s] = (rng.normal(size=(len(y), 16)) + 6.0 * np.eye(16)[y]).astype(np.float32)
        labels[s] = y
    bundle, store = _store(tmp_path, feats, labels)
    th = ["eval.many_threshold=50", "eval.few_threshold=10", "optim.epochs=20"]
    probe = train(_probe_cfg(tmp_path, store, *th, "run_name=probe"), bundle=bundle, progress=False)
    cfg = _probe_cfg(tmp_path, store, *th, "system=synthetic_probe", "run_name=syn")
    syn = train(cfg, bundle=bundle, progress=False)
    assert probe["trainable_params"] == syn["trainable_params"] == 16 * 3 + 3
    assert syn["test"]["group_sizes"] == {"many": 1, "medium": 1, "few": 1}  # by the real counts
    assert syn["test"]["top1"] > 80
    run = build_run(cfg, bundle)
    info = run.splits["train"].info()
    assert info["synthetic_counts"] == [0, 50, 76] and info["real_counts"] == [80, 30, 4]
    assert info["borrowed"] == {1: [0], 2: [0]}  # the only head class (n >= 50)
    assert run.splits["train"].class_counts.tolist() == [80, 80, 80]  # what the loss terms see
    assert len(run.splits["train"]) == 114 + 126 and len(run.loaders["train"].sampler) == 240
    np.testing.assert_allclose(np.linalg.norm(run.splits["train"].x_syn, axis=1), 1.0, atol=1e-5)  # cl2n sphere


def test_synthetic_features_need_the_probe_on_stored_vectors():
    # Checked once, when the config loads: the top-up belongs to the probe, not to a fused CNN.
    with pytest.raises(UserError, match="system=synthetic_probe: .*a probe has no CNN"):
        load_config(None, ["system=synthetic_probe", "fusion.store=S", "fusion.latent=true"])
    with pytest.raises(UserError, match="vmf needs unit-norm features"):
        load_config(None, ["system=synthetic_probe", "synthetic.distribution=vmf"])
