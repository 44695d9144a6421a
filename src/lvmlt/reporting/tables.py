"""The report's tables, in markdown (from :mod:`lvmlt.evaluation.metrics`), and their HTML form.

Run names, group labels and config values are the user's text: in the markdown they are made
inert (:func:`md_text`; ``|`` is ``\\|``), in the HTML escaped, so a run named ``<script>``
shows as text in both.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from lvmlt.evaluation.metrics import format_table, mean_std_table
from lvmlt.reporting.runs import RunGroup, RunRecord, provenance, short_id

COLUMNS = ("many", "medium", "few", "top1", "mean_class_acc", "ece")

# ---------------------------------------------------------------------------------------
# Tables (markdown from lvmlt.evaluation.metrics, turned into HTML for the page)
# ---------------------------------------------------------------------------------------
_MD_ENTITIES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "`": "&#96;"})


def md_text(text: str) -> str:
    """``text`` for markdown, with no HTML and no code span in it: ``& < >`` and backticks as
    entities (they render as themselves); letters, digits, ``-_+.`` and spaces unchanged."""
    return text.translate(_MD_ENTITIES)


def _rename_first_header(md: str, name: str) -> str:
    first, _, rest = md.partition("\n")
    return re.sub(r"^\| [^|]+ \|", f"| {name} |", first, count=1) + "\n" + rest


def _calibrated(run: RunRecord) -> dict[str, dict]:
    cal = run.metrics.get("calibrated")
    if not isinstance(cal, dict):
        return {}
    return {
        str(k): v["test"] for k, v in cal.items() if isinstance(v, dict) and isinstance(v.get("test"), dict)
    }


def summary_table(groups: Sequence[RunGroup]) -> str:
    """Mean ± std over seeds per group (test split), each calibration method as an extra row."""
    rows: dict[str, list[dict]] = {}
    for g in groups:
        rows[g.label] = [r.test for r in g.runs]
        methods = dict.fromkeys(m for r in g.runs for m in _calibrated(r))
        for m in methods:
            rows[f"{g.label} +{m}"] = [_calibrated(r)[m] for r in g.runs if m in _calibrated(r)]
    return md_text(_rename_first_header(mean_std_table(rows, COLUMNS), "group"))


def runs_table(groups: Sequence[RunGroup]) -> str:
    """One row per run (test split), calibrated metrics as extra rows."""
    rows: dict[str, dict] = {}
    for g in groups:
        for r in g.runs:
            rows[r.name] = {"group": g.label, "seed": r.seed, **r.test}
            for m, test in _calibrated(r).items():
                rows[f"{r.name} +{m}"] = {"group": g.label, "seed": r.seed, **test}
    return md_text(format_table(rows, ("group", "seed", *COLUMNS)))


def groups_table(groups: Sequence[RunGroup]) -> str:
    rows = {
        g.label: {
            "runs": len(g.runs),
            "seeds": ", ".join(str(s) for s in g.seeds),
            "config vs. first group": g.differences,
        }
        for g in groups
    }
    table = format_table(rows, ("runs", "seeds", "config vs. first group"))
    return md_text(_rename_first_header(table, "group"))


def how_to_read(many, few, ece_bins: int = 15, calibrated: bool = False) -> list[tuple[str, str]]:
    """(term, definition) pairs of every column and symbol of the tables, for the page's
    "How to read this" section (the markdown gets the same list)."""
    by = f"more than {many}" if many is not None else "more than the many threshold"
    under = f"fewer than {few}" if few is not None else "fewer than the few threshold"
    items = [
        ("test split", "every number is measured on the test split, with the checkpoint of the epoch that "
         "scored the best mean class accuracy on the validation split; test never chose anything"),
        ("top1", "accuracy over all test images, in % (\"All\" in the papers): dominated by the classes "
         "with many test images"),
        ("mean_class_acc", "the accuracy of each class, averaged over the classes, in % (balanced accuracy): "
         "every class counts the same, however rare; checkpoints are chosen by its value on validation"),
        ("many / medium / few", f"mean_class_acc within a group of classes, by training images per class: "
         f"many = {by}, few = {under}, medium = the rest (both thresholds included); the per-class table "
         "below says which class is in which group"),
        ("-", "nothing to average: the group holds no class of this data set (e.g. no class has "
         f"{by} training images, so \"many\" is empty), or the run did not record the value"),
        ("0.00", "the group has classes, and not one of their test images was classified correctly "
         "(a rare class the model never predicts shows as 0.00, not as -)"),
        ("ece", f"expected calibration error in %: the test images binned by the top-1 probability "
         f"({ece_bins} equal-width bins), the gap between the bin's accuracy and its mean probability, "
         "averaged with the bins' image shares; 0 = the probabilities mean what they say, lower is better"),
        ("n, mean ± std", "n = the runs (seeds) in a row; mean ± sample standard deviation over them "
         "(one run: the value alone)"),
        ("group (of runs)", "runs whose configs differ only in seed, run_name and out_dir; its label is "
         "the first run's name without the seed"),
    ]
    if calibrated:
        items.append(("+METHOD rows", "the same run after `lvmlt calibrate RUN --method METHOD` (a label-shift "
                      "or post-hoc correction of its test predictions; +bcts = temperature-scaled on "
                      "validation first); no retraining"))  # fmt: skip
    return items


def how_to_read_md(items: list[tuple[str, str]]) -> str:
    return "".join(f"- **{md_text(term)}**: {md_text(text)}\n" for term, text in items)


def class_table(groups: Sequence[RunGroup], max_classes: int = 200) -> str | None:
    """Per class: its name, training images, group, and each run group's test accuracy (mean
    over seeds), for the groups with the same classes as the first; None when no run
    recorded per-class accuracy or there are more than ``max_classes`` classes."""
    first = next((r for g in groups for r in g.runs if r.test.get("per_class_acc")), None)
    if first is None or len(first.test["per_class_acc"]) > max_classes:
        return None
    c = len(first.test["per_class_acc"])
    counts = first.train_counts if first.train_counts is not None and len(first.train_counts) == c else None
    kinds = first.test.get("groups") if len(first.test.get("groups") or []) == c else None
    cols: dict[str, list] = {}
    for g in groups:
        accs = [r.test["per_class_acc"] for r in g.runs if len(r.test.get("per_class_acc") or []) == c]
        if accs:
            cols[g.label] = [[a[k] for a in accs if a[k] is not None] for k in range(c)]
    order = sorted(range(c), key=lambda k: -int(counts[k])) if counts is not None else list(range(c))
    rows = {}
    for k in order:
        row = {"index": k, "training images": None if counts is None else int(counts[k]),
               "group": None if kinds is None else kinds[k]}  # fmt: skip
        for label, vals in cols.items():
            row[label] = float(sum(vals[k]) / len(vals[k])) if vals[k] else None
        rows[first.class_name(k)] = row
    table = format_table(rows, ("index", "training images", "group", *cols))
    return md_text(_rename_first_header(table, "class"))


def provenance_table(groups: Sequence[RunGroup]) -> str:
    rows = {}
    for g in groups:
        for r in g.runs:
            p = provenance(r)
            fps = p["fingerprints"]
            epochs = (r.config.get("optim") or {}).get("epochs")
            best = r.metrics.get("best_epoch")  # 0-based in metrics.json, 1-based on screen
            if best is not None:
                best = f"{best + 1}/{epochs}" if epochs else best + 1
            rows[r.name] = {
                "seed": p["seed"],
                "git commit": short_id(p["git_commit"]),
                "backbone": p["backbone"],
                "encoder": p["encoder"],
                "weights sha256": short_id(p["weights_sha256"]),
                "data fingerprint": ", ".join(f"{k} {v[:12]}" for k, v in fps.items()) or None,
                "best epoch": best,
            }
    cols = ("seed", "git commit", "backbone", "encoder", "weights sha256", "data fingerprint", "best epoch")
    return md_text(format_table(rows, cols))


_NUMBER = re.compile(r"^[-+]?\d[\d.]*(e[-+]?\d+)?( ± \d[\d.]*)?$|^\d+/\d+$")


def md_to_html(md: str, colors: dict[str, str] | None = None) -> str:
    """An HTML table from a markdown table of this module (cells through :func:`md_text`).

    Columns whose cells are all numbers (or "-") are right-aligned; text columns stay left.
    """

    def cells(line: str) -> list[str]:
        inner = line.strip()[2:-2]
        return [html.unescape(c.replace("\\|", "|")) for c in re.split(r"(?<!\\) \| ", inner)]

    lines = md.strip().splitlines()
    header, body = cells(lines[0]), [cells(line) for line in lines[2:]]
    numeric = [
        i > 0 and all(_NUMBER.match(row[i]) or row[i] == "-" for row in body if i < len(row))
        for i in range(len(header))
    ]
    out = ['<div class="scroll"><table>', "<thead><tr>"]
    out += [
        f'<th class="{"num" if n else ""}">{html.escape(h)}</th>'
        for h, n in zip(header, numeric, strict=True)
    ]
    out.append("</tr></thead><tbody>")
    for row in body:
        out.append("<tr>")
        for i, c in enumerate(row):
            text = html.escape(c)
            if i == 0 and colors:
                color = next((v for k, v in colors.items() if c == k or c.startswith(k + " +")), None)
                if color:
                    text = f'<span class="swatch" style="background:{color}"></span>{text}'
            out.append(f'<td class="{"num" if i < len(numeric) and numeric[i] else ""}">{text}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)
