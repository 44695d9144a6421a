"""``lvmlt ablate``: the paper's ablation grid (tables I-V) over seeds, as markdown and CSV.

The rows are :data:`lvmlt.experiments.recipes.ABLATION` (a label and config overrides on
top of the base config each); every (row, seed) is an ordinary training run, run by the one
grid runner (:mod:`lvmlt.experiments.grid`): an interrupted grid resumes by skipping runs
whose ``metrics.json`` exists and continuing a killed one.
"""

from __future__ import annotations

from pathlib import Path

from lvmlt.config import Config
from lvmlt.experiments.grid import cells, pick, run_cells, run_metrics
from lvmlt.experiments.recipes import ABLATION

#: The grid's row labels, in table order.
VARIANTS: tuple[str, ...] = tuple(r.label for r in ABLATION)


def run_grid(
    base: Config,
    variants: list[str] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    out_dir: str | Path = "runs/ablate",
    tag: str = "",
    progress: bool = True,
    log=print,
    train_missing: bool = True,
) -> dict[str, list[dict]]:
    """Train every variant x seed (skipping finished runs); returns {variant: [test metrics per seed]}
    (each with its ``seed``).

    With ``train_missing=False`` nothing is trained: the tables hold the finished runs only
    (the ``n`` column says how many seeds each row has)."""
    rows = pick(ABLATION, variants, VARIANTS, "ablation variant")
    tag = tag or f"{base.data.name}-{base.loss.name}"
    grid = cells(base, [(r.label, r.overrides, r) for r in rows], seeds, out_dir, tag)
    return run_cells(grid, lambda c: run_metrics(c.cfg, progress, train_missing), log)
