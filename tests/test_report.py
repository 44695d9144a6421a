"""``lvmlt report``: tables equal the run files' numbers, the page is self-contained, and a real
headless browser renders it with every figure decoded."""

import argparse
import base64
import html
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import toy_bundle
from lvmlt.config import load_config
from lvmlt.errors import UserError
from lvmlt.evaluation.metrics import compute_metrics
from lvmlt.reporting import write_report
from lvmlt.reporting.runs import reliability_bins, top1_confidence
from lvmlt.reporting.tables import COLUMNS
from lvmlt.training.trainer import train

SHA = "ab" * 32
IMG = re.compile(r"<img\b[^>]*>")
SRC = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _cfg(out, name, seed, *extra):
    # Thresholds 25 / 15 put the 30 / 20 / 10 training images into many / medium / few.
    # threads=1: torch's default thread count oversubscribes a busy machine (10x slower here).
    return load_config(
        None,
        ["model.backbone=resnet8", "optim.epochs=2", f"out_dir={out}", f"run_name={name}", f"seed={seed}",
         "data.batch_size=16", "optim.lr=0.05", "optim.precision=fp32", "device=cpu",
         "eval.many_threshold=25", "eval.few_threshold=15", "threads=1", *extra],
    )  # fmt: skip


def _store(root):
    """A real feature store of the toy data (random 8-d vectors), its provenance naming an encoder
    and weights as `lvmlt extract` would."""
    from helpers import write_store
    from lvmlt.features.store import read_manifest, write_manifest

    rng = np.random.default_rng(0)
    bundle = toy_bundle()
    arrays = {k: {"vec": rng.normal(size=(len(s), 8)).astype(np.float32)} for k, s in bundle.splits().items()}
    write_store(root, bundle, arrays)
    manifest = read_manifest(root)
    manifest["provenance"] |= {"encoder": "mobilesam", "img_size": 1024, "weights_sha256": SHA}
    write_manifest(root, manifest)
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Five real runs: "ce" with seeds 0, 1, 2 (two calibrated) and "bs" with seeds 0, 1 reading a store."""
    import torch

    from lvmlt.calibration.run import calibrate_run

    threads = torch.get_num_threads()  # the trainer sets threads=1 process-wide; give it back after
    tmp = tmp_path_factory.mktemp("report")
    store = _store(tmp / "store")
    dirs = []
    for seed in (0, 1, 2):
        train(_cfg(tmp / "runs", f"ce-seed{seed}", seed), bundle=toy_bundle(), progress=False)
        dirs.append(tmp / "runs" / f"ce-seed{seed}")
    for seed in (0, 1):
        extra = ("loss.name=balanced_softmax", f"fusion.store={store}", "fusion.latent=true")
        train(_cfg(tmp / "runs", f"bs-seed{seed}", seed, *extra), bundle=toy_bundle(), progress=False)
        dirs.append(tmp / "runs" / f"bs-seed{seed}")
    for d in dirs[:2]:
        calibrate_run(d, "mapls", bcts=False)  # the key "mapls" below
    torch.set_num_threads(threads)
    result = write_report(dirs, tmp / "out" / "report.html", title="Test report")
    return {
        "dirs": dirs,
        "result": result,
        "html": result["html"].read_text(),
        "md": result["markdown"].read_text(),
    }


def _md_rows(md: str, heading: str) -> dict[str, dict[str, str]]:
    """Rows of the markdown table under ``## heading``: first cell -> {column: cell}."""
    block = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def _metrics(d):
    return json.loads((d / "metrics.json").read_text())


def _check_mean_std(cell: str, values: list[float]):
    mean, std = (float(x) for x in cell.split(" ± "))
    assert mean == pytest.approx(np.mean(values), abs=0.0051)
    assert std == pytest.approx(np.std(values, ddof=1), abs=0.0051)


