"""The comparison runner: its CLI, the SAM-fusion rows it picks up, and the files it writes."""

import csv

import pytest

from lvmlt.methods.compare import build_parser, find_sam_fusion_results, main, write_report


def test_help_and_unknown_system(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--systems" in capsys.readouterr().out
    assert main(["--dataset", "elpv", "--systems", "nope"]) == 2
    assert "unknown system group" in capsys.readouterr().err
    assert build_parser().parse_args(["--dataset", "elpv"]).seeds == "0,1,2"


def test_sam_fusion_rows_are_read_from_results_files(tmp_path):
    root = tmp_path / "results"
    (root / "other-systems").mkdir(parents=True)
    with (root / "elpv-ablation.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "many", "medium", "few", "top1"])
        w.writerow(["+SAM map&latent", 80, 60, 40, 70])
        w.writerow(["+SAM map&latent", 82, 62, 42, 72])
    (root / "other-systems" / "elpv.csv").write_text("run,top1\nmine,1\n")  # our own output: skipped
    (root / "mnist-lt.csv").write_text("run,top1\nx,1\n")  # another dataset
    (root / "ablation-fashion-mnist-lt-ce.csv").write_text("run,top1\ny,2\n")  # contains "mnist-lt"
    rows, files = find_sam_fusion_results("elpv", root, (root / "other-systems").resolve())
    assert files == [root / "elpv-ablation.csv"]
    _, files = find_sam_fusion_results("mnist-lt", root, (root / "other-systems").resolve())
    assert files == [root / "mnist-lt.csv"]
    (name,) = rows
    assert "+SAM map&latent" in name and [r["top1"] for r in rows[name]] == [70.0, 72.0]


def test_report_holds_the_command_tables_and_the_absence_note(tmp_path):
    m = {"many": 80.0, "medium": 50.0, "few": 20.0, "top1": 70.0, "mean_class_acc": 50.0, "macro_f1": 45.0}
    standard = {"linear probe": [m, m | {"top1": 72.0}]}
    cost = {"linear probe": {"params": 2056, "seconds": 1.5, "encoder": "frozen (stored features)"}}
    text = write_report(
        tmp_path,
        "toy",
        "python -m lvmlt.methods.compare --dataset toy",
        (0, 1),
        standard,
        None,
        cost,
        {},
        [],
        None,
        (100, 20),
    )
    assert "python -m lvmlt.methods.compare --dataset toy" in text
    assert "| linear probe | 2 | 80.00 ± 0.00 | 50.00 ± 0.00 | 20.00 ± 0.00 | 71.00 ± 1.41 |" in text
    assert "no results file for toy" in text and "| linear probe | 2,056 | 1.5 |" in text
    rows = list(csv.DictReader((tmp_path / "toy.csv").open()))
    assert [r["top1"] for r in rows] == ["70.0", "72.0"] and rows[0]["params"] == "2056"
