"""Label-shift estimators, post-hoc corrections and ``calibrate_run`` on simulated shifts.

The synthetic classifier is exact: Gaussian class-conditionals N(m_k, I) with a
long-tailed source prior p_s, so the source posterior log p_s(k|x) = log p_s(k) -
||x - m_k||²/2 + const is known in closed form and calibrated by construction.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lvmlt.calibration import CALIBRATORS, calibrate_run, resolve_source_prior
from lvmlt.calibration.label_shift import (
    apl_lambda,
    confusion_matrix,
    estimate_bbse,
    estimate_mapls,
    estimate_mlls,
    log_softmax,
)
from lvmlt.calibration.posthoc import fit_lws, logit_adjust, tau_normalize
from lvmlt.errors import UserError

LABEL_SHIFT = ("bbse", "mlls", "mapls")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def long_tail(k: int, imbalance: float) -> np.ndarray:
    n = imbalance ** (-np.arange(k) / (k - 1))
    return n / n.sum()


class GaussianTask:
    """K Gaussian classes in R^d with an exact, calibrated source posterior."""

    def __init__(self, k: int, d: int, sep: float, source_prior: np.ndarray, seed: int):
        self.means = np.random.default_rng(seed).normal(size=(k, d)) * sep
        self.source_prior = source_prior

    def sample(self, prior: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(source-posterior logits (n, K), labels (n,)) for labels drawn from ``prior``."""
        rng = np.random.default_rng(seed)
        y = rng.choice(len(prior), size=n, p=prior)
        x = self.means[y] + rng.normal(size=(n, self.means.shape[1]))
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        return np.log(self.source_prior) - 0.5 * sq, y


def l1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).sum())


# --------------------------------------------------------------------------- estimators


@pytest.fixture(scope="module")
def easy_task():
    """10 classes, source IF 100, ~85 % source accuracy; a large labelled val split."""
    task = GaussianTask(k=10, d=5, sep=2.0, source_prior=long_tail(10, 100), seed=0)
    val_logits, val_labels = task.sample(task.source_prior, 20000, seed=10)
    return task, val_logits, val_labels


