"""ProCo: log-Bessel numerics, the closed-form expected contrastive term, vMF statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lvmlt.losses.proco import (
    KAPPA_MAX,
    ProCoLoss,
    log_bessel_iv,
    log_ive_miller,
    log_vmf_normalizer,
)

special = pytest.importorskip("scipy.special")
F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sample_vmf(rng: np.random.Generator, mu: np.ndarray, kappa: float, n: int) -> np.ndarray:
    """Exact vMF samples on S^{p-1} by Wood's (1994) rejection sampler, shape (n, p)."""
    p = mu.shape[0]
    b = (p - 1) / (2 * kappa + math.sqrt(4 * kappa**2 + (p - 1) ** 2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (p - 1) * math.log(1 - x0**2)
    ws: list[np.ndarray] = []
    while sum(len(w) for w in ws) < n:
        z = rng.beta((p - 1) / 2, (p - 1) / 2, size=2 * n)
        w = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        ok = kappa * w + (p - 1) * np.log(1 - x0 * w) - c >= np.log(rng.uniform(size=2 * n))
        ws.append(w[ok])
    w = np.concatenate(ws)[:n]
    v = rng.normal(size=(n, p))
    v -= (v @ mu)[:, None] * mu
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return w[:, None] * mu + np.sqrt(1 - w**2)[:, None] * v


def mean_length_for_kappa(kappa: float, p: int) -> float:
    """R̄ with p R̄ / (1 - R̄²) = κ (the estimator's inverse)."""
    return (-p + math.sqrt(p * p + 4 * kappa * kappa)) / (2 * kappa)


def set_statistics(loss: ProCoLoss, mu: torch.Tensor, kappa: torch.Tensor) -> None:
    r = torch.tensor([mean_length_for_kappa(float(k), loss.feat_dim) for k in kappa], dtype=F64)
    loss.mean_old.copy_(F.normalize(mu.to(F64), dim=1) * r[:, None])
    loss.count_old.fill_(100.0)


# --------------------------------------------------------------------------- Bessel numerics

X_GRID = np.logspace(-2, 5, 500)


@pytest.mark.parametrize(
    ("nu", "tol"), [(7, 2e-6), (31, 1e-8), (63, 1e-8), (127.5, 1e-8), (511, 1e-8), (1023, 1e-8)]
)
def test_log_bessel_matches_scipy_where_finite(nu, tol):
    ive = special.ive(nu, X_GRID)
    finite = np.isfinite(ive) & (ive > 0)  # SciPy underflows to 0 for large ν, small x
    ref = np.log(ive[finite]) + X_GRID[finite]
    got = log_bessel_iv(nu, torch.tensor(X_GRID[finite], dtype=F64)).numpy()
    err = np.abs(got - ref).max()
    assert finite.sum() > 100 and err < tol, f"ν={nu}: max |error| {err:.2e} over {finite.sum()} points"


@pytest.mark.parametrize(("dim", "tol"), [(16, 1e-5), (128, 1e-9), (1024, 1e-9), (2048, 1e-9)])
def test_normalizer_gradient_is_the_bessel_ratio_below_one(dim, tol):
    nu = dim / 2 - 1
    x = torch.tensor(np.logspace(-3, 6, 400), dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(log_vmf_normalizer(x, dim).sum(), x)
    a_p = -grad.numpy()
    assert np.all(np.isfinite(a_p)) and np.all(a_p > 0) and np.all(a_p < 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = special.ive(nu + 1, x.detach().numpy()) / special.ive(nu, x.detach().numpy())
    ok = np.isfinite(ref)
    err = np.abs(a_p[ok] - ref[ok]).max()
    assert err < tol, f"p={dim}: max |A_p error| {err:.2e}"


def test_normalizer_at_zero_and_gradcheck():
    p, nu = 128, 63
    exact = nu * math.log(2) + math.lgamma(nu + 1) - p / 2 * math.log(2 * math.pi)
    assert log_vmf_normalizer(torch.zeros(1, dtype=F64), p).item() == pytest.approx(exact, abs=1e-8)
    x = torch.tensor([0.5, 20.0, 900.0, 3e4], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda k: log_vmf_normalizer(k, p), (x,))


def test_miller_recurrence_matches_scipy_then_drifts():
    """The authors' recurrence: exact for x ≪ 28ν, off by > 0.1 at x = 5000 for ν = 63."""
    x = np.array([1.0, 10.0, 100.0, 1000.0, 5000.0])
    log_nu, log_nu1 = log_ive_miller(63, torch.tensor(x, dtype=F64))
    err = log_nu.numpy() - np.log(special.ive(63, x))
    assert np.abs(err[:4]).max() < 1e-4 and abs(err[4]) > 0.1, err
    assert np.abs(log_nu1.numpy()[:3] - np.log(special.ive(64, x[:3]))).max() < 1e-10


# --------------------------------------------------------------------------- the loss


def test_contrastive_logits_equal_monte_carlo_expectation():
    """ℓ_ij = log E_{z'~vMF(μ_j, κ_j)} exp(z_i·z'/τ), checked with exact vMF samples."""
    rng = np.random.default_rng(0)
    p, tau = 16, 0.5
    mus = F.normalize(torch.randn(3, p, dtype=F64), dim=1)
    kappas = torch.tensor([2.0, 15.0, 60.0], dtype=F64)
    loss = ProCoLoss(3, p, [1, 1, 1], temperature=tau)
    set_statistics(loss, mus, kappas)
    mu_est, kappa_est = loss.vmf_parameters()
    assert torch.allclose(kappa_est, kappas) and torch.allclose(mu_est, mus)
    z = F.normalize(torch.randn(4, p, dtype=F64), dim=1)
    closed = loss.contrastive_logits(z).numpy()
    for j in range(3):
        samples = sample_vmf(rng, mus[j].numpy(), float(kappas[j]), 200_000)
        mc = np.log(np.exp(z.numpy() @ samples.T / tau).mean(axis=1))
        assert np.abs(closed[:, j] - mc).max() < 0.01, f"class {j}: closed {closed[:, j]} vs MC {mc}"


def test_forward_terms_match_manual_la_ce():
    torch.manual_seed(0)
    counts = torch.tensor([50, 20, 5, 1])
    loss = ProCoLoss(4, 32, counts, temperature=0.1, proco_weight=0.5, update_in_forward=False)
    feats, logits = torch.randn(6, 32), torch.randn(6, 4)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    out = loss(feats, logits, targets)
    log_prior = (counts / counts.sum()).log()
    assert set(out) == {"la_ce", "proco"}
    assert torch.allclose(out["la_ce"], F.cross_entropy(logits + log_prior, targets))
    ell = loss.contrastive_logits(feats)
    expected = 0.5 * F.cross_entropy(ell + log_prior.to(F64), targets)
    assert torch.allclose(out["proco"], expected.float())
    # Uniform counts: the LA-CE term is plain cross-entropy.
    plain = ProCoLoss(4, 32, [3, 3, 3, 3])
    assert torch.allclose(plain(feats, logits, targets)["la_ce"], F.cross_entropy(logits, targets))


@pytest.mark.parametrize("dim", [64, 128, 1024, 2048])
@pytest.mark.parametrize("concentrated", [False, True])
@pytest.mark.parametrize("bessel", ["debye", "miller"])
def test_loss_and_gradient_finite_in_high_dimension(dim, concentrated, bessel):
    torch.manual_seed(dim)
    c = 10
    loss = ProCoLoss(c, dim, torch.logspace(3, 0, c), temperature=0.07, bessel=bessel)
    if concentrated:  # R̄ → 1: κ at the 1e5 clamp for every class
        loss.mean_old.copy_(F.normalize(loss.mean_old, dim=1) * (1 - 1e-9))
        assert torch.all(loss.vmf_parameters()[1] == KAPPA_MAX)
    feats = torch.randn(2, 8, dim, requires_grad=True)  # two contrastive views
    logits = torch.randn(8, c, requires_grad=True)
    targets = torch.arange(8) % c
    loss.eval()  # keep the statistics fixed
    out = loss(feats, logits, targets)
    total = sum(out.values())
    total.backward()
    assert all(torch.isfinite(v) for v in out.values()), out
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    assert torch.isfinite(logits.grad).all()


def test_debye_and_miller_agree_where_miller_is_accurate():
    torch.manual_seed(0)
    feats = torch.randn(5, 64)
    debye = ProCoLoss(5, 64, [1] * 5, temperature=0.1)
    miller = ProCoLoss(5, 64, [1] * 5, temperature=0.1, bessel="miller")
    miller.load_state_dict(debye.state_dict())  # κ = 90p/19 ≈ 303: x ≤ 320 ≪ 28ν
    assert torch.allclose(debye.contrastive_logits(feats), miller.contrastive_logits(feats), atol=1e-8)


def test_gradient_reaches_features_only_through_kappa_tilde():
    loss = ProCoLoss(3, 16, [1, 1, 1], temperature=0.2)
    z = torch.randn(2, 16, dtype=F64, requires_grad=True)
    ell = loss.contrastive_logits(z)
    assert loss.mean_old.grad is None and not loss.mean_old.requires_grad
    # dℓ/dz for unit z (before the projection of normalize) is A_p(κ̃) κ μ_j / (τ κ̃).
    zn = F.normalize(z.detach(), dim=1)
    mu, kappa = loss.vmf_parameters()
    kt = (kappa[:, None] * mu + zn[0] / 0.2).norm(dim=1)
    a_p = special.ive(8, kt.numpy()) / special.ive(7, kt.numpy())
    (g,) = torch.autograd.grad(ell[0, 1], z)
    raw = torch.tensor(a_p[1]) * kappa[1] * mu[1] / (0.2 * kt[1])
    expected = (raw - (raw @ zn[0]) * zn[0]) / z.detach()[0].norm()  # through F.normalize
    assert torch.allclose(g[0], expected, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------- statistics


def test_statistics_converge_to_true_vmf_parameters():
    rng = np.random.default_rng(1)
    p, c = 64, 3
    mus = rng.normal(size=(c, p))
    mus /= np.linalg.norm(mus, axis=1, keepdims=True)
    kappas = [50.0, 200.0, 1000.0]
    feats = np.concatenate([sample_vmf(rng, mus[j], kappas[j], 3000) for j in range(c)])
    labels = np.repeat(np.arange(c), 3000)
    order = rng.permutation(len(labels))
    loss = ProCoLoss(c, p, [1] * c)
    for batch in np.array_split(order, 45):
        loss.update(torch.tensor(feats[batch], dtype=torch.float32), torch.tensor(labels[batch]))
    mu_hat, kappa_hat = loss.vmf_parameters()
    cos = (mu_hat * torch.tensor(mus)).sum(1)
    assert torch.all(cos > 0.995), cos
    rel = (kappa_hat.numpy() - kappas) / np.array(kappas)
    assert np.abs(rel).max() < 0.1, f"κ estimates {kappa_hat.numpy()} vs true {kappas}"
    assert loss.count_old.tolist() == [3000.0] * c == loss.count_cur.tolist()


def test_update_is_a_cumulative_mean_and_epochs_swap():
    loss = ProCoLoss(2, 8, [1, 1])
    init = loss.mean_old.clone()
    a = F.normalize(torch.randn(3, 8, dtype=F64), dim=1)
    b = F.normalize(torch.randn(5, 8, dtype=F64), dim=1)
    loss.update(a, torch.zeros(3, dtype=torch.long))
    loss.update(b, torch.tensor([0, 0, 0, -100, 0]))  # -100 is skipped
    kept = torch.cat([a, b[[0, 1, 2, 4]]])
    assert torch.allclose(loss.mean_cur[0], kept.mean(0)) and torch.allclose(loss.mean_old[0], kept.mean(0))
    assert torch.equal(loss.mean_old[1], init[1]) and loss.count_old.tolist() == [7.0, 0.0]
    loss.new_epoch()
    assert loss.count_cur.tolist() == [0.0, 0.0] and loss.count_old.tolist() == [7.0, 0.0]
    loss.update(b[:1], torch.tensor([0]))  # the first batch after a reset overwrites `current`
    assert torch.allclose(loss.mean_cur[0], b[0])
    assert torch.allclose(loss.mean_old[0], (7 * kept.mean(0) + b[0]) / 8)


def test_forward_updates_only_in_training_mode():
    loss = ProCoLoss(3, 16, [1, 1, 1])
    feats, logits, targets = torch.randn(2, 4, 16), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    loss.eval()
    loss(feats, logits, targets)
    assert loss.count_old.sum() == 0
    loss.train()
    loss(feats, logits, targets)
    assert loss.count_old.tolist() == [4.0, 2.0, 2.0]  # two views of each image


def test_sync_hook_sees_sufficient_statistics():
    seen = {}

    def two_identical_ranks(sums, counts):
        seen["shapes"] = (tuple(sums.shape), tuple(counts.shape))
        return 2 * sums, 2 * counts

    loss = ProCoLoss(3, 16, [1, 1, 1], sync_fn=two_identical_ranks)
    feats = F.normalize(torch.randn(4, 16, dtype=F64), dim=1)
    loss.update(feats, torch.tensor([0, 0, 1, 2]))
    assert seen["shapes"] == ((3, 16), (3,))
    assert loss.count_cur.tolist() == [4.0, 2.0, 2.0]
    assert torch.allclose(loss.mean_cur[0], feats[:2].mean(0))


def test_state_dict_round_trip_reproduces_the_loss():
    torch.manual_seed(0)
    a = ProCoLoss(4, 32, [8, 4, 2, 1])
    a.update(torch.randn(16, 32), torch.arange(16) % 4)
    b = ProCoLoss(4, 32, [8, 4, 2, 1])
    b.load_state_dict(a.state_dict())
    assert {"mean_cur", "count_cur", "mean_old", "count_old", "log_prior"} <= set(a.state_dict())
    feats, logits, targets = torch.randn(5, 32), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    a.eval(), b.eval()
    assert torch.equal(a(feats, logits, targets)["proco"], b(feats, logits, targets)["proco"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="feat_dim"):
        ProCoLoss(3, 4, [1, 1, 1])
    with pytest.raises(ValueError, match="class_counts"):
        ProCoLoss(3, 16, [1, 1])
    with pytest.raises(ValueError, match="even"):
        ProCoLoss(3, 17, [1, 1, 1], bessel="miller")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_under_autocast():
    loss = ProCoLoss(5, 128, [50, 20, 10, 5, 1]).to("cuda")
    feats = torch.randn(2, 8, 128, device="cuda", requires_grad=True)
    logits = torch.randn(8, 5, device="cuda", requires_grad=True)
    targets = torch.arange(8, device="cuda") % 5
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = loss(feats, logits, targets)
    sum(out.values()).backward()
    assert all(torch.isfinite(v) for v in out.values()) and torch.isfinite(feats.grad).all()
    assert loss.count_old.device.type == "cuda" and loss.count_old.sum() == 16
