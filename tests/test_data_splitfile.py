"""Split files, ImageFolder trees and the splitfile/imagefolder datasets: every user mistake
is a one-line UserError naming the file and line."""

import dataclasses
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lvmlt.config import DataConfig
from lvmlt.data import build_data, parse_split_file, split_from_file, split_from_image_folder
from lvmlt.errors import BadImageError, UserError
from lvmlt.inputs import to_rgb

# database=None: no .hypothesis/ folder in the checkout; failures print their example.
FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def write_png(path: Path, value: int = 128, size=(8, 6), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


# ----------------------------------------------------------------------------- parsing


def test_parse_basic(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text(
        "\ufeff# header comment\n"
        "train/n01440764/n01440764_762.JPEG 0\n"
        "\n"
        "   # indented comment\n"
        "my photos/cat 1.png\t3\r\n"
        "  spaced.png    12   \n"
    )
    assert parse_split_file(f) == [
        ("train/n01440764/n01440764_762.JPEG", 0),
        ("my photos/cat 1.png", 3),
        ("spaced.png", 12),
    ]


@pytest.mark.parametrize(
    "line,message",
    [
        ("lonely_token.jpg", "does not parse"),
        ("img.jpg three", "is not an integer"),
        ("img.jpg 1.5", "is not an integer"),
        ("img.jpg 1_000", "is not an integer"),
        ("img.jpg \u0663", "is not an integer"),  # an Arabic-Indic digit, which int() would accept
        ("img.jpg -1", "is negative"),
        ("img.jpg 10", "out of range for 10 classes"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    f = tmp_path / "split.txt"
    f.write_text(f"a.jpg 0\n# comment\n{line}\nb.jpg 1\n")
    with pytest.raises(UserError, match=message) as e:
        parse_split_file(f, num_classes=10)
    assert f"{f}:3" in str(e.value) and e.value.fix


def test_empty_and_missing_split_files(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("# only a comment\n\n   \n")
    with pytest.raises(UserError, match="lists no images") as e:
        parse_split_file(f)
    assert str(f) in str(e.value)
    with pytest.raises(UserError, match="split file not found"):
        parse_split_file(tmp_path / "nope.txt")


def test_non_utf8_line(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"a.jpg 0\ncaf\xe9.jpg 1\n")
    with pytest.raises(UserError, match="not UTF-8") as e:
        parse_split_file(f)
    assert f"{f}:2" in str(e.value)


# Paths: any text without newlines/NUL, no surrounding whitespace, not a comment.
paths = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\x00"),
    min_size=1,
    max_size=30,
).filter(lambda s: s == s.strip() and not s.startswith("#"))
entries = st.lists(st.tuples(paths, st.integers(0, 10**6)), min_size=1, max_size=20)
separators = st.sampled_from([" ", "\t", "  ", " \t "])
fillers = st.sampled_from(["", "   ", "# a comment", "\t# 1 2 3"])
line_ends = st.sampled_from(["", " ", "\r"])  # "\r": CRLF files


@st.composite
def split_files(draw):
    """(file text, expected entries, line number of each entry)."""
    items = draw(entries)
    lines, numbers = [], []
    for rel, label in items:
        for _ in range(draw(st.integers(0, 2))):
            lines.append(draw(fillers))
        lines.append(f"{rel}{draw(separators)}{label}{draw(line_ends)}")
        numbers.append(len(lines))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"])), items, numbers


@FUZZ
@given(split_files())
def test_round_trip_of_generated_files(data):
    text, items, _ = data
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "s.txt"
        f.write_bytes(text.encode("utf-8"))
        assert parse_split_file(f) == items


tokens = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=10
)
garbage = st.one_of(
    tokens.filter(lambda s: not s.startswith("#") and s.strip() == s and s.split() == [s]),  # one token
    st.tuples(paths, tokens.filter(lambda s: not re.fullmatch(r"[+-]?[0-9]+", s) and s.split() == [s])).map(
        lambda t: f"{t[0]} {t[1]}"
    ),  # a label that is not an integer
    st.tuples(paths, st.integers(-(10**6), -1)).map(lambda t: f"{t[0]} {t[1]}"),  # negative
    st.tuples(paths, st.integers(1000, 10**6)).map(lambda t: f"{t[0]} {t[1]}"),  # >= num_classes
)


@FUZZ
@given(split_files(), garbage, st.data())
def test_garbage_line_is_reported_on_its_line(data, bad, draw):
    text, _, _ = data
    lines = text.split("\n")
    at = draw.draw(st.integers(0, len(lines)))
    lines.insert(at, bad)
    text = "\n".join(lines)
    # Labels generated valid may also be >= 1000: the first offending line is the one to report.
    first_bad = None
    for n, line in enumerate(lines, start=1):
        s = line.strip()
        if s and not s.startswith("#"):
            parts = s.rsplit(None, 1)
            valid = len(parts) == 2 and re.fullmatch(r"[+-]?[0-9]+", parts[1]) and 0 <= int(parts[1]) < 1000
            if not valid:
                first_bad = n
                break
    assert first_bad is not None and first_bad <= at + 1
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "s.txt"
        f.write_bytes(text.encode("utf-8"))
        with pytest.raises(UserError) as e:
            parse_split_file(f, num_classes=1000)
    assert f"{f}:{first_bad}" in str(e.value)


@FUZZ
@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(1, 5)))
def test_arbitrary_bytes_parse_or_raise_user_error(content, num_classes):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "s.txt"
        f.write_bytes(content)
        try:
            out = parse_split_file(f, num_classes=num_classes)
        except UserError as e:
            assert str(f) in str(e)
        else:
            assert out and all(isinstance(r, str) and isinstance(y, int) and y >= 0 for r, y in out)


# ----------------------------------------------------------------------------- images


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    write_png(root / "a 1.png", 10)
    write_png(root / "sub" / "b.png", 200, mode="RGB")
    (root / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    good = (root / "a 1.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    split = tmp_path / "train.txt"
    split.write_text("a 1.png 0\nsub/b.png 1\nmissing.png 1\ncorrupt.jpg 0\n\ntruncated.png 1\n")
    return root, split


def test_split_from_file_loads_rgb(image_root):
    root, split = image_root
    s = split_from_file(root, split, "train")
    assert s.ids == ["a 1.png", "sub/b.png", "missing.png", "corrupt.jpg", "truncated.png"]
    assert s.labels.tolist() == [0, 1, 1, 0, 1]
    assert s.sizes[0] == (root / "a 1.png").stat().st_size and s.sizes[2] == -1
    img = s.load(0)  # decoded with its mode kept; every consumer converts with lvmlt.inputs.to_rgb
    assert img.size == (8, 6) and to_rgb(img).getpixel((0, 0)) == (10, 10, 10)
    assert len(s.fingerprint()) == 64


@pytest.mark.parametrize(
    "index,line,message",
    [(2, 3, "image file not found"), (3, 4, "cannot decode image"), (4, 6, "cannot decode image")],
)
def test_bad_images_name_file_and_line(image_root, index, line, message):
    root, split = image_root
    s = split_from_file(root, split, "train")
    with pytest.raises(BadImageError, match=message) as e:
        s[index]
    msg = str(e.value)
    assert s.ids[index] in msg and f"line {line} of {split}" in msg and "skip_bad_images" in msg


def test_skip_bad_images_records_and_flags(image_root):
    root, split = image_root
    cfg = DataConfig(name="splitfile", root=str(root), train_split=str(split), test_split=str(split))
    s = split_from_file(root, split, "train")
    s.skip_bad_images = True
    from lvmlt.data import build_transform

    s.transform = build_transform(16, train=False)
    items = [s[i] for i in range(len(s))]
    assert [it["valid"] for it in items] == [True, True, False, False, False]
    assert sorted(s.bad) == [2, 3, 4] and "not found" in s.bad[2]
    assert all(it["image"].shape == (3, 16, 16) for it in items)
    assert cfg.skip_bad_images is False  # the config default keeps bad images fatal


def test_duplicate_image_is_reported(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("a.png 0\nb.png 1\na.png 1\n")
    with pytest.raises(UserError, match=r"listed twice \(first on line 1\)") as e:
        split_from_file(tmp_path, f, "train")
    assert f"{f}:3" in str(e.value)


# ----------------------------------------------------------------------------- datasets


def make_splitfile_dataset(tmp_path, train_labels, test_labels, val_labels=None):
    root = tmp_path / "ds"
    files = {}
    for name, labels in [("train", train_labels), ("test", test_labels), ("val", val_labels)]:
        if labels is None:
            continue
        lines = []
        for i, y in enumerate(labels):
            rel = f"{name}/{y}/img{i}.png"
            write_png(root / rel, 10 * y)
            lines.append(f"{rel} {y}")
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("\n".join(lines) + "\n")
    return root, files


def test_splitfile_dataset_carves_validation(tmp_path):
    root, files = make_splitfile_dataset(tmp_path, [0] * 10 + [1] * 4 + [2] * 2, [0, 1, 2])
    cfg = DataConfig(
        name="splitfile", root=str(root), train_split=str(files["train"]), test_split="test.txt",
        val_fraction=0.25, image_size=16,
    )  # fmt: skip
    with pytest.raises(UserError, match="split file not found"):
        build_data(cfg)  # test.txt is relative to neither the cwd nor data.root
    (root / "test.txt").write_text(files["test"].read_text())
    b = build_data(cfg)
    assert b.num_classes == 3 and b.class_names == ["class_0", "class_1", "class_2"]
    assert np.bincount(b.val.labels, minlength=3).tolist() == [3, 1, 1]  # 25% per class, half up
    assert b.train_counts.tolist() == [7, 3, 1]
    assert not set(b.train.ids) & set(b.val.ids)
    item = b.train[0]
    assert item["image"].shape == (3, 16, 16) and item["valid"]
    assert b.meta["many_threshold"] == 100 and b.meta["few_threshold"] == 20


def test_splitfile_dataset_with_val_split(tmp_path):
    root, files = make_splitfile_dataset(tmp_path, [0, 0, 1, 1], [0, 1], val_labels=[1, 0])
    cfg = DataConfig(
        name="splitfile", root=str(root), train_split=str(files["train"]), val_split=str(files["val"]),
        test_split=str(files["test"]),
    )  # fmt: skip
    b = build_data(cfg)
    assert (len(b.train), len(b.val), len(b.test)) == (4, 2, 2) and b.val.labels.tolist() == [1, 0]


def test_test_label_outside_training_classes(tmp_path):
    root, files = make_splitfile_dataset(tmp_path, [0, 1], [0, 1, 2])
    cfg = DataConfig(
        name="splitfile", root=str(root), train_split=str(files["train"]), test_split=str(files["test"])
    )
    with pytest.raises(UserError, match="label 2 is out of range for 2 classes") as e:
        build_data(cfg)
    assert f"{files['test']}:3" in str(e.value)


def test_class_with_no_training_image(tmp_path):
    root, files = make_splitfile_dataset(tmp_path, [0, 0, 2, 2], [0])
    cfg = DataConfig(
        name="splitfile", root=str(root), train_split=str(files["train"]), test_split=str(files["test"]),
        val_fraction=0.5,
    )  # fmt: skip
    with pytest.raises(UserError, match=r"class 1 \('class_1'\) has no training image") as e:
        build_data(cfg)
    assert str(files["train"]) in str(e.value)


def test_splitfile_needs_root_and_files(tmp_path):
    with pytest.raises(UserError, match="needs data.root"):
        build_data(DataConfig(name="splitfile"))
    with pytest.raises(UserError, match="data.train_split is not set"):
        build_data(DataConfig(name="splitfile", root=str(tmp_path)))
    with pytest.raises(UserError, match="data.root folder not found"):
        build_data(DataConfig(name="splitfile", root=str(tmp_path / "nope")))


def make_tree(root: Path, layout: dict[str, dict[str, int]]):
    for split, classes in layout.items():
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_png(root / split / c / f"{i}.PNG", i)


def test_image_folder(tmp_path):
    root = tmp_path / "tree"
    make_tree(root, {"train": {"cat": 4, "ant": 2, "dog": 6}, "test": {"cat": 1, "dog": 2}})
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    write_png(root / "train" / "cat" / "nested" / "deep.jpg", 3)
    split, classes = split_from_image_folder(root / "train", "train", id_root=root)
    assert classes == ["ant", "cat", "dog"]
    assert np.bincount(split.labels).tolist() == [2, 5, 6]
    assert split.ids[:3] == ["train/ant/0.PNG", "train/ant/1.PNG", "train/cat/0.PNG"]
    assert "train/cat/nested/deep.jpg" in split.ids
    b = build_data(DataConfig(name="imagefolder", root=str(root), val_fraction=0.5))
    assert (len(b.train) + len(b.val), len(b.test)) == (13, 3)
    assert b.val.ids[0].startswith("train/") and b.test.ids[0] == "test/cat/0.PNG"


def test_image_folder_mistakes(tmp_path):
    root = tmp_path / "tree"
    make_tree(root, {"train": {"cat": 3, "dog": 3}, "val": {"cat": 1, "emu": 1}, "test": {"cat": 1}})
    with pytest.raises(UserError, match="class folder 'emu' is not a class of the training folder"):
        build_data(DataConfig(name="imagefolder", root=str(root)))
    (root / "val" / "emu" / "0.PNG").unlink()
    (root / "val" / "emu").rmdir()
    (root / "train" / "bee").mkdir()  # an empty class folder
    with pytest.raises(UserError, match=r"class 0 \('bee'\) has no training image") as e:
        build_data(DataConfig(name="imagefolder", root=str(root)))
    assert str(root / "train") in str(e.value)
    with pytest.raises(UserError, match="image folder not found"):
        build_data(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_num_classes_makes_a_mistyped_training_label_an_error_on_its_line(tmp_path):
    # "10" typed for a class of a 10-class dataset, on line 3 of the training file
    root, files = make_splitfile_dataset(tmp_path, [0, 0, 10, 1, 1, 9, 9], [0, 1, 9])
    cfg = DataConfig(
        name="splitfile", root=str(root), train_split=str(files["train"]), test_split=str(files["test"]),
        num_classes=10, val_fraction=0.5,
    )  # fmt: skip
    with pytest.raises(UserError, match="label 10 is out of range for 10 classes") as e:
        build_data(cfg)
    assert f"{files['train']}:3" in str(e.value) and "\n" not in str(e.value)


def test_num_classes_must_match_a_dataset_that_knows_its_classes(tmp_path):
    make_tree(tmp_path, {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1}})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), val_fraction=0.5, num_classes=3)
    with pytest.raises(UserError, match="data.num_classes=3 but dataset imagefolder has 2 classes"):
        build_data(cfg)
    assert build_data(dataclasses.replace(cfg, num_classes=2)).num_classes == 2


def test_without_num_classes_a_lone_class_missing_from_val_and_test_is_warned_about(tmp_path):
    # a 10-class dataset in which line 5 of the training file says 10 (for 1, say)
    train = [0, 0, 1, 1, 10, *np.repeat(np.arange(2, 10), 2).tolist()]
    root, files = make_splitfile_dataset(tmp_path, train, list(range(10)), val_labels=list(range(10)))
    cfg = DataConfig(
        name="splitfile", root=str(root), train_split=str(files["train"]), val_split=str(files["val"]),
        test_split=str(files["test"]),
    )  # fmt: skip
    with pytest.warns(UserWarning) as record:
        bundle = build_data(cfg)
    assert bundle.num_classes == 11  # trains, but the user is told about line 5
    (w,) = [str(r.message) for r in record if "only training image" in str(r.message)]
    assert w.startswith(f"label 10 (line 5 of {files['train']})") and "\n" not in w
    # A one-image class that the test split has too is a real (rare) class: no warning.
    root, files = make_splitfile_dataset(tmp_path / "b", [0, 0, 1, 2, 2], [0, 1, 2])
    cfg = dataclasses.replace(cfg, root=str(root), train_split=str(files["train"]), val_split=None,
                              test_split=str(files["test"]), val_fraction=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_data(cfg)


def test_splitfile_class_names_file(tmp_path):
    root, files = make_splitfile_dataset(tmp_path, [0] * 6 + [1] * 4 + [2] * 2, [0, 1, 2])
    (root / "names.txt").write_text("# label order\ncrack\nclean\nfinger\n")
    cfg = DataConfig(name="splitfile", root=str(root), train_split=str(files["train"]),
                     test_split=str(files["test"]), class_names="names.txt", image_size=16)
    assert build_data(cfg).class_names == ["crack", "clean", "finger"]
    (root / "names.txt").write_text("crack\nclean\n")
    with pytest.raises(UserError, match="lists 2 names, and the split files have 3 classes"):
        build_data(cfg)
