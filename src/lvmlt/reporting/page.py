"""``lvmlt report``: one self-contained HTML page for a set of finished runs, plus markdown tables.

The page opens offline: every figure is a PNG rendered with matplotlib's Agg renderer and
embedded as base64, the style sheet is inline, and there is no script and no external link.
The same tables are written as markdown next to it (``report.md`` for ``report.html``).

Runs whose configs are equal except for ``seed``, ``run_name`` and ``out_dir`` form one
*group* (one experiment over several seeds) and get one row with mean ± std over seeds;
every run also gets its own row. What the page shows:

- the Many / Medium / Few / All (top-1), mean class accuracy and ECE table of the test
  split (best epoch chosen on validation), with calibrated metrics as extra rows, and a
  "How to read this" list defining every column and symbol;
- per-class test accuracy against the class's training count (log scale), one series per
  group (mean over its seeds), and a table of every class by name (``model.json``; older
  runs by index) with its training count, group and accuracy;
- a reliability diagram per group (the test predictions of its seeds pooled);
- the confusion matrix of the first run of each group;
- training curves: every loss term, the validation accuracies and the learning rate;
- each run's provenance (git commit, seed, data fingerprints; the feature store, its
  encoder and weights sha256 only when the run's model read stored features) and its full
  config.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from lvmlt.errors import UserError
from lvmlt.reporting.figures import (
    figure_budget,
    figure_confusion,
    figure_curves,
    figure_per_class,
    figure_reliability,
    png_base64,
    thresholds,
)
from lvmlt.reporting.runs import (
    RunGroup,
    RunRecord,
    expand_run_dirs,
    flatten,
    group_runs,
    is_scalar,
    provenance,
    read_run,
    short_id,
    unique_names,
)
from lvmlt.reporting.tables import (
    class_table,
    groups_table,
    how_to_read,
    how_to_read_md,
    md_text,
    md_to_html,
    provenance_table,
    runs_table,
    summary_table,
)
from lvmlt.rundir import atomic_write_text as _write_atomic  # a reader never sees a half-written page

# ---------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------
_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d2329; background: #fff; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 24px; margin: 4px 0 2px; } h2 { font-size: 19px; margin: 30px 0 8px;
     border-bottom: 2px solid #e3e8ee; padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
.meta, .note, figcaption { color: #56606b; font-size: 13px; }
nav a { margin-right: 14px; color: #1f5fa8; text-decoration: none; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid #d9dee4; padding: 4px 9px; text-align: left; white-space: nowrap; }
th { background: #f1f4f7; } tbody tr:nth-child(even) { background: #f9fafb; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 6px; border-radius: 2px; }
figure { margin: 10px 0 22px; } img { max-width: 100%; height: auto; border: 1px solid #eef1f4; }
details { margin: 6px 0; border: 1px solid #e3e8ee; border-radius: 4px; padding: 4px 10px; }
summary { cursor: pointer; font-weight: 600; }
dl { margin: 6px 0 12px; } dt { font-weight: 600; margin-top: 6px; } dd { margin: 0 0 0 18px; color: #34404b; }
pre { background: #f6f8fa; padding: 8px 10px; overflow: auto; font-size: 12px; max-height: 420px; }
.warn { color: #8a4b00; }
.figrow { display: flex; flex-wrap: wrap; gap: 0 18px; align-items: flex-start; }
"""


def _kv_table(items: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape('-' if v is None else str(v))}</td></tr>"
        for k, v in items.items()
    )
    return f'<div class="scroll"><table><tbody>{rows}</tbody></table></div>'