TARGETS = {
    "dirichlet1": lambda rng, k: rng.dirichlet(np.ones(k)),
    "reversed_lt": lambda rng, k: long_tail(k, 50)[::-1].copy(),
    "uniform": lambda rng, k: np.full(k, 1.0 / k),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("method", LABEL_SHIFT)
def test_estimator_recovers_target_prior(easy_task, method, target):
    task, val_logits, val_labels = easy_task
    q = TARGETS[target](np.random.default_rng(1), 10)
    logits, _ = task.sample(q, 5000, seed=11)
    est = CALIBRATORS.get(method)(logits, task.source_prior, val_logits=val_logits, val_labels=val_labels)
    err, err_none = l1(est.target_prior, q), l1(task.source_prior, q)
    assert est.target_prior.shape == (10,) and abs(est.target_prior.sum() - 1) < 1e-9
    if method == "mapls":
        # MAPLS shrinks towards uniform with an N-independent λ (APL), so with plenty of
        # target data it is biased by design: require most of the way from p_s to q.
        lam = est.info["lambda"]
        assert err < 0.5 * err_none, (
            f"{method} on {target}: L1 {err:.3f} (no correction {err_none:.3f}, λ={lam:.2f})"
        )
        if target == "uniform":
            assert err < 0.02, f"{method} on uniform: L1 {err:.4f}, λ={lam:.3f}"
    else:
        tol = 0.08 if method == "mlls" else 0.15
        assert err < tol, f"{method} on {target}: L1 {err:.3f} (no correction {err_none:.3f})"


def test_mapls_beats_mlls_when_target_data_are_scarce():
    """50 classes, 50 or 100 unlabelled target samples: the regime MAPLS is made for."""
    k = 50
    task = GaussianTask(k=k, d=16, sep=1.0, source_prior=long_tail(k, 100), seed=2)
    rng = np.random.default_rng(3)
    errs = {"mlls": [], "mapls": []}
    for n in (50, 100):
        for trial in range(10):
            q = rng.dirichlet(np.ones(k)) if trial % 2 else long_tail(k, 50)[rng.permutation(k)]
            logits, _ = task.sample(q, n, seed=100 * n + trial)
            errs["mlls"].append(l1(estimate_mlls(logits, task.source_prior).target_prior, q))
            errs["mapls"].append(l1(estimate_mapls(logits, task.source_prior).target_prior, q))
    mlls, mapls = np.mean(errs["mlls"]), np.mean(errs["mapls"])
    assert mapls <= mlls, f"mean L1 over 20 trials: MAPLS {mapls:.3f} vs MLLS {mlls:.3f}"


@pytest.mark.parametrize("method", [*LABEL_SHIFT, "pc", "logit_adjust"])
def test_calibration_improves_accuracy_under_shift(easy_task, method):
    task, val_logits, val_labels = easy_task
    logits, labels = task.sample(long_tail(10, 50)[::-1].copy(), 5000, seed=12)
    est = CALIBRATORS.get(method)(logits, task.source_prior, val_logits=val_logits, val_labels=val_labels)
    before = (logits.argmax(1) == labels).mean()
    after = (est.adjust_logits(logits).argmax(1) == labels).mean()
    assert after > before + 0.05, f"{method}: accuracy {before:.3f} -> {after:.3f}"


def test_apl_lambda_matches_worked_example():
    """docs/implementation-notes.md, "Label shift": CIFAR-100-LT IF 100 prior, λ ≈ 0.016 / 0.82 / 0.73."""
    ps = long_tail(100, 100)
    assert apl_lambda(np.full(100, 0.01), ps) == pytest.approx(0.016, abs=5e-4)
    assert apl_lambda(ps, ps) == pytest.approx(0.82, abs=5e-3)
    assert apl_lambda(ps[::-1].copy(), ps) == pytest.approx(0.73, abs=5e-3)
    # A uniform source prior must not divide by zero (guarded γ).
    assert np.isfinite(apl_lambda(long_tail(10, 5), np.full(10, 0.1)))


def test_perfect_classifier_returns_the_histogram():
    labels = np.array([0, 0, 0, 1, 2, 2])
    logits = 40.0 * np.eye(3)[labels]
    ps = np.array([0.7, 0.2, 0.1])
    hist = np.bincount(labels, minlength=3) / len(labels)
    assert np.allclose(estimate_mlls(logits, ps).target_prior, hist, atol=1e-9)
    bbse = estimate_bbse(logits, ps, val_logits=logits, val_labels=labels, mode="hard")
    assert np.allclose(bbse.target_prior, hist, atol=1e-12)
    # λ = 1 is exactly MLLS; λ < 1 is the convex fixed point λ·hist + (1-λ)·uniform.
    assert np.allclose(estimate_mapls(logits, ps, lam=1.0).target_prior, hist)
    assert np.allclose(estimate_mapls(logits, ps, lam=0.5).target_prior, 0.5 * hist + 0.5 / 3, atol=1e-9)


def test_bbse_handles_classes_missing_from_val():
    logits = 40.0 * np.eye(4)[[0, 1, 2, 3, 3]]
    val_labels = np.array([0, 0, 1, 2])  # class 3 never appears in val
    val_logits = 40.0 * np.eye(4)[val_labels]
    est = estimate_bbse(logits, np.full(4, 0.25), val_logits=val_logits, val_labels=val_labels)
    assert est.info["classes_without_val"] == 1
    assert np.allclose(est.target_prior, [0.2, 0.2, 0.2, 0.4], atol=1e-9)
    m, counts = confusion_matrix(val_logits, val_labels, 4)
    assert counts.tolist() == [2, 1, 1, 0] and np.allclose(m[:, :3].sum(0), 1)


def test_bbse_requires_validation_data():
    with pytest.raises(UserError, match="validation"):
        CALIBRATORS.get("bbse")(np.zeros((3, 2)), np.array([0.5, 0.5]))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_adjusted_logits_and_probs_agree(k, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(7, k)) * 3
    est = estimate_mapls(logits, rng.dirichlet(np.ones(k)) + 1e-3, lam=0.7, max_iter=5)
    via_logits = np.exp(log_softmax(est.adjust_logits(logits)))
    via_probs = est.adjust_probs(np.exp(log_softmax(logits)))
    assert np.allclose(via_logits, via_probs, atol=1e-10)


def test_source_prior_modes():
    counts = np.array([30, 10, 0])
    assert np.allclose(resolve_source_prior("train", counts), [0.75, 0.25, 0])
    assert np.allclose(resolve_source_prior("uniform", counts), 1 / 3)
    soft = resolve_source_prior("soft", counts, np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])))
    assert np.allclose(soft, [0.3, 0.2, 0.5])
    with pytest.raises(UserError, match="choose one of"):
        resolve_source_prior("balanced", counts)


def test_unknown_calibrator_lists_choices():
    with pytest.raises(UserError, match="bbse, logit_adjust, mapls, mlls, pc"):
        CALIBRATORS.get("rlls")


# --------------------------------------------------------------------------- post-hoc


