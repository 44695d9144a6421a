"""``lvmlt baselines``: the paper's baselines, each alone and with "+SAM features + L_proto"
(tables I and II).

A row (:data:`lvmlt.experiments.recipes.BASELINES`) is one way of getting a long-tailed
classifier:

* trained end to end with a loss (cross-entropy, balanced softmax, ProCo);
* a post-hoc correction of a trained run's saved test logits (Label Shift = MAPLS, MLLS,
  BBSE, post-hoc logit adjustment), which needs no training at all;
* a second, decoupled stage on a trained run's representation (cRT, LWS).

Every row has a twin trained with the SAM map and latent fusion and the prototype loss;
post-hoc and second-stage rows apply to the twin's own first-stage run. Runs are named
like those of :mod:`lvmlt.experiments.ablate` (``TAG-ce-baseline-seed0``,
``TAG-ce-sam_features_l_proto__ours-seed0``), so a grid that is already trained is reused,
and a finished run is never trained twice.
"""

from __future__ import annotations

from pathlib import Path

from lvmlt.config import Config, replace
from lvmlt.experiments.grid import Cell, cells, pick, run_cells, run_metrics, slug
from lvmlt.experiments.recipes import ABLATION, BASELINES, DEFAULT_BASELINES, PLAIN, SAM_TWIN, Baseline

#: The row labels, in table order.
ROWS: tuple[str, ...] = tuple(r.label for r in BASELINES)


def table_keys(names: list[str]) -> list[str]:
    """The table's row names of baseline rows ``names``: each, then its "+SAM" twin."""
    return [_key(n, sam) for n in names for sam in (False, True)]


def _key(name: str, sam: bool) -> str:
    return f"{name} {SAM_TWIN}" if sam else name


def _twins(row: Baseline) -> list[tuple[str, str, dict]]:
    """(table key, ablation row, first-stage overrides) of a row's plain and "+SAM" versions."""
    variants = {r.label: r.overrides for r in ABLATION}
    return [(_key(row.label, sam), v, {**row.train, **variants[v]}) for sam, v in ((False, PLAIN), (True, SAM_TWIN))]


def run_rows(
    base: Config,
    rows: list[str] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    out_dir: str | Path = "runs/ablate",
    tag: str = "",
    stage_epochs: int | None = None,
    progress: bool = True,
    log=print,
    train_missing: bool = True,
) -> dict[str, list[dict]]:
    """Obtain every row and its "+SAM" twin over seeds; returns {row: [test metrics per seed]}
    (each with its ``seed``).

    Args:
        base: the base config (data, model, optimiser; a ``fusion.store`` for the +SAM rows).
        rows: labels in :data:`ROWS` (default :data:`~lvmlt.experiments.recipes.DEFAULT_BASELINES`).
        stage_epochs: epochs of second stages (default half the first stage's, at least 1).
        train_missing: False = tabulate finished runs only (post-hoc rows are still computed).
    """
    chosen = pick(BASELINES, rows, DEFAULT_BASELINES, "baseline row")
    tag = tag or base.data.name
    stage_epochs = stage_epochs or max(1, base.optim.epochs // 2)
    grid = []
    for row in chosen:
        for key, variant, overrides in _twins(row):
            # the first stage is the ablation grid's run of the same family and variant
            first = cells(base, [(variant, overrides, row)], seeds, out_dir, f"{tag}-{row.family}")
            grid += [Cell(key, c.seed, c.cfg, row) for c in first]

    def obtain(cell: Cell) -> dict | None:
        return _obtain(cell, stage_epochs, progress, train_missing)

    return run_cells(grid, obtain, log)


def _obtain(cell: Cell, stage_epochs: int, progress: bool, train_missing: bool) -> dict | None:
    """A cell's test metrics: its first-stage run's, corrected post hoc or after a second stage."""
    from lvmlt.calibration.run import calibrate_run
    from lvmlt.training.trainer import run_dir_for

    row: Baseline = cell.recipe
    first = cell.cfg
    m = run_metrics(first, progress, train_missing)
    if m is None or not (row.posthoc or row.stage):
        return m
    if row.posthoc:
        return calibrate_run(run_dir_for(first), row.posthoc, source_prior=row.source_prior, bcts=row.bcts)["test"]
    stage = replace(
        first,
        **row.stage,
        **{"stage.init_from": str(run_dir_for(first)), "optim.epochs": stage_epochs, "optim.warmup_epochs": 0},
        run_name=f"{first.run_name}-{slug(row.label)}",
    )
    return run_metrics(stage, progress, train_missing)
