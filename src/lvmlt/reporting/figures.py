"""The report's figures: per-class accuracy, reliability, confusion matrices and training curves.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from lvmlt.reporting.runs import SEED_KEYS, RunGroup, RunRecord, reliability_bins

ANNOTATE_MAX_CLASSES = 20  # beyond this, numbers in confusion-matrix cells are unreadable
TICK_LABEL_MAX_CLASSES = 40
NAME_POINTS_MAX_CLASSES = 12  # the per-class plot names its dots up to this many classes
_LINESTYLES = ("-", "--", ":", "-.")

# ---------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot state, so notebooks keep their backend)
# ---------------------------------------------------------------------------------------
def png_base64(fig: Figure) -> str:
    buf = io.BytesIO()
    # No "Software" metadata: the page must not carry even an embedded URL.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def thresholds(runs: Iterable[RunRecord]) -> tuple[Any, Any]:
    for r in runs:
        t = r.test.get("thresholds")
        if isinstance(t, dict):
            return t.get("many"), t.get("few")
    return None, None


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():  # a class absent from every seed's test set stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def figure_per_class(groups: Sequence[RunGroup]) -> Figure | None:
    """Per-class test accuracy (mean over seeds) against training images per class; with up to
    :data:`NAME_POINTS_MAX_CLASSES` classes the first group's dots carry the class names."""
    fig = Figure(figsize=(9.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    plotted, has_zero = False, False
    for g in groups:
        runs = [
            r for r in g.runs
            if r.train_counts is not None and len(r.test.get("per_class_acc") or []) == len(r.train_counts)
        ]  # fmt: skip
        if not runs:
            continue
        counts = runs[0].train_counts
        runs = [r for r in runs if np.array_equal(r.train_counts, counts)]
        acc = np.array([[np.nan if a is None else float(a) for a in r.test["per_class_acc"]] for r in runs])
        mean = _nanmean(acc, axis=0)
        ok = ~np.isnan(mean)
        x, y = counts[ok].astype(np.float64), mean[ok]
        has_zero |= bool((x == 0).any())
        ax.scatter(x, y, s=16 if len(x) <= 200 else 6, color=g.color, alpha=0.5, linewidths=0)
        # The line follows the mean over classes with the same count, so ties do not zigzag.
        ux = np.unique(x)
        ax.plot(ux, [y[x == u].mean() for u in ux], color=g.color, lw=1.6, label=f"{g.label} (n={len(runs)})")
        if not plotted and len(counts) <= NAME_POINTS_MAX_CLASSES:  # name the classes at the first group's dots
            for k, xk, yk in zip(np.flatnonzero(ok), x, y, strict=True):
                ax.annotate(_tick(runs[0].class_name(int(k))), (xk, yk), xytext=(3, 3),
                            textcoords="offset points", fontsize=7, color="0.3")  # fmt: skip
        plotted = True
    if not plotted:
        return None
    # log(0) is undefined; symlog keeps a class with no training image visible at 0.
    if has_zero:
        ax.set_xscale("symlog", linthresh=1)
    else:
        ax.set_xscale("log")
    # Plain counts ("10", "100") read faster than powers of ten.
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    many, few = thresholds(r for g in groups for r in g.runs)
    if many is not None and few is not None:
        for t in (few, many):
            ax.axvline(t, color="0.45", ls="--", lw=0.9)
        ax.plot(
            [], [], color="0.45", ls="--", lw=0.9, label=f"groups: few < {few} <= medium <= {many} < many"
        )
    ax.set_ylim(-3, 103)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def figure_reliability(groups: Sequence[RunGroup]) -> tuple[Figure | None, dict[str, float]]:
    """One reliability diagram per group, the test predictions of its seeds pooled.

    Returns:
        The figure (None when no run has predictions) and the pooled ECE (%) per group label.
    """
    items = []
    for g in groups:
        runs = [r for r in g.runs if r.confidence is not None]
        if runs:
            bins = int((runs[0].config.get("eval") or {}).get("ece_bins") or 15)
            conf = np.concatenate([r.confidence for r in runs])
            correct = np.concatenate([r.correct for r in runs])
            items.append((g, runs, reliability_bins(conf, correct, bins)))
    if not items:
        return None, {}
    cols = min(len(items), 3)
    rows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(3.8 * cols, 3.9 * rows), layout="constrained")
    pooled = {}
    for i, (g, runs, rb) in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1)
        edges, has = rb["edges"], rb["count"] > 0
        centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        acc, conf = rb["accuracy"][has], rb["confidence"][has]
        ax.bar(
            centers[has],
            acc,
            width=width[has],
            color=g.color,
            alpha=0.85,
            edgecolor="white",
            label="accuracy",
        )
        ax.bar(
            centers[has], conf - acc, bottom=acc, width=width[has], fill=False, hatch="//",
            edgecolor="#d62728", lw=0.6, label="gap to confidence",
        )  # fmt: skip
        ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1)
        ece = np.array([r.test["ece"] for r in runs if r.test.get("ece") is not None], dtype=np.float64)
        seeds = (
            f"{ece.mean():.2f} ± {ece.std(ddof=1):.2f}"
            if len(ece) > 1
            else (f"{ece[0]:.2f}" if len(ece) else "-")
        )
        pooled[g.label] = rb["ece"]
        ax.set_title(f"{g.label}\nECE {seeds}% (n={len(runs)}); pooled {rb['ece']:.2f}%", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_ylabel("accuracy")
        ax.set_aspect("equal")
        if i == 0:
            ax.legend(fontsize=7, loc="upper left")
    return fig, pooled


def figure_confusion(run: RunRecord, group: RunGroup) -> Figure | None:
    """Row-normalised test confusion matrix (% of each true class), classes head to tail."""
    saved = run.confusion  # from predictions.npz; older runs kept it in metrics.json
    matrix = np.asarray(saved if saved is not None else run.test.get("confusion") or [], dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[0] != matrix.shape[1]:
        return None
    c = matrix.shape[0]
    counts = run.train_counts
    # Sorted by training count, so the head-to-tail structure shows as a gradient along the diagonal.
    order = np.argsort(-counts, kind="stable") if counts is not None and len(counts) == c else np.arange(c)
    m = matrix[order][:, order]
    support = m.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(support > 0, 100.0 * m / support, np.nan)
    side = min(8.5, max(4.2, 0.3 * c + 2.5))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(
        pct, cmap="Blues", vmin=0, vmax=100, interpolation="nearest" if c <= 300 else "antialiased"
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="% of the true class's test images")
    if c <= TICK_LABEL_MAX_CLASSES:
        ticks, labels = np.arange(c), [_tick(run.class_name(int(i))) for i in order]
        long = c > 12 or max(len(t) for t in labels) * c > 60
        ax.set_xticks(ticks, labels, fontsize=7, rotation=90 if long else 0)
        ax.set_yticks(ticks, labels, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if c <= ANNOTATE_MAX_CLASSES:
        for i in range(c):
            for j in range(c):
                if m[i, j] > 0:
                    ax.text(
                        j, i, f"{pct[i, j]:.0f}", ha="center", va="center", fontsize=7 if c > 10 else 8,
                        color="white" if pct[i, j] > 60 else "black",
                    )  # fmt: skip
    what = "class" if run.classes is not None else "class index"
    how = f"{what}, sorted by training count (head first)" if counts is not None else what
    ax.set_xlabel(f"predicted {how}")
    ax.set_ylabel("true class")
    ax.set_title(f"{group.label}: {run.name}", fontsize=10)
    return fig


def _tick(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _curve_keys(runs: Sequence[RunRecord]) -> list[str]:
    keys = dict.fromkeys(k for r in runs for h in r.history for k in h)
    train = [k for k in keys if k.startswith("train/")]
    train.sort(key=lambda k: k != "train/total")  # the total first, then the terms as logged
    val = [k for k in keys if k.startswith("val/")]
    return train + val + (["lr"] if "lr" in keys else [])


def figure_curves(groups: Sequence[RunGroup]) -> Figure | None:
    """Loss terms, validation accuracies and learning rate by epoch; one line per run."""
    runs = [r for g in groups for r in g.runs if r.history]
    keys = _curve_keys(runs)
    if not keys:
        return None
    cols = min(len(keys), 3)
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.3 * cols, 2.9 * rows + 0.6), layout="constrained")
    axes = {k: fig.add_subplot(rows, cols, i + 1) for i, k in enumerate(keys)}
    for g in groups:
        for j, r in enumerate(g.runs):
            best = r.metrics.get("best_epoch")
            for k, ax in axes.items():
                pts = [(h["epoch"] + 1, h[k]) for h in r.history if isinstance(h.get(k), int | float)]
                pts = [(e, v) for e, v in pts if math.isfinite(v)]
                if not pts:
                    continue
                e, v = zip(*pts, strict=True)
                ax.plot(
                    e, v, color=g.color, ls=_LINESTYLES[j % len(_LINESTYLES)], lw=1.3,
                    marker="o" if len(e) <= 15 else None, ms=3, label=g.label if j == 0 else None,
                )  # fmt: skip
                if k == r.metrics.get("selected_on") and best in [x - 1 for x in e]:
                    ax.plot(
                        best + 1, v[e.index(best + 1)], marker="*", ms=11, color=g.color, mec="black", mew=0.5
                    )
    for k, ax in axes.items():
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss" if k.startswith("train/") else ("%" if k.startswith("val/") else k))
        ax.grid(alpha=0.3)
    handles, labels = next(iter(axes.values())).get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8)
    return fig


def budget_families(groups: Sequence[RunGroup]) -> list[tuple[str, dict[int, list[RunRecord]]]]:
    """Groups whose configs differ only in ``optim.epochs``: [(label, {epochs: runs})].

    Only families with at least two budgets are returned (a convergence study).
    """
    import json
    import re

    from lvmlt.config import from_saved, to_dict
    from lvmlt.errors import UserError

    fam: dict[str, dict[int, list[RunRecord]]] = {}
    labels: dict[str, str] = {}
    for g in groups:
        cfg = g.runs[0].config
        try:  # with today's defaults filled in, so that runs of older versions still match
            cfg = to_dict(from_saved(cfg))
        except (UserError, TypeError, ValueError):
            pass
        cfg = {k: v for k, v in cfg.items() if k not in SEED_KEYS}
        epochs = int(cfg.get("optim", {}).get("epochs", 0))
        cfg["optim"] = {k: v for k, v in cfg.get("optim", {}).items() if k != "epochs"}
        key = json.dumps(cfg, sort_keys=True, default=str)
        fam.setdefault(key, {}).setdefault(epochs, []).extend(g.runs)
        labels.setdefault(key, re.sub(r"(^|[-_])e\d+(?=[-_]|$)", "", g.label).strip("-_") or g.label)
    return [(labels[k], v) for k, v in fam.items() if len(v) >= 2]


_BUDGET_METRICS = ("top1", "mean_class_acc")


def figure_budget(groups: Sequence[RunGroup]) -> Figure | None:
    """Validation and test top-1 and mean class accuracy against the epoch budget.

    One line per family of runs that differ only in ``optim.epochs`` (mean over seeds;
    dashed = validation, solid = test); each budget's checkpoint was chosen on validation.
    """
    families = budget_families(groups)
    if not families:
        return None
    curves = {
        label: {
            b: {s: {m: float(np.mean([r.metrics[s][m] for r in runs])) for m in _BUDGET_METRICS} for s in ("val", "test")}
            for b, runs in by_budget.items()
        }
        for label, by_budget in families
    }
    return plot_budget_curves(curves)


def plot_budget_curves(curves: dict[str, dict[int, dict[str, dict[str, float]]]], title: str = "") -> Figure:
    """The budget figure from numbers: ``curves[label][epochs][split][metric]`` (split "val" / "test",
    metric "top1" / "mean_class_acc"), one colour per label, dashed = validation, solid = test.

    :func:`figure_budget` draws it from runs; ``benchmarks/convergence.py`` from its table.
    """
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    for i, (label, by_budget) in enumerate(curves.items()):
        budgets = sorted(by_budget)
        color = f"C{i % 10}"
        for ax, metric in zip(axes, _BUDGET_METRICS, strict=True):
            for split, style in (("val", "o--"), ("test", "s-")):
                ax.plot(budgets, [by_budget[b][split][metric] for b in budgets], style, color=color,
                        label=f"{label} ({split})")  # fmt: skip
    ticks = sorted({b for by_budget in curves.values() for b in by_budget})
    for ax, name in zip(axes, ("top-1", "mean class accuracy"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("epoch budget (optim.epochs)")
        ax.set_ylabel(f"{name} (%)")
        if title:
            ax.set_title(f"{title}: {name}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    return fig