def _run_details(run: RunRecord, group: RunGroup) -> str:
    p = provenance(run)
    best = run.metrics.get("best_epoch")
    info: dict[str, Any] = {
        "run directory": str(run.path.resolve()),
        "group": group.label,
        "seed": p["seed"],
        "git commit": p["git_commit"],
        "best epoch (1-based)": None if best is None else best + 1,
        "selected on": run.metrics.get("selected_on"),
        "skipped images": run.metrics.get("skipped_images"),
    }
    # Fields later versions add to config.yaml (e.g. a data fingerprint) show up without code changes.
    info.update(
        {
            k: v
            for k, v in flatten(run.saved, depth=2).items()
            if not k.startswith("config.") and k not in ("git_commit", "seed")
        }
    )
    if run.uses_store:
        info["feature store"] = p["feature_store"]
        info["store manifest"] = str(run.manifest_path) if run.manifest_path else None
        info["encoder"] = p["encoder"]
        info["encoder img_size"] = p["img_size"]
        info["encoder weights sha256"] = p["weights_sha256"]
        for split, fp in p["fingerprints"].items():
            info[f"data fingerprint ({split})"] = fp
    parts = [
        f'<details id="run-{html.escape(_slug(run.name))}"><summary><span class="swatch" '
        f'style="background:{group.color}"></span>{html.escape(run.name)} '
        f'<span class="meta">seed {html.escape(str(p["seed"]))}, commit {html.escape(short_id(p["git_commit"]) or "-")}'
        "</span></summary>",
        _kv_table(info),
    ]
    if run.notes:
        parts.append("<ul>" + "".join(f'<li class="warn">{html.escape(n)}</li>' for n in run.notes) + "</ul>")
    if run.manifest is not None:
        top = {k: v for k, v in run.manifest.items() if is_scalar(v)}
        parts += ["<h3>Feature store manifest (top-level fields)</h3>", _kv_table(top)]
        parts += [
            "<h3>Feature store manifest (all scalar fields)</h3>",
            _kv_table(flatten(run.manifest, depth=3)),
        ]
    cfg_text = yaml.safe_dump(run.config, sort_keys=False)
    parts += ["<h3>Config</h3>", f"<pre>{html.escape(cfg_text)}</pre>", "</details>"]
    return "".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def _figure_html(fig_id: str, b64: str, alt: str, caption: str) -> str:
    return (
        f'<figure id="fig-{fig_id}"><img alt="{html.escape(alt)}" data-figure="{html.escape(fig_id)}" '
        f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def write_report(run_dirs: Sequence[str | Path], out: str | Path, title: str | None = None) -> dict:
    """Write the HTML report of ``run_dirs`` to ``out`` and its tables to ``out`` with ``.md``.

    Args:
        run_dirs: finished run directories (``lvmlt train`` output), or folders holding
            them (``runs/demo``: every run directory in it). A directory given twice counts once.
        out: the HTML file to write (parent folders are created).
        title: page title; default "lvmlt report (N runs)".

    Returns:
        {"html": Path, "markdown": Path, "table": summary markdown (mean ± std per group),
        "figures": figure ids in page order (one ``<img>`` each), "groups": [{"label",
        "runs": [Path], "seeds": [...], "ece_pooled": % or None}], "notes": {run: [...]}}.

    Raises:
        UserError: no run given, a path that is not a finished run directory, or ``out``
            is a directory.
    """
    if not run_dirs:
        raise UserError("no run directory given", fix="pass one or more directories made by `lvmlt train`")
    out = Path(out)
    md_path = _markdown_path(out)
    runs = [read_run(p) for p in expand_run_dirs(run_dirs)]
    unique_names(runs)
    groups = group_runs(runs)
    title = title or f"lvmlt report ({len(runs)} run{'s' if len(runs) != 1 else ''})"
    colors = {g.label: g.color for g in groups}

    tables = {
        "summary": summary_table(groups),
        "groups": groups_table(groups),
        "runs": runs_table(groups),
        "provenance": provenance_table(groups),
    }
    scope, glossary = _scope_and_glossary(runs)
    tables["classes"] = class_table(groups)
    figures, pooled = _figures(groups)
    notes = {r.name: r.notes for r in runs if r.notes}
    stamp = datetime.now().isoformat(timespec="seconds")
    sections = _sections(tables, groups, colors, scope, glossary, figures)
    counts = f"{len(runs)} run(s) in {len(groups)} group(s)"

    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, _page_html(title, f"{counts}; written {stamp}", sections, notes))
    md = (
        f"# {md_text(title)}\n\n{counts}; written {stamp}. "
        f"Figures: {md_text(out.name)}.\n\n{scope}\n\n"
        f"## Summary: mean ± std over seeds\n\n{tables['summary']}\n"
        f"## How to read this\n\n{how_to_read_md(glossary)}\n"
        f"## Groups\n\n{tables['groups']}\n## Runs\n\n{tables['runs']}\n"
        + (f"## Classes (test accuracy in %, mean over seeds)\n\n{tables['classes']}\n" if tables["classes"] else "")
        + f"## Provenance\n\n{tables['provenance']}"
    )
    _write_atomic(md_path, md)
    return {
        "html": out,
        "markdown": md_path,
        "table": tables["summary"],
        "figures": [f[0] for f in figures],
        "groups": [
            {
                "label": g.label,
                "runs": [r.path for r in g.runs],
                "seeds": g.seeds,
                "ece_pooled": pooled.get(g.label),
            }
            for g in groups
        ],
        "notes": notes,
    }


