"""The paper's ablation grid (tables I-V) over seeds, written as markdown and CSV.

Each variant is a list of config overrides on top of a base config; every (variant,
seed) is an ordinary training run in its own directory, so an interrupted grid resumes
by skipping runs whose ``metrics.json`` exists and continuing a killed one.
"""

from __future__ import annotations

import time
from pathlib import Path

from lvmlt.config import Config, replace

_PROTO = {"proto.enabled": True}
_BOTH = {"fusion.map": True, "fusion.latent": True}

# name -> overrides. The order is the order of the rows in the paper's tables.
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "+SAM map": {"fusion.map": True},
    "+SAM latent": {"fusion.latent": True},
    "+SAM map&latent": _BOTH,
    "+SAM features+L_head": {**_BOTH, **_PROTO, "proto.tail_std": False, "proto.tail_dist": False},
    "+SAM features+L_tail-std": {**_BOTH, **_PROTO, "proto.head": False, "proto.tail_dist": False},
    "+SAM features+L_tail-dist": {**_BOTH, **_PROTO, "proto.head": False, "proto.tail_std": False},
    "+SAM features+L_proto (ours)": {**_BOTH, **_PROTO},
    "SAM latent feature only": {"fusion.sam_only": True},
    # beyond the paper (docs/methods.md): dual supervision of both branches, alpha chosen on validation
    "+SAM features+L_proto+dual+val alpha": {**_BOTH, **_PROTO, "fusion.aux_weight": 1.0, "fusion.alpha_select": "val"},
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower() or "baseline"


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
    from lvmlt.errors import UserError

    names = variants or list(VARIANTS)
    for n in names:
        if n not in VARIANTS:
            raise UserError(f"unknown ablation variant {n!r}", fix=f"choose from: {', '.join(VARIANTS)}")
    tag = tag or f"{base.data.name}-{base.loss.name}"
    results: dict[str, list[dict]] = {}
    total = len(names) * len(seeds)
    done, t0 = 0, time.time()
    for n in names:
        results[n] = []
        for s in seeds:
            cfg = replace(
                base, **VARIANTS[n], seed=s, out_dir=str(out_dir), run_name=f"{tag}-{_slug(n)}-seed{s}"
            )
            m = run_metrics(cfg, progress, train_missing)
            if m is None:
                continue
            results[n].append({"seed": s, **m})
            done += 1
            el = time.time() - t0
            log(f"[{done}/{total}] {n} seed {s}: test top1 {m['top1']:.2f}  (elapsed {el:.0f}s)")
    return {k: v for k, v in results.items() if v}


def run_result(cfg: Config, progress: bool = True, train_missing: bool = True, bundle=None) -> dict | None:
    """The ``metrics.json`` of the run ``cfg`` names: read when it has finished, else trained
    (a killed run resumes from its last checkpoint); None if missing and not ``train_missing``.

    The one read-or-train helper of ``lvmlt ablate``, ``baselines``, ``compare`` and the demo.
    A finished run is reused only when it was made with ``cfg`` (the sections it uses, as
    ``--resume`` compares them); one made with other settings is a UserError naming them.

    Args:
        bundle: the data (built from ``cfg.data`` when None).
    """
    from lvmlt import rundir
    from lvmlt.errors import UserError
    from lvmlt.training.trainer import Trainer, config_diff, run_dir_for

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


#: Settings that never change a finished run's result: a run is reused whatever they are.
RUNTIME_KEYS = ("device", "threads", "out_dir", "run_name")


def run_metrics(cfg: Config, progress: bool = True, train_missing: bool = True, bundle=None) -> dict | None:
    """The test metrics of :func:`run_result`."""
    m = run_result(cfg, progress, train_missing, bundle)
    return None if m is None else m["test"]


def write_tables(
    results: dict[str, list[dict]], out_prefix: str | Path, title: str = "", note: str = ""
) -> str:
    """Writes ``<prefix>.md`` and ``<prefix>.csv`` (mean +- std over seeds); returns the markdown."""
    from lvmlt.evaluation.metrics import SUMMARY_COLUMNS, mean_std_table, write_csv

    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    table = mean_std_table(results, columns=SUMMARY_COLUMNS)
    md = (f"# {title}\n\n" if title else "") + (note + "\n\n" if note else "") + table + "\n"
    out_prefix.with_suffix(".md").write_text(md)
    write_csv(out_prefix.with_suffix(".csv"), results)
    return md


def keep_committed(
    results: dict[str, list[dict]], csv_path: str | Path, order: list[str], seeds: tuple[int, ...]
) -> dict[str, list[dict]]:
    """``results`` completed by the lines of an earlier table's CSV.

    A table is written from the runs on this machine; when an earlier table's runs are gone
    (another machine, another session), its CSV still holds one line per row and seed. A
    (row, seed) the CSV has keeps its committed line, and a finished run here fills only a
    (row, seed) the CSV lacks, so a table gains rows or seeds without training its other
    runs again and without its committed numbers changing because a run of the same name
    exists here (to replace a line, delete it from the CSV first). Only rows in ``order``
    (which also gives the rows' order) and seeds in ``seeds`` are kept.
    """
    from lvmlt.errors import UserError
    from lvmlt.evaluation.metrics import read_csv

    csv_path = Path(csv_path)
    committed = read_csv(csv_path) if csv_path.exists() else {}
    merged: dict[str, list[dict]] = {}
    for name in order:
        by_seed = {int(m["seed"]): m for m in results.get(name, [])}
        for line in committed.get(name, []):
            if not isinstance(line.get("seed"), int):
                raise UserError(
                    f"row {name!r} has a line without a whole-number seed ({line.get('seed')!r})",
                    where=str(csv_path),
                    fix="tables written before the seed column cannot be kept; rerun their runs",
                )
            by_seed[line["seed"]] = line
        kept = [by_seed[s] for s in sorted(by_seed) if s in seeds]
        if kept:
            merged[name] = kept
    return merged
