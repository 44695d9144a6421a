"""The one writer of result tables: markdown of mean ± std over seeds, and CSV.

``lvmlt ablate`` and ``lvmlt baselines`` write one table (:func:`write_tables`: a ``run``
column, one CSV line per row and seed); ``lvmlt compare`` writes several protocols into
one CSV (:func:`write_protocol_csv`: ``protocol`` and ``system`` columns, the cost of each
system beside its metrics). Both read their markdown from :func:`table_block`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

#: The metric columns of the comparison's tables and CSV.
COMPARE_COLUMNS = ("many", "medium", "few", "top1", "mean_class_acc", "macro_f1")


def table_block(rows: Mapping[str, Sequence[Mapping]], columns: Sequence[str]) -> str:
    """One markdown table of mean ± std over seeds (no trailing newline)."""
    from lvmlt.evaluation.metrics import mean_std_table

    return mean_std_table(rows, columns).rstrip()


def write_tables(
    results: dict[str, list[dict]], out_prefix: str | Path, title: str = "", note: str = ""
) -> str:
    """Writes ``<prefix>.md`` and ``<prefix>.csv`` (mean +- std over seeds); returns the markdown."""
    from lvmlt.evaluation.metrics import SUMMARY_COLUMNS, write_csv

    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    table = table_block(results, SUMMARY_COLUMNS) + "\n"
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


def write_protocol_csv(
    path: Path, tables: Mapping[str, Mapping[str, Sequence[Mapping]]], cost: Mapping, extra_columns: Sequence[str] = ()
) -> None:
    """The comparison's CSV: one line per (protocol, system, seed), the system's cost beside it.

    Args:
        tables: protocol -> {system: [metrics per seed]}.
        cost: system -> {"params", "seconds", ...}.
        extra_columns: metric columns after :data:`COMPARE_COLUMNS` (per-attribute accuracies).
    """
    cols = ["protocol", "system", "seed", *COMPARE_COLUMNS, *extra_columns]
    cols += ["val_mean_class_acc", "best_epoch", "params", "seconds"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for protocol, rows in tables.items():
            for name, runs in rows.items():
                c = cost.get(name, {})
                extra = {"protocol": protocol, "system": name, "params": c.get("params"), "seconds": c.get("seconds")}
                for m in runs:
                    line = m | extra
                    w.writerow(["" if line.get(k) is None else line[k] for k in cols])