def test_summary_is_mean_std_of_the_metrics_files(report):
    rows = _md_rows(report["md"], "Summary: mean ± std over seeds")
    ce, bs = report["dirs"][:3], report["dirs"][3:]
    assert set(rows) == {"ce", "ce +mapls", "bs"}
    assert rows["ce"]["n"] == "3" and rows["bs"]["n"] == "2" and rows["ce +mapls"]["n"] == "2"
    for label, dirs, pick in [
        ("ce", ce, lambda m: m["test"]),
        ("bs", bs, lambda m: m["test"]),
        ("ce +mapls", ce[:2], lambda m: m["calibrated"]["mapls"]["test"]),
    ]:
        for col in COLUMNS:
            values = [pick(_metrics(d))[col] for d in dirs]
            assert all(v is not None for v in values), (label, col)  # every group has classes here
            _check_mean_std(rows[label][col], values)
    assert report["result"]["table"] in report["md"]


def test_per_run_table_and_groups(report):
    rows = _md_rows(report["md"], "Runs")
    for d in report["dirs"]:
        m = _metrics(d)
        assert rows[d.name]["seed"] == str(yaml.safe_load((d / "config.yaml").read_text())["seed"])
        for col in COLUMNS:
            assert float(rows[d.name][col]) == pytest.approx(m["test"][col], abs=0.0051)
    assert float(rows["ce-seed0 +mapls"]["top1"]) == pytest.approx(
        _metrics(report["dirs"][0])["calibrated"]["mapls"]["test"]["top1"], abs=0.0051
    )
    groups = {g["label"]: g for g in report["result"]["groups"]}
    assert groups["ce"]["seeds"] == [0, 1, 2] and groups["bs"]["seeds"] == [0, 1]
    differences = _md_rows(report["md"], "Groups")["bs"]["config vs. first group"]
    assert "loss.name=balanced_softmax" in differences and "fusion.store=" in differences


def test_pooled_reliability_equals_compute_metrics_on_pooled_predictions(report):
    for label, dirs in [("ce", report["dirs"][:3]), ("bs", report["dirs"][3:])]:
        preds = [np.load(d / "predictions.npz") for d in dirs]
        logits = np.concatenate([p["test_logits"] for p in preds])
        labels = np.concatenate([p["test_labels"] for p in preds])
        want = compute_metrics(logits, labels, preds[0]["train_counts"], 25, 15, ece_bins=15)["ece"]
        got = next(g for g in report["result"]["groups"] if g["label"] == label)["ece_pooled"]
        assert got == pytest.approx(want, abs=1e-9)
        for p, d in zip(preds, dirs, strict=True):  # and per run, the number in metrics.json
            conf, correct = top1_confidence(p["test_logits"], p["test_labels"])
            assert reliability_bins(conf, correct, 15)["ece"] == pytest.approx(
                _metrics(d)["test"]["ece"], abs=1e-9
            )


def test_reliability_bins_by_hand():
    conf = np.array([0.05, 0.5, 0.5, 0.95, 1.0])
    correct = np.array([False, True, False, True, True])
    rb = reliability_bins(conf, correct, 2)  # bins (0, 0.5] and (0.5, 1]
    assert rb["count"].tolist() == [3, 2]
    assert rb["accuracy"].tolist() == pytest.approx([1 / 3, 1.0])
    assert rb["ece"] == pytest.approx(100 * (abs(1 - 1.05) + abs(2 - 1.95)) / 5)


def test_page_is_self_contained_with_one_image_per_figure(report):
    page, result = report["html"], report["result"]
    assert result["figures"] == ["per_class", "reliability", "confusion_0", "confusion_1", "training_curves"]
    imgs = IMG.findall(page)
    assert len(imgs) == len(result["figures"])
    for tag, fig_id in zip(imgs, result["figures"], strict=True):
        assert f'data-figure="{fig_id}"' in tag
        png = Image.open(io.BytesIO(base64.b64decode(SRC.search(tag).group(1))))
        assert png.format == "PNG" and min(png.size) > 200
    assert not re.search(r"https?://|<script|<link|<iframe|url\(|@import", page, re.IGNORECASE)
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith(("data:image/png;base64,", "#")) for r in refs)