def test_logit_adjust_tau_zero_is_identity():
    logits = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    counts = np.array([100, 10, 1])
    out = logit_adjust(logits, counts, tau=0.0)
    assert out.dtype == np.float32 and np.array_equal(out, logits)
    t = torch.from_numpy(logits)
    assert torch.equal(logit_adjust(t, counts, tau=0.0), t)


def test_logit_adjust_values_and_calibrator_agree():
    counts = np.array([60, 30, 10])
    logits = np.zeros((2, 3))
    out = logit_adjust(logits, counts, tau=1.0)
    assert np.allclose(out, -np.log([0.6, 0.3, 0.1]))
    est = CALIBRATORS.get("logit_adjust")(logits, counts / counts.sum(), tau=0.5)
    shifted = est.adjust_logits(logits) - logit_adjust(logits, counts, tau=0.5)
    assert np.allclose(shifted, shifted[:, :1])  # equal up to a per-row constant
    pc = CALIBRATORS.get("pc")(logits, counts / counts.sum())
    assert np.allclose(log_softmax(pc.adjust_logits(logits)), log_softmax(out))


def test_tau_normalize():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.5], [0.0, 0.0]])
    assert torch.equal(tau_normalize(w, 0.0), w)
    unit = tau_normalize(w, 1.0)
    assert torch.allclose(unit.norm(dim=1), torch.tensor([1.0, 1.0, 0.0]))
    half = tau_normalize(w.numpy(), 0.5)
    assert np.allclose(half[0], [3 / 5**0.5, 4 / 5**0.5])


def test_fit_lws_improves_balanced_accuracy():
    torch.manual_seed(0)
    k, d = 5, 6
    means = torch.randn(k, d) * 1.2
    counts = torch.tensor([400, 150, 50, 20, 8])
    y = torch.repeat_interleave(torch.arange(k), counts)
    x = means[y] + torch.randn(len(y), d)
    head = torch.nn.Linear(d, k)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):  # plain CE on the long-tailed set: biased towards the head
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
    yt = torch.arange(k).repeat_interleave(200)
    xt = means[yt] + torch.randn(len(yt), d)
    w, b = head.weight.detach(), head.bias.detach()
    before = ((xt @ w.T + b).argmax(1) == yt).float().mean().item()
    scales = fit_lws(x, y, w, b, steps=300)
    after = (((xt @ w.T + b) * scales).argmax(1) == yt).float().mean().item()
    assert scales.shape == (k,)
    assert after > before + 0.02, f"balanced accuracy {before:.3f} -> {after:.3f}"


# --------------------------------------------------------------------------- calibrate_run


def fake_metrics(logits, labels, train_counts, many_threshold, few_threshold):
    return {"top1": float((np.asarray(logits).argmax(1) == labels).mean()), "many_threshold": many_threshold}


@pytest.fixture
def run_dir(tmp_path, easy_task):
    task, val_logits, val_labels = easy_task
    test_logits, test_labels = task.sample(long_tail(10, 50)[::-1].copy(), 2000, seed=13)
    counts = np.round(task.source_prior * 5000).astype(np.int64)
    np.savez(
        tmp_path / "predictions.npz",
        val_logits=val_logits[:2000].astype(np.float32),
        val_labels=val_labels[:2000],
        test_logits=test_logits.astype(np.float32),
        test_labels=test_labels,
        train_counts=counts,
    )
    original = {"val": {"top1": 0.9}, "test": fake_metrics(test_logits, test_labels, counts, None, None)}
    (tmp_path / "metrics.json").write_text(json.dumps(original))
    (tmp_path / "config.yaml").write_text("eval:\n  many_threshold: 100\n  few_threshold: 20\n")
    return tmp_path


def test_calibrate_run_writes_beside_originals(run_dir):
    entry = calibrate_run(run_dir, "mapls", metrics_fn=fake_metrics)  # BCTS first, by default
    calibrate_run(run_dir, "bbse", metrics_fn=fake_metrics, mode="hard", name="bbse_hard")
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["val"] == {"top1": 0.9} and "top1" in saved["test"]
    assert set(saved["calibrated"]) == {"mapls+bcts", "bbse_hard"}
    assert saved["calibrated"]["mapls+bcts"] == entry and entry["bcts"]["temperature"] > 0
    assert saved["calibrated"]["bbse_hard"]["options"] == {"mode": "hard"}
    assert entry["test"]["top1"] > saved["test"]["top1"] + 0.05
    assert entry["test"]["many_threshold"] == 100  # read from the run's config.yaml
    assert len(entry["estimated_prior"]) == 10 and abs(sum(entry["estimated_prior"]) - 1) < 1e-9
    assert 0 < entry["info"]["lambda"] < 1 and entry["prior_l1_error"] < 0.6
    assert sorted(p.name for p in run_dir.iterdir() if p.name != ".lock") == ["config.yaml", "metrics.json", "predictions.npz"]