def _markdown_path(out: Path) -> Path:
    """Where the markdown tables of the page ``out`` go; refuses an ``out`` that cannot be the page."""
    if out.is_dir():
        raise UserError(f"--out {out} is a directory", fix="give a file name, e.g. report.html")
    md_path = out.with_suffix(".md")
    if md_path == out:
        raise UserError(
            f"--out {out} ends in .md, which is where the markdown tables go", fix="use report.html"
        )
    return md_path


def _scope_and_glossary(runs: list[RunRecord]) -> tuple[str, list[tuple[str, str]]]:
    """The sentence saying what the numbers are, and the "How to read this" entries."""
    many, few = thresholds(runs)
    distinct = {json.dumps(r.test.get("thresholds"), sort_keys=True) for r in runs}
    scope = (
        "Test split at the epoch chosen on validation; accuracies and ECE in % (How to read this, below). "
        + (f"Groups by training images per class: many > {many}, few < {few}. " if many is not None else "")
        + ("Runs use different group thresholds (see metrics.json). " if len(distinct) > 1 else "")
    )
    bins = int((runs[0].config.get("eval") or {}).get("ece_bins") or 15)
    glossary = how_to_read(many, few, bins, calibrated=any(r.metrics.get("calibrated") for r in runs))
    return scope, glossary


def _figures(groups: list[RunGroup]) -> tuple[list[tuple[str, str, str, str]], dict]:
    """The page's figures as (id, base64 png, alt, caption), in page order, and the pooled ECE per group."""
    figures: list[tuple[str, str, str, str]] = []
    fig = figure_per_class(groups)
    if fig is not None:
        figures.append(("per_class", png_base64(fig), "per-class accuracy against training count",
                        "Per-class test accuracy against the class's training images (log scale); "
                        "dots are classes (mean over seeds), lines the mean over classes of equal count."))  # fmt: skip
    fig, pooled = figure_reliability(groups)
    if fig is not None:
        figures.append(("reliability", png_base64(fig), "reliability diagrams",
                        "Reliability diagrams of the test split, seeds of a group pooled; ECE as mean ± std "
                        "over seeds (as in the table) and of the pooled predictions."))  # fmt: skip
    for i, g in enumerate(groups):
        fig = figure_confusion(g.runs[0], g)
        if fig is not None:
            figures.append((f"confusion_{i}", png_base64(fig), f"confusion matrix of {g.runs[0].name}",
                            f"Confusion matrix of {g.runs[0].name} (first run of {g.label}), rows normalised."))  # fmt: skip
    fig = figure_curves(groups)
    if fig is not None:
        figures.append(("training_curves", png_base64(fig), "training curves",
                        "Training loss terms (mean over the epoch), validation accuracy and learning rate by "
                        "epoch; one line per run (line style = seed), a star at the epoch chosen on validation."))  # fmt: skip

    fig = figure_budget(groups)
    if fig is not None:
        figures.append(("budget", png_base64(fig), "accuracy against the epoch budget",
                        "Validation (dashed) and test (solid) accuracy against the epoch budget, for runs "
                        "whose configs differ only in optim.epochs; mean over seeds, each budget's "
                        "checkpoint chosen on validation."))  # fmt: skip
    return figures, pooled


