"""Property-based checks of the inputs people and files hand lvmlt: every config override, split-file
line, bundle JSON file and run-directory file either works or is one UserError line, and nothing is
written where it should not be. (Each was a traceback somewhere once.)"""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import folder_run_and_bundle
from lvmlt.config import load_config
from lvmlt.errors import UserError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

KEYS = ["optim.lr", "optim.epochs", "data.image_size", "data.batch_size", "loss.name", "system", "data.policy",
        "data.dihedral", "optim.ema", "fusion.alpha", "proto.beta", "finetune.stages", "loss.label_smoothing",
        "data.mixup", "run_name", "threads", "nonexistent.key", "optim", "data.sampler", "eval.few_threshold"]
VALUES = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e-3", "true", "null", "[1, 2]", "{a: 1}", "", "-", "nan", "inf", "cnn", "sam_finetune",
                     "ce", "..", "a/b", "0x10", "1_000", "yes", "~"]),
    st.text(alphabet=string.printable, max_size=12),
)


def one_line(e: UserError) -> bool:
    return "\n" not in str(e) and len(str(e)) > 0


@FAST
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_config_overrides_load_or_are_one_line(pairs):
    try:
        cfg = load_config(None, [f"{k}={v}" for k, v in pairs])
    except UserError as e:
        assert one_line(e), str(e)
    else:
        assert cfg.optim.epochs >= 1 and 8 <= cfg.data.image_size <= 4096


@FAST
@given(st.lists(st.text(alphabet=string.printable + "é\t ", max_size=30), max_size=6))
def test_split_file_lines_parse_or_are_one_line(tmp_path_factory, lines):
    from lvmlt.data.splitfile import parse_split_file

    f = tmp_path_factory.mktemp("split") / "train.txt"
    f.write_text("\n".join(lines), encoding="utf-8")
    try:
        entries = parse_split_file(f, num_classes=3)
    except UserError as e:
        assert one_line(e), str(e)
    else:
        assert all(isinstance(p, str) and 0 <= y < 3 for p, y in entries)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 300000) | st.text(max_size=5),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                    max_leaves=8)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A small exported bundle to damage (a CNN on a 3-class ImageFolder)."""
    return folder_run_and_bundle(tmp_path_factory.mktemp("fuzz"), per=((8, 6, 4), (2, 2, 2), (2, 2, 2)), side=12)


@FAST
@given(st.sampled_from(["model.json", "classes.json", "manifest.json"]), st.sampled_from(["replace", "set", "drop"]),
       st.text(max_size=8), JSON)
def test_bundle_json_files_load_or_are_one_line(bundle, tmp_path_factory, name, how, key, value):
    import shutil

    from lvmlt.deploy.bundle import MANIFEST, BundleModel
    from lvmlt.rundir import file_sha256

    b = tmp_path_factory.mktemp("b") / "bundle"
    shutil.copytree(bundle, b)
    doc = json.loads((b / name).read_text())
    if how == "replace":
        doc = value
    elif isinstance(doc, dict):
        if how == "set":
            doc[key or "format"] = value
        else:
            doc.pop(sorted(doc)[len(key) % len(doc)], None)
    (b / name).write_text(json.dumps(doc))
    if name != MANIFEST:  # re-hashed, as someone editing the file would: the content is what is judged
        m = json.loads((b / MANIFEST).read_text())
        m["files"][name] = {"bytes": (b / name).stat().st_size, "sha256": file_sha256(b / name)}
        (b / MANIFEST).write_text(json.dumps(m))
    before = sorted(p.name for p in b.iterdir())
    try:
        BundleModel(b, engine="onnxruntime", log=lambda s: None)
    except UserError as e:
        assert one_line(e), str(e)
    assert sorted(p.name for p in b.iterdir()) == before  # nothing written into the bundle


@FAST
@given(st.sampled_from(["metrics.json", "config.yaml", "history.jsonl", "model.json"]), st.binary(max_size=64))
def test_run_directory_files_read_or_are_one_line(bundle, tmp_path_factory, name, junk):
    import shutil

    from lvmlt.reporting.record import read_run

    run = tmp_path_factory.mktemp("r") / "r"
    shutil.copytree(bundle.parent / "runs" / "r", run)
    (run / name).write_bytes(junk)
    try:
        read_run(run)
    except UserError as e:
        assert one_line(e), str(e)
