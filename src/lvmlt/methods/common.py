"""What the feature-based methods share: stored features, their normalisation, a small head
trainer that selects its epoch on the validation split (scoring is
:func:`lvmlt.evaluation.metrics.score`, the trainer's).

These methods never touch an image: they read the feature store that ``lvmlt extract``
made for the same bundle (checked by fingerprint), so a run costs seconds on a CPU.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lvmlt.errors import UserError

NORMS = ("cl2n", "l2", "standardize", "raw")


# ----------------------------------------------------------------------------- stored features


def level_hint(store_root, levels: Sequence[str]) -> str:
    """How to (re-)extract a store with the given pooled levels, as one command line."""
    wanted = ",".join(lv for lv in levels if lv != "vec") or "stage3,stage4"
    return (
        "re-extract with the levels, e.g. `lvmlt extract --dataset elpv --encoder mobilesam --img-size 256 "
        f"--out NEW_DIR 'levels=[{wanted}]'` (lvmlt extract has no --levels flag: levels is a key=value setting)"
        f"; the store checked was {store_root}"
    )


def load_levels(store, bundle, levels: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """The stored vectors of ``levels`` for the bundle's three splits, as float32.

    Args:
        store: an open :class:`~lvmlt.features.FeatureStore`; it is checked against the
            bundle (sample ids, labels and sizes), so a stale store is an error.
        bundle: the DataBundle the features belong to.
        levels: "vec" (v_SAM, the pooled neck output) or names of pooled earlier stages
            stored with ``levels=[...]`` at extraction ("stage3", "stage4", ...).

    Returns:
        ``{split: {level: N x C_level float32}}`` for train, val and test.

    Raises:
        UserError: the store does not match the bundle, or lacks a level.
    """
    store.check(bundle)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in bundle.splits():
        split = store.split(name)
        have = split.levels
        out[name] = {}
        for lv in levels:
            if lv == "vec":
                out[name][lv] = np.asarray(split.vec, dtype=np.float32)
            elif lv in have:
                out[name][lv] = np.asarray(have[lv], dtype=np.float32)
            else:
                stored = ", ".join(sorted(have)) or "none"
                raise UserError(
                    f"feature store {str(store.root)!r} has no pooled level {lv!r} (stored levels: {stored})",
                    fix=level_hint(store.root, levels),
                )
    return out


def usable_labels(store, bundle) -> dict[str, np.ndarray]:
    """Labels per split with images the extraction skipped set to -1 (their rows are zeros)."""
    out = {}
    for name, split in bundle.splits().items():
        y = split.labels.copy()
        bad = list(store.split(name).bad)
        if bad:
            y[np.asarray(bad, dtype=np.int64)] = -1
        out[name] = y
    return out


class FeatureNorm:
    """A fixed map of feature vectors, fitted on the training split.

    ``cl2n``: subtract the training mean, then L2-normalise (pooled SAM vectors share a large
    common component, so plain L2 leaves every image in a narrow cap of the sphere);
    ``l2``: L2-normalise; ``standardize``: per-dimension z-score; ``raw``: unchanged.
    """

    def __init__(self, kind: str = "cl2n"):
        if kind not in NORMS:
            raise UserError(
                f"unknown feature normalisation {kind!r}", fix=f"choose one of: {', '.join(NORMS)}"
            )
        self.kind = kind
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    @property
    def on_sphere(self) -> bool:
        """True when the outputs are unit vectors."""
        return self.kind in ("cl2n", "l2")

    def fit(self, x: np.ndarray) -> FeatureNorm:
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(axis=0)
        self.std = x.std(axis=0) + 1e-6
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.kind in ("cl2n", "standardize") and self.mean is None:
            raise RuntimeError("FeatureNorm.fit() must be called before use")
        if self.kind == "cl2n":
            x = x - self.mean
        elif self.kind == "standardize":
            x = (x - self.mean) / self.std
        if self.on_sphere:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x.astype(np.float32)


# ----------------------------------------------------------------------------- results


def count_trainable(module: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (shared tensors counted once)."""
    seen, n = set(), 0
    for p in module.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