def test_provenance_shown(report):
    page = report["html"]
    fingerprints = [s.fingerprint() for s in toy_bundle().splits().values()]
    assert SHA in page and all(fp in page for fp in fingerprints)
    for d in report["dirs"]:
        commit = yaml.safe_load((d / "config.yaml").read_text())["git_commit"]
        if commit:
            assert commit in page
        assert f'id="run-{d.name}"' in page
    prov = _md_rows(report["md"], "Provenance")
    assert prov["bs-seed0"]["encoder"] == "mobilesam" and prov["bs-seed0"]["weights sha256"] == SHA[:12]
    assert f"train {fingerprints[0][:12]}" in prov["bs-seed1"]["data fingerprint"]
    assert prov["ce-seed0"]["encoder"] == "-"


def test_only_the_provenance_a_run_used(report, tmp_path):
    """A CNN run that carries a fusion.store it never read shows no store and no manifest, with
    its model.json (inputs) and without it (an older run: the config's switches decide)."""
    from lvmlt.reporting.runs import read_run

    page = report["html"]
    assert page.count("Feature store manifest (top-level fields)") == 2  # the two bs runs
    store = yaml.safe_load((report["dirs"][3] / "config.yaml").read_text())["config"]["fusion"]["store"]
    plain = tmp_path / "ce-with-store"
    shutil.copytree(report["dirs"][0], plain)
    saved = yaml.safe_load((plain / "config.yaml").read_text())
    saved["config"]["fusion"]["store"] = store
    (plain / "config.yaml").write_text(yaml.safe_dump(saved))
    for described in (True, False):
        if not described:
            (plain / "model.json").unlink()
        run = read_run(plain)
        assert not run.uses_store and run.manifest is None
        assert (run.classes == ["a", "b", "c"]) == described
        out = write_report([plain], tmp_path / f"r{described}.html")
        text = out["html"].read_text()
        assert "Feature store manifest" not in text and SHA not in text and "feature store</th>" not in text
    assert read_run(report["dirs"][3]).uses_store


def test_the_page_explains_itself_and_names_the_classes(report):
    page, md = report["html"], report["md"]
    assert '<section id="how"><h2>How to read this</h2>' in page
    how = md.split("## How to read this\n", 1)[1].split("\n## ", 1)[0]
    for term in ("top1", "mean_class_acc", "many / medium / few", "-", "0.00", "ece", "n, mean ± std",
                 "+METHOD rows"):
        assert f"- **{term}**: " in how, term
    assert "many = more than 25" in how and "few = fewer than 15" in how
    rows = _md_rows(md, "Classes (test accuracy in %, mean over seeds)")
    assert list(rows) == ["a", "b", "c"]  # by name, head first
    assert [rows[c]["training images"] for c in "abc"] == ["30", "20", "10"]
    assert [rows[c]["group"] for c in "abc"] == ["many", "medium", "few"]
    accs = [_metrics(d)["test"]["per_class_acc"][2] for d in report["dirs"][:3]]
    assert float(rows["c"]["ce"]) == pytest.approx(np.mean(accs), abs=0.0051)


def test_not_a_run_directory(tmp_path, report):
    with pytest.raises(UserError, match="not a run directory"):
        write_report([tmp_path], tmp_path / "r.html")
    folder = write_report([report["dirs"][0].parent], tmp_path / "r.html")  # the folder that holds the runs
    assert sorted(folder["groups"][0]["runs"] + folder["groups"][1]["runs"]) == sorted(report["dirs"])
    store = report["dirs"][0].parent.parent / "store"
    with pytest.raises(UserError, match="is a feature store"):
        write_report([report["dirs"][0], store], tmp_path / "r.html")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("config: {seed: 0}\n")
    with pytest.raises(UserError, match="has not finished"):
        write_report([tmp_path / "half"], tmp_path / "r.html")
    with pytest.raises(UserError, match="does not exist"):
        write_report([tmp_path / "nope"], tmp_path / "r.html")