def test_calibrate_run_user_errors(tmp_path, run_dir):
    with pytest.raises(UserError, match="predictions.npz not found"):
        calibrate_run(tmp_path / "nowhere", "mlls", metrics_fn=fake_metrics)
    with pytest.raises(UserError, match="unknown calibrator"):
        calibrate_run(run_dir, "nope", metrics_fn=fake_metrics)
    with pytest.raises(UserError, match="no option 'lamda'.*lam, max_iter"):
        calibrate_run(run_dir, "mapls", metrics_fn=fake_metrics, lamda=0.5)
    np.savez(run_dir / "predictions.npz", test_logits=np.zeros((2, 2)))
    with pytest.raises(UserError, match="lacks val_logits"):
        calibrate_run(run_dir, "mlls", metrics_fn=fake_metrics)


def test_calibrate_run_with_real_metrics(run_dir):
    metrics = pytest.importorskip("lvmlt.evaluation.metrics")
    entry = calibrate_run(run_dir, "mlls", metrics_fn=metrics.compute_metrics)
    assert {"top1", "many", "medium", "few"} <= set(entry["test"])


# --------------------------------------------------------------------------- BCTS


def test_bcts_recovers_temperature_and_bias(easy_task):
    from lvmlt.calibration.posthoc import apply_bcts, fit_bcts

    _, val_logits, val_labels = easy_task
    shift = np.linspace(-1, 1, 10)
    t, b = fit_bcts(val_logits * 3.0 + shift, val_labels)  # over-confident and biased
    assert t == pytest.approx(3.0, rel=0.05)
    # as good a fit as the true inverse map (the biases of rare classes are weakly identified)
    def nll(z):
        return float(-log_softmax(z)[np.arange(len(val_labels)), val_labels].mean())

    assert nll(apply_bcts(val_logits * 3.0 + shift, t, b)) <= nll(val_logits) + 1e-3
    assert nll(val_logits * 3.0 + shift) > nll(val_logits) + 0.05  # there was something to fix


def test_bcts_rescues_mlls_on_an_overconfident_model(easy_task, run_dir):
    task, _, _ = easy_task
    with np.load(run_dir / "predictions.npz") as f:
        arrays = dict(f)
    for split in ("val", "test"):  # an over-confident network: the same ranking, 4x the logits
        arrays[f"{split}_logits"] = arrays[f"{split}_logits"] * 4.0
    np.savez(run_dir / "predictions.npz", **arrays)
    plain = calibrate_run(run_dir, "mlls", metrics_fn=fake_metrics, bcts=False)
    fixed = calibrate_run(run_dir, "mlls", metrics_fn=fake_metrics)  # BCTS by default
    assert fixed["bcts"]["temperature"] == pytest.approx(4.0, rel=0.1)
    assert fixed["prior_l1_error"] < 0.1 < plain["prior_l1_error"], (fixed["prior_l1_error"], plain["prior_l1_error"])
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved["calibrated"]) == {"mlls", "mlls+bcts"}


def test_the_calibrate_command_offers_every_registered_method():
    """The README offered --method logit_adjust, which the parser refused: its module registers
    it on first use, after a fresh process had built the parser."""
    import re
    import subprocess
    import sys

    from lvmlt.calibration import posthoc  # noqa: F401  (registers logit_adjust here)
    from lvmlt.calibration.label_shift import CALIBRATORS

    usage = subprocess.run([sys.executable, "-m", "lvmlt", "calibrate", "--help"], capture_output=True, text=True,
                           check=True).stdout
    offered = set(re.search(r"--method \{([^}]*)\}", usage).group(1).split(","))
    assert set(CALIBRATORS.names()) <= offered


def test_a_truncated_predictions_file_is_one_line(tmp_path):
    """A truncated predictions.npz was a zipfile.BadZipFile traceback in calibrate, export and predict --adapt."""
    import numpy as np
    import pytest

    from lvmlt.errors import UserError
    from lvmlt.rundir import read_predictions

    np.savez(tmp_path / "predictions.npz", val_logits=np.zeros((4, 3)), val_labels=np.zeros(4))
    data = (tmp_path / "predictions.npz").read_bytes()
    (tmp_path / "predictions.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"predictions.npz is damaged \(BadZipFile\)"):
        read_predictions(tmp_path, ("val_logits",))
