"""Synthetic latent features: distribution fitting, borrowing, sampling, top-up, linear head."""

import dataclasses

import numpy as np
import pytest
import torch

from lvmlt.config import SyntheticConfig
from lvmlt.errors import UserError
from lvmlt.methods.common import FeatureNorm, HeadTraining
from lvmlt.methods.synthetic import (
    estimate_kappa,
    fit_class_distributions,
    fit_linear_probe,
    fit_synthetic,
    ledoit_wolf,
    sample_gaussian,
    sample_vmf,
    synthesize,
    train_linear,
)

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


def test_linear_classifier_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    y = np.repeat(np.arange(3), 40)
    x = centres[y] + 0.3 * rng.normal(size=(len(y), 2))
    head, info = train_linear(x, y, 3, HeadTraining(epochs=60, lr=0.05, batch_size=32), seed=0, val=(x, y))
    with torch.no_grad():
        pred = head({"sam_vec": torch.from_numpy(x.astype(np.float32))})["logits"].argmax(1).numpy()
    assert (pred == y).all()
    assert info["history"][-1]["loss"] < info["history"][0]["loss"] / 5
    assert sum(p.numel() for p in head.parameters()) == 2 * 3 + 3


def test_probe_and_synthetic_report_params_seconds_and_borrowing():
    rng = np.random.default_rng(0)
    counts = np.array([80, 30, 4])
    feats, labels = {}, {}
    for s, n in (("train", counts), ("val", [10, 10, 10]), ("test", [10, 10, 10])):
        y = np.repeat(np.arange(3), n)
        feats[s] = (rng.normal(size=(len(y), 16)) + 6.0 * np.eye(16)[y]).astype(np.float32)
        labels[s] = y
    meta = {"many_threshold": 50, "few_threshold": 10}
    cfg = _cfg(epochs=20)
    probe = fit_linear_probe(feats, labels, 3, meta, cfg, seed=0)
    syn = fit_synthetic(feats, labels, 3, meta, cfg, seed=0)
    assert probe.trainable_params == syn.trainable_params == 16 * 3 + 3
    assert syn.info["synthetic_counts"] == [0, 50, 76] and syn.info["loss"] == "ce"
    assert syn.info["borrowed"] == {1: [0], 2: [0]}  # the only head class (n >= 50)
    assert syn.seconds > 0 and syn.test["group_sizes"] == {"many": 1, "medium": 1, "few": 1}
    assert syn.test["top1"] > 80