def _sections(tables: dict, groups: list[RunGroup], colors: dict, scope: str, glossary, figures) -> list[str]:
    """The page's sections, in order, as HTML."""
    by_id = {f[0]: f for f in figures}

    def fig_section(sec_id: str, heading: str, ids: list[str], missing: str, extra: str = "") -> str:
        body = "".join(_figure_html(i, *by_id[i][1:]) for i in ids if i in by_id)
        body = f'<div class="figrow">{body}</div>' if body else f'<p class="note">{missing}</p>'
        return f'<section id="{sec_id}"><h2>{heading}</h2>{body}{extra}</section>'

    classes_html = (
        f"<h3>Every class (test accuracy in %, mean over seeds)</h3>{md_to_html(tables['classes'])}"
        if tables["classes"] else ""
    )  # fmt: skip

    return [
        '<section id="summary"><h2>Summary: mean ± std over seeds</h2>'
        f'<p class="note">{html.escape(scope)}n is the number of seeds in the row.</p>'
        f"{md_to_html(tables['summary'], colors)}</section>",
        '<section id="how"><h2>How to read this</h2><dl>'
        + "".join(f"<dt>{html.escape(t)}</dt><dd>{html.escape(d)}</dd>" for t, d in glossary)
        + "</dl></section>",
        f'<section id="groups"><h2>Groups</h2>{md_to_html(tables["groups"], colors)}</section>',
        f'<section id="runs"><h2>Runs</h2>{md_to_html(tables["runs"])}</section>',
        fig_section("per-class", "Per-class accuracy", ["per_class"], "No run has predictions.npz.", classes_html),
        fig_section("reliability", "Calibration", ["reliability"], "No run has predictions.npz."),
        fig_section(
            "confusion",
            "Confusion matrices",
            [f"confusion_{i}" for i in range(len(groups))],
            "No confusion matrix.",
        ),
        fig_section("curves", "Training curves", ["training_curves"], "No run has history.jsonl."),
        fig_section("budget", "Epoch budget", ["budget"], "No runs that differ only in optim.epochs."),
        f'<section id="provenance"><h2>Provenance and configs</h2>{md_to_html(tables["provenance"])}'
        + "".join(_run_details(r, g) for g in groups for r in g.runs)
        + "</section>",
    ]


def _page_html(title: str, meta: str, sections: list[str], notes: dict) -> str:
    """The whole page: head, title, navigation, the runs' notes and the sections."""
    nav = "".join(
        f'<a href="#{s}">{t}</a>'
        for s, t in [("summary", "Summary"), ("how", "How to read"), ("runs", "Runs"), ("per-class", "Per-class"),
                     ("reliability", "Calibration"), ("confusion", "Confusion"), ("curves", "Curves"), ("budget", "Budget"),
                     ("provenance", "Provenance")]
    )  # fmt: skip
    note_html = ""
    if notes:
        items = "".join(f"<li>{html.escape(k)}: {html.escape('; '.join(v))}</li>" for k, v in notes.items())
        note_html = f'<ul class="warn">{items}</ul>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body><main>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="meta">{meta}</p>'
        f"<nav>{nav}</nav>{note_html}" + "\n".join(sections) + "</main></body></html>\n"
    )
