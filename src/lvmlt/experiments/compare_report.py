"""The report of ``lvmlt compare``: ``<dataset>.md`` and ``<dataset>.csv``.

Every sentence about the data or the machine is read from the data: the group thresholds
from the bundle's meta, the GLT protocol's classes, attributes and counts from its bundles
(:func:`lvmlt.experiments.compare_runs.glt_facts`), the machine from each run's runtime
record; the recipes' own notes come from :mod:`lvmlt.experiments.recipes`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lvmlt.experiments.compare_runs import Comparison
from lvmlt.experiments.recipes import COMPARE_NOTES
from lvmlt.experiments.tables import COMPARE_COLUMNS, table_block, write_protocol_csv

#: What each GLT test set is (the protocol's definition, lvmlt.data.glt).
_GLT_TESTS = {
    "cbl": "(class-balanced, attributes as in training: the CLT protocol)",
    "gbl": "(class- and attribute-balanced: the GLT protocol)",
}


def _dataset_of(filename: str) -> str | None:
    """The longest built-in dataset name in a file name ("...-fashion-mnist-lt-ce.csv" is not mnist-lt)."""
    from lvmlt.data import DATASETS

    names = [n for n in DATASETS.names() if n in filename]
    return max(names, key=len) if names else None


def find_sam_fusion_results(dataset: str, results_root: Path, exclude: Path) -> tuple[dict, list[Path]]:
    """Rows of CSV result files under ``results_root`` (not under ``exclude``) naming the dataset.

    A file qualifies when its name contains the dataset name and it has a "run" column and
    the metric columns; rows with the same run name (one per seed) are grouped.
    """
    rows: dict[str, list[dict]] = {}
    used = []
    if not results_root.is_dir():
        return rows, used
    for path in sorted(results_root.rglob("*.csv")):
        if exclude in path.parents or _dataset_of(path.name) != dataset:
            continue
        with path.open() as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "run" not in reader.fieldnames or "top1" not in reader.fieldnames:
                continue
            for r in reader:
                vals = {c: float(r[c]) for c in COMPARE_COLUMNS if r.get(c) not in (None, "")}
                rows.setdefault(f"SAM-fusion: {r['run']} ({path.name})", []).append(vals)
        used.append(path)
    return rows, used


def _cost_table(cost: dict) -> str:
    lines = [
        "| system | trainable params | seconds per fit (mean) | encoder |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, c in cost.items():
        params = "?" if c.get("params") is None else f"{c['params']:,}"
        lines.append(f"| {name} | {params} | {c['seconds']:.1f} | {c['encoder']} |")
    return "\n".join(lines)


def _attribute_columns(facts: dict | None) -> list[str]:
    return [f"{a}_acc" for a in facts["attributes"]] if facts else []


def write_report(
    out_dir: Path,
    dataset: str,
    command: str,
    seeds,
    comparison: Comparison,
    sam_rows: dict,
    sam_files: list[Path],
    provenance: dict | None,
    thresholds: tuple,
    extraction_note: str = "",
) -> str:
    """Write ``<dataset>.md`` and ``<dataset>.csv`` in ``out_dir``; returns the markdown."""
    c = comparison
    seeds_s = ",".join(map(str, seeds))
    # Blocks of markdown, joined by blank lines.
    md = [f"# Other systems on {dataset}: test accuracy (%), mean ± std over seeds {seeds_s}"]
    md.append("Command (from the repository root):\n\n```\n" + command + "\n```")
    if provenance:
        md.append(
            f"Feature store: {provenance['encoder']} at {provenance['img_size']} px, {provenance['precision']}, "
            f"stored as {provenance.get('dtype')}, pooled levels {provenance.get('levels') or 'none'} "
            f"(weights sha256 {str(provenance.get('weights_sha256'))[:12]}...). {extraction_note}".rstrip()
        )
    if c.standard:
        md += _standard_blocks(dataset, c.standard, sam_rows, sam_files, thresholds)
    if c.glt:
        md += _glt_blocks(c.glt, c.glt_facts)
    md.append("## Cost\n\n" + _cost_table(c.cost))
    machines = dict.fromkeys(m for v in c.cost.values() for m in v.get("machine", "").split("; ") if m)
    md.append(COMPARE_NOTES.format(machines="; ".join(machines) or "a machine the runs did not record"))
    text = "\n\n".join(md) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{dataset}.md").write_text(text)
    tables = {"standard": c.standard}
    if c.glt:
        for ck in ("best", "last"):
            tables |= {f"glt-{ck}-test-cbl": c.glt[ck]["cbl"], f"glt-{ck}-test-gbl": c.glt[ck]["gbl"]}
    write_protocol_csv(out_dir / f"{dataset}.csv", tables, c.cost, _attribute_columns(c.glt_facts))
    return text


def _standard_blocks(dataset: str, standard: dict, sam_rows: dict, sam_files: list[Path], thresholds: tuple) -> list[str]:
    """The report's markdown blocks of the standard split: its table, then the SAM-fusion rows."""
    many, few = thresholds
    md = [
        f"## Standard split\n\nMany > {many}, few < {few} training images; many / medium / few are mean "
        "per-class accuracies of the group, top1 (All) the accuracy over all test images, "
        "mean_class_acc the balanced accuracy.",
        table_block(standard, COMPARE_COLUMNS),
    ]
    if sam_rows:
        files = ", ".join(str(p) for p in sam_files)
        md.append(f"SAM-fusion method (rows read from {files}; not re-run here):")
        md.append(table_block(sam_rows, COMPARE_COLUMNS))
    else:
        md.append(
            f"SAM-fusion method: no results file for {dataset} existed under benchmarks/results/ when this "
            "table was made, so its rows are absent (they are not run here)."
        )
    return md


def _glt_intro(f: dict) -> str:
    """The GLT section's heading and its paragraph on the protocol, from the protocol's facts."""
    per_class = f["test_per_class"]
    tests = (
        f"test sets of {per_class[0]} images per class, so top1 = mean_class_acc"
        if len(per_class) == 1
        else f"test sets of {per_class[0]} to {per_class[-1]} images per class"
    )
    attrs = " / ".join(f["attributes"])
    return (
        f"## GLT protocol on {f['title']}\n\nClass = {f['classes']} ({f['num_classes']}), attribute = "
        f"{f['attribute']} ({attrs}); many > {f['many']}, few < {f['few']} training images (Train-GLT counts "
        f"{f['train_counts']}); {tests}. {' / '.join(_attribute_columns(f))}: mean per-class accuracy on the "
        f"{attrs} images. Checkpoint: the epoch with the best validation balanced accuracy "
        f"({f['val_images']} validation images)."
    )


def _glt_blocks(glt: dict, facts: dict) -> list[str]:
    """The report's markdown blocks of the GLT protocol: both test sets, best and last checkpoint."""
    attrs = _attribute_columns(facts)
    cols = (*COMPARE_COLUMNS, *attrs)
    md = [_glt_intro(facts)]
    for k in ("cbl", "gbl"):
        md.append(f"{facts['tests'][k]} {_GLT_TESTS[k]}:")
        md.append(table_block(glt["best"][k], cols))
    last = {
        f"{name}, {facts['tests'][k]}": glt["last"][k][name]
        for name in glt["last"]["cbl"]
        for k in ("cbl", "gbl")
    }
    if facts.get("note"):
        md.append(facts["note"])
    md.append("The last epoch's checkpoint (no selection), for both test sets:")
    md.append(table_block(last, ("many", "medium", "few", "top1", *attrs)))
    return md
