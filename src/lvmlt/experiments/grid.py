"""The one grid runner of ``lvmlt ablate``, ``baselines`` and ``compare``: rows x seeds.

Every (row, seed) is an ordinary training run in its own directory, named
``PREFIX-<slug of the row>-seed<seed>`` (:func:`slug`, the one rule). A finished run (its
``metrics.json`` exists) is read, a killed one resumes from its last checkpoint, a missing
one is trained, so an interrupted grid continues where it stopped (:func:`run_result`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from lvmlt.config import Config, replace

#: Settings that never change a finished run's result: a run is reused whatever they are.
RUNTIME_KEYS = ("device", "threads", "out_dir", "run_name")


def slug(label: str) -> str:
    """A row label as part of a run name: ``+SAM features+L_proto (ours)`` -> ``sam_features_l_proto__ours``."""
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower() or "baseline"


@dataclass(frozen=True)
class Cell:
    """One (row, seed) of a grid: the table row it fills, its seed, its run's config and
    whatever else the runner's ``obtain`` needs (the row's recipe)."""

    row: str
    seed: int
    cfg: Config
    recipe: object = None


def row_config(
    base: Config, overrides: dict, seed: int, run_name: str, out_dir: str, keep: Iterable[str] = ()
) -> Config:
    """``base`` with a row's ``overrides`` (except the keys in ``keep``, which the user set), the
    seed and the run's place."""
    keep = set(keep)
    mine = {k: v for k, v in overrides.items() if k not in keep}
    return replace(base, **mine, seed=seed, out_dir=str(out_dir), run_name=run_name)


def cells(
    base: Config,
    rows: Sequence[tuple[str, dict, object]],
    seeds: Sequence[int],
    out_dir,
    prefix: str,
    keep: Iterable[str] = (),
) -> list[Cell]:
    """The cells of ``rows`` (``(label, overrides, recipe)``; the recipe's ``name``, else the
    label's slug, names its runs) x ``seeds``, row-major."""
    out = []
    for label, overrides, recipe in rows:
        part = getattr(recipe, "name", None) or slug(label)
        for s in seeds:
            cfg = row_config(base, overrides, s, f"{prefix}-{part}-seed{s}", out_dir, keep)
            out.append(Cell(label, s, cfg, recipe))
    return out


def _top1(value: dict) -> str:
    return f"test top1 {value['top1']:.2f}"


def run_cells(
    grid: Sequence[Cell],
    obtain: Callable[[Cell], dict | None],
    log=print,
    describe: Callable[[dict], str] = _top1,
) -> dict[str, list[dict]]:
    """``obtain`` every cell in order; returns {row: [its value per seed, with ``seed`` first]}.

    A cell whose ``obtain`` gives None (a run not trained with ``train_missing=False``) is
    left out, and so is a row left without any value.
    """
    results: dict[str, list[dict]] = {}
    t0 = time.time()
    done = 0
    for cell in grid:
        got = results.setdefault(cell.row, [])
        value = obtain(cell)
        if value is None:
            continue
        got.append({"seed": cell.seed, **value})
        done += 1
        log(f"[{done}/{len(grid)}] {cell.row} seed {cell.seed}: {describe(value)}  (elapsed {time.time() - t0:.0f}s)")
    return {k: v for k, v in results.items() if v}


def run_result(cfg: Config, progress: bool = True, train_missing: bool = True, bundle=None) -> dict | None:
    """The ``metrics.json`` of the run ``cfg`` names: read when it has finished, else trained
    (a killed run resumes from its last checkpoint); None if missing and not ``train_missing``.

    A finished run is reused only when it was made with ``cfg`` (the sections it uses, as
    ``--resume`` compares them); one made with other settings is a UserError naming them.

    Args:
        bundle: the data (built from ``cfg.data`` when None).
    """
    from lvmlt import rundir
    from lvmlt.errors import UserError
    from lvmlt.training.checks import config_diff
    from lvmlt.training.trainer import Trainer, run_dir_for

    rd = run_dir_for(cfg)
    if (rd / rundir.METRICS).exists():
        diff = config_diff(rd, cfg, ignore=RUNTIME_KEYS)
        if diff:
            raise UserError(
                f"the finished run {rd} was made with other settings ({diff})",
                fix=f"delete {rd} for a fresh run, or write the runs elsewhere (another --out / --tag / run_name)",
            )
        return rundir.read_metrics(rd)
    if not train_missing:
        return None
    resume = (rd / rundir.LAST).exists()
    return Trainer(cfg, resume=resume, progress=progress, bundle=bundle).fit()


def run_metrics(cfg: Config, progress: bool = True, train_missing: bool = True, bundle=None) -> dict | None:
    """The test metrics of :func:`run_result`."""
    m = run_result(cfg, progress, train_missing, bundle)
    return None if m is None else m["test"]


def pick(table: Sequence, names: Sequence[str] | None, default: Sequence[str], what: str) -> list:
    """The entries of ``table`` (each with a ``label``) named ``names`` (``default`` when None),
    in the order asked; an unknown name is a UserError listing the known ones."""
    from lvmlt.errors import UserError

    by_label = {r.label: r for r in table}
    names = list(names or default)
    for n in names:
        if n not in by_label:
            raise UserError(f"unknown {what} {n!r}", fix=f"choose from: {', '.join(by_label)}")
    return [by_label[n] for n in names]