@dataclass
class MethodResult:
    """One fitted method: its metrics, cost and what it was fitted with.

    ``seconds`` is the wall time of fitting (statistics, sampling and head training) on
    stored features; the one-off feature extraction is reported separately.
    """

    name: str
    val: dict
    test: dict
    trainable_params: int
    seconds: float
    best_epoch: int = -1
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- head training


@dataclass
class HeadTraining:
    """How a head is trained on tensors (resolved from a method's config by its builder)."""

    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 512  # 0 = full batch
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9  # sgd only

    def __post_init__(self):
        if self.epochs < 1:
            raise UserError(f"epochs={self.epochs} must be at least 1")
        if self.batch_size < 0:
            raise UserError(f"batch_size={self.batch_size} must be 0 (full batch) or positive")
        if self.optimizer not in ("adamw", "sgd"):
            raise UserError(f"unknown optimizer {self.optimizer!r}", fix="choose adamw or sgd")


def fit_head(
    module: nn.Module,
    loss_fn: Callable[[nn.Module, Sequence[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor],
    predict: Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor],
    train: tuple[Sequence[torch.Tensor], torch.Tensor, torch.Tensor | None],
    val: tuple[Sequence[torch.Tensor], np.ndarray] | None,
    how: HeadTraining,
    seed: int,
) -> tuple[nn.Module, dict]:
    """Minibatch training of a small module on in-memory tensors, cosine schedule.

    Args:
        module: the trainable head (its trainable parameters are optimised).
        loss_fn: ``loss_fn(module, xs, y, w) -> scalar`` on one batch; ``xs`` are the
            batch's input tensors (one per input, e.g. per level), ``w`` per-sample weights.
        predict: ``predict(module, xs) -> N x C logits`` (no grad; for validation).
        train: (inputs, labels, per-sample weights or None), inputs N x D_i each.
        val: (inputs, labels) to select the epoch on, by mean per-class accuracy
            (the trainer's rule); None = keep the last epoch.
        how: epochs, optimiser and batch settings.
        seed: seeds the batch order (the caller seeds the module's initial weights).

    Returns:
        ``(module with the selected epoch's weights, {"best_epoch", "history"})``.
    """
    xs, y, w = train
    n = len(y)
    bs = n if how.batch_size == 0 else min(how.batch_size, n)
    steps = math.ceil(n / bs)
    params = [p for p in module.parameters() if p.requires_grad]
    if how.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=how.lr, weight_decay=how.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=how.lr, momentum=how.momentum, weight_decay=how.weight_decay)
    total = how.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    gen = torch.Generator().manual_seed(int(seed))
    best, best_epoch, best_state, history = -math.inf, -1, None, []
    for epoch in range(how.epochs):
        module.train()
        order = torch.randperm(n, generator=gen)
        run = 0.0
        for s in range(steps):
            idx = order[s * bs : (s + 1) * bs]
            loss = loss_fn(module, [x[idx] for x in xs], y[idx], None if w is None else w[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run += loss.item()
        rec = {"epoch": epoch, "loss": run / steps}
        if val is not None:
            module.eval()
            with torch.no_grad():
                logits = predict(module, val[0]).numpy()
            keep = val[1] >= 0
            pred = logits[keep].argmax(1)
            labels = val[1][keep]
            accs = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
            rec["val_mean_class_acc"] = 100.0 * float(np.mean(accs))
            if rec["val_mean_class_acc"] > best:
                best, best_epoch = rec["val_mean_class_acc"], epoch
                best_state = copy.deepcopy(module.state_dict())
        history.append(rec)
    if best_state is not None:
        module.load_state_dict(best_state)
    else:
        best_epoch = how.epochs - 1
    module.eval()
    return module, {"best_epoch": best_epoch, "history": history}


class Timer:
    """``with Timer() as t: ...; t.seconds``: wall time of a block."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False
