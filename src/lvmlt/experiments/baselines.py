"""The paper's baselines, each alone and with "+SAM features + L_proto" (tables I and II).

A row is one way of getting a long-tailed classifier:

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

import time
from dataclasses import dataclass, field
from pathlib import Path

from lvmlt.config import Config, replace
from lvmlt.errors import UserError
from lvmlt.experiments.ablate import VARIANTS, _slug, run_metrics

SAM = "+SAM features+L_proto (ours)"


@dataclass(frozen=True)
class Row:
    """How one table row is obtained.

    Attributes:
        loss: name of the first-stage run family (``ce`` -> runs ``TAG-ce-...``).
        train: overrides of that family's first-stage training.
        posthoc: a calibrator (``lvmlt calibrate --method``) applied to the run's logits.
        stage: overrides of a second stage trained on the first-stage run.
        source_prior: what the post-hoc method assumes the model was trained for.
        bcts: calibrate the logits on the validation split first (bias-corrected
            temperature scaling), as EM-based estimators assume calibrated probabilities.
    """

    loss: str
    train: dict = field(default_factory=dict)
    posthoc: str | None = None
    stage: dict | None = None
    source_prior: str = "train"
    bcts: bool = False


_CE = {"loss.name": "ce"}
_DECOUPLED = {"stage.freeze_backbone": True, "data.sampler": "class_balanced"}

ROWS: dict[str, Row] = {
    "CE": Row("ce", _CE),
    "Label Shift (MAPLS)": Row("ce", _CE, posthoc="mapls"),
    "Label Shift (MLLS)": Row("ce", _CE, posthoc="mlls"),
    "Label Shift (BBSE)": Row("ce", _CE, posthoc="bbse"),
    "Label Shift (MAPLS + BCTS)": Row("ce", _CE, posthoc="mapls", bcts=True),
    "Label Shift (MLLS + BCTS)": Row("ce", _CE, posthoc="mlls", bcts=True),
    "logit adjustment (post-hoc)": Row("ce", _CE, posthoc="logit_adjust"),
    "cRT": Row("ce", _CE, stage={**_DECOUPLED, "stage.reset_head": True}),
    "LWS": Row("ce", _CE, stage={**_DECOUPLED, "stage.lws": True}),
    "balanced softmax": Row("bs", {"loss.name": "balanced_softmax"}),
    "ProCo": Row("proco", {"loss.name": "logit_adjusted", "proco.enabled": True}),
}
DEFAULT_ROWS = (
    "CE",
    "Label Shift (MAPLS)",
    "logit adjustment (post-hoc)",
    "cRT",
    "balanced softmax",
    "ProCo",
)


def table_keys(names: list[str]) -> list[str]:
    """The table's row names of baseline rows ``names``: each, then its "+SAM" twin."""
    return [_key(n, sam) for n in names for sam in (False, True)]


def _key(name: str, sam: bool) -> str:
    return f"{name} {SAM}" if sam else name


def _variants(sam: bool) -> tuple[str, dict]:
    name = SAM if sam else "baseline"
    return name, VARIANTS[name]


def _first_stage(base: Config, row: Row, sam: bool, seed: int, tag: str) -> Config:
    variant, overrides = _variants(sam)
    return replace(
        base, **row.train, **overrides, seed=seed, run_name=f"{tag}-{row.loss}-{_slug(variant)}-seed{seed}"
    )


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
        rows: names in :data:`ROWS` (default :data:`DEFAULT_ROWS`).
        stage_epochs: epochs of second stages (default half the first stage's, at least 1).
        train_missing: False = tabulate finished runs only (post-hoc rows are still computed).
    """
    from lvmlt.calibration.run import calibrate_run
    from lvmlt.training.trainer import run_dir_for

    names = list(rows or DEFAULT_ROWS)
    for n in names:
        if n not in ROWS:
            raise UserError(f"unknown baseline row {n!r}", fix=f"choose from: {', '.join(ROWS)}")
    base = replace(base, out_dir=str(out_dir))
    tag = tag or base.data.name
    stage_epochs = stage_epochs or max(1, base.optim.epochs // 2)
    results: dict[str, list[dict]] = {}
    t0 = time.time()
    for n in names:
        row = ROWS[n]
        for sam in (False, True):
            key = _key(n, sam)
            results[key] = []
            for s in seeds:
                first = _first_stage(base, row, sam, s, tag)
                m = run_metrics(first, progress, train_missing)
                if m is None:
                    continue
                if row.posthoc:
                    entry = calibrate_run(
                        run_dir_for(first), row.posthoc, source_prior=row.source_prior, bcts=row.bcts
                    )
                    m = entry["test"]
                elif row.stage:
                    stage = replace(
                        first,
                        **row.stage,
                        **{"stage.init_from": str(run_dir_for(first)), "optim.epochs": stage_epochs},
                        **{"optim.warmup_epochs": 0},
                        run_name=f"{first.run_name}-{_slug(n)}",
                    )
                    m = run_metrics(stage, progress, train_missing)
                    if m is None:
                        continue
                results[key].append({"seed": s, **m})
                log(f"{key} seed {s}: test top1 {m['top1']:.2f}  (elapsed {time.time() - t0:.0f}s)")
    return {k: v for k, v in results.items() if v}