def test_cli(report, tmp_path, capsys):
    from lvmlt.reporting.cli import add_parsers

    parser = argparse.ArgumentParser(prog="lvmlt")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli.html"
    args = parser.parse_args(["report", *map(str, report["dirs"][:3]), "--out", str(out), "--title", "T"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| group | n | many | medium | few | top1 | mean_class_acc | ece |" in printed
    assert f"report: {out.resolve()}" in printed and out.with_suffix(".md").is_file()
    assert "<title>T</title>" in out.read_text()


def _synthetic_run(root, classes=150, seed=0):
    """A run directory written by hand: 150 classes, a long tail, no trainer needed."""
    rng = np.random.default_rng(seed)
    counts = np.maximum(1, (500 * 0.97 ** np.arange(classes)).astype(int))
    labels = np.repeat(np.arange(classes), 20)
    logits = rng.normal(size=(len(labels), classes)).astype(np.float32)
    logits[np.arange(len(labels)), labels] += 2.0
    m = compute_metrics(logits, labels, counts)
    m["thresholds"] = {"many": 100, "few": 20}
    root.mkdir(parents=True)
    cfg = {
        "config": {"data": {"name": "syn150"}, "seed": seed, "run_name": root.name},
        "git_commit": None,
        "seed": seed,
    }
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    (root / "metrics.json").write_text(
        json.dumps({"best_epoch": 0, "selected_on": "val/mean_class_acc", "test": m})
    )
    (root / "history.jsonl").write_text(
        json.dumps({"epoch": 0, "train/total": 1.0, "val/top1": 5.0}) + "\n{trunc"
    )
    np.savez(root / "predictions.npz", test_logits=logits, test_labels=labels, train_counts=counts)


def test_many_classes_keep_the_page_small(tmp_path):
    _synthetic_run(tmp_path / "big")
    result = write_report([tmp_path / "big"], tmp_path / "big.html")
    page = result["html"].read_text()
    assert result["figures"] == ["per_class", "reliability", "confusion_0", "training_curves"]
    assert len(page) < 2_000_000
    confusion = IMG.findall(page)[2]
    size = Image.open(io.BytesIO(base64.b64decode(SRC.search(confusion).group(1)))).size
    assert max(size) <= 1000
    assert "1 unreadable line(s) skipped" in page  # the truncated history line is reported, not fatal


# ------------------------------------------------------------------------ real browser
_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Injected into a copy of the page (the report itself has no script): after load, record
# on <body> how many images there are, how many decoded, and their natural widths.
_PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0);
  document.body.dataset.images = imgs.length;
  document.body.dataset.imagesOk = ok.length;
  document.body.dataset.widths = imgs.map((i) => i.naturalWidth).join(",");
});
</script>"""


def _chromium(tmp_path, *args):
    cmd = [_CHROMIUM, *_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


@pytest.mark.skipif(_CHROMIUM is None, reason="no chromium on PATH (install: apt-get install -y chromium)")
def test_headless_browser_renders_every_figure(report, tmp_path):
    page = report["result"]["html"]
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", page.resolve().as_uri())
    img = Image.open(shot)
    assert img.format == "PNG" and img.size == (1280, 2000)
    rgb = np.asarray(img.convert("RGB")).reshape(-1, 3)
    non_white = (rgb < 240).any(axis=1).mean()
    q = rgb.astype(np.int32) // 16  # 4 bits per channel, so antialiasing shades merge
    colours = int(np.count_nonzero(np.bincount((q[:, 0] << 8) | (q[:, 1] << 4) | q[:, 2], minlength=4096)))
    assert non_white > 0.05, f"only {non_white:.1%} of the screenshot is not white"
    assert colours > 40, f"only {colours} distinct colours: the figures did not render"

    probe = tmp_path / "probe.html"
    probe.write_text(report["html"].replace("</body>", _PROBE + "</body>"))
    dom = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", probe.as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    n = len(report["result"]["figures"])
    assert f'data-images="{n}"' in body and f'data-images-ok="{n}"' in body, body
    widths = [int(w) for w in re.search(r'data-widths="([\d,]+)"', body).group(1).split(",")]
    want = [Image.open(io.BytesIO(base64.b64decode(s))).size[0] for s in SRC.findall(report["html"])]
    assert widths == want  # each figure decoded at its full size


def test_runs_differing_only_in_the_budget_get_a_budget_figure(tmp_path, report):
    from lvmlt.reporting.figures import budget_families
    from lvmlt.reporting.runs import group_runs, read_run

    runs = tmp_path / "runs"
    for e in (1, 2):
        train(_cfg(runs, f"ce-e{e}-seed0", 0, f"optim.epochs={e}", "optim.warmup_epochs=0"), bundle=toy_bundle(),
              progress=False)  # fmt: skip
    dirs = [runs / "ce-e1-seed0", runs / "ce-e2-seed0"]
    families = budget_families(group_runs([read_run(d) for d in dirs]))
    assert [(label, sorted(b)) for label, b in families] == [("ce", [1, 2])]
    result = write_report(dirs, tmp_path / "r.html")
    assert "budget" in result["figures"]
    assert "budget" not in report["result"]["figures"]  # one budget per group there: no such figure


def test_user_text_is_escaped_in_markdown_and_html(tmp_path):
    # A run directory may be named anything the file system allows (run_name itself is one
    # folder name: no "/"); its name, group label and the title are the user's text.
    name = "<b>x<i>|y&`z`"
    _synthetic_run(tmp_path / name)
    result = write_report([tmp_path / name], tmp_path / "r.html", title="<script>t</script>")
    md, page = result["markdown"].read_text(), result["html"].read_text()
    for text in (md, page):
        assert "<b>" not in text and "<i>" not in text and "<script>" not in text
    assert "# &lt;script&gt;t&lt;/script&gt;\n" in md
    assert "| &lt;b&gt;x&lt;i&gt;\\|y&amp;&#96;z&#96; | &lt;b&gt;x&lt;i&gt;\\|y&amp;&#96;z&#96; | 0 |" in md
    shown = html.escape(name)  # in the page escaped once, with "|" and the backticks back
    assert f'<td class="">{shown}</td>' in page and "&amp;lt;" not in page
    assert f"</span>{shown}</td>" in page  # the group's colour swatch still found by its label
    assert "<title>&lt;script&gt;t&lt;/script&gt;</title>" in page


def test_metrics_json_keeps_no_matrix_and_the_report_rebuilds_the_confusion(tmp_path):
    """Two C x C confusion matrices made metrics.json 22 MB at 1,000 classes."""
    import json

    import numpy as np

    from helpers import toy_bundle
    from lvmlt.config import load_config
    from lvmlt.reporting.record import read_run
    from lvmlt.training.trainer import train

    cfg = load_config(None, ["model.backbone=resnet8", "optim.epochs=1", f"out_dir={tmp_path}", "run_name=r",
                             "data.batch_size=16", "optim.precision=fp32"])
    m = train(cfg, bundle=toy_bundle(), progress=False)
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert "confusion" not in saved["test"] and "confusion" not in saved["val"] and saved == m
    run = read_run(tmp_path / "r")
    p = np.load(tmp_path / "r" / "predictions.npz")
    want = np.zeros((3, 3), int)
    np.add.at(want, (p["test_labels"], p["test_logits"].argmax(1)), 1)
    assert np.array_equal(run.confusion, want) and run.confusion.sum() == 30
