"""lvmlt check: every problem of a data set in one report (training names only the first bad image)."""

import os

import numpy as np
from PIL import Image

from lvmlt.cli import main


def _folder(root):
    rng = np.random.default_rng(0)
    for split, per in (("train", (12, 6)), ("val", (3, 1)), ("test", (3, 3))):
        for c, n in enumerate(per):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(d / f"{i}.png")


def test_check_lists_every_problem_at_once(tmp_path, capsys):
    root = tmp_path / "data"
    _folder(root)
    (root / "train" / "c0" / "bad1.png").write_bytes(b"not a png")
    (root / "train" / "c1" / "bad2.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / "test" / "c0" / "0.png").write_bytes((root / "train" / "c0" / "0.png").read_bytes())  # train = test
    os.symlink(root / "train" / "c0" / "1.png", root / "train" / "c1" / "link.png")  # one file, two labels
    Image.new("L", (4, 4)).save(root / "train" / "c0" / "tiny.png")
    Image.new("L", (100, 10)).save(root / "train" / "c0" / "strip.png")
    assert main(["check", str(root)]) == 1  # unreadable images would stop training
    out = capsys.readouterr().out
    assert "unreadable images (2):" in out and "bad1.png" in out and "bad2.jpg" in out
    assert "the same file reached twice (1):" in out and "link.png" in out
    assert "identical images (1):" in out and "test/c0/0.png" in out
    assert "tiny images" in out and "tiny.png: 4 x 4" in out
    assert "oddly shaped images" in out and "strip.png: 100 x 10" in out
    assert "classes with fewer than 3 validation images" in out and "c1: 1" in out


def test_check_lists_findings_with_status_0_when_every_image_reads(tmp_path, capsys):
    root = tmp_path / "data"
    _folder(root)
    assert main(["check", str(root)]) == 0
    assert "classes with fewer than 3 validation images (the selection metric" in capsys.readouterr().out


def test_check_of_clean_data_says_so(tmp_path, capsys):
    root = tmp_path / "data"
    _folder(root)
    for i in range(1, 3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(root / "val" / "c1" / f"extra{i}.png")
    assert main(["check", str(root)]) == 0
    assert capsys.readouterr().out.startswith("checked 30 images: no problem found")
