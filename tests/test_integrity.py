"""Files are read as data, never as code, and a damaged file is one clear line.

Checkpoints load with ``weights_only=True``; a pickled object in one is refused; a
truncated, flipped, missing or edited file of a feature store or a run directory is a
one-line UserError naming it (``--resume`` repairs a store); ``metrics.json`` keeps what
other commands added.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lvmlt import rundir
from lvmlt.cli import main
from lvmlt.data.base import DataBundle, ImageSplit
from lvmlt.errors import UserError
from lvmlt.features import ExtractConfig, FeatureStore, extract, pipeline

# engine=torch where the option exists: the store is compared value by value
_ENGINE = {"engine": "torch"} if "engine" in {f.name for f in dataclasses.fields(ExtractConfig)} else {}
CFG = ExtractConfig(encoder="tiny_test", precision="fp32", chunk_size=4, batch_size=4, pca_images=3, **_ENGINE)
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert isinstance(e, UserError) and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def _flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# --------------------------------------------------------------------------- feature store
def _bundle() -> DataBundle:
    rng = np.random.default_rng(0)

    def split(name: str, n: int) -> ImageSplit:
        imgs = [Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)) for _ in range(n)]
        return ImageSplit(name, [f"{name}/{i}.png" for i in range(n)], np.arange(n) % 2, lambda i: imgs[i].copy())

    return DataBundle("tiny", split("train", 6), split("val", 3), split("test", 3), ["a", "b"])


def _extract(root: Path, **kw) -> FeatureStore:
    return extract(_bundle(), CFG, root, progress=False, log=lambda s: None, **kw)


def _arrays(store: FeatureStore) -> dict[str, np.ndarray]:
    return {f"{s}/{k}": np.array(getattr(store.split(s), k)) for s in store.split_names for k in ("vec", "map")}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("store") / "s"
    return root, _arrays(_extract(root))


def _copy(pristine, dst: Path) -> Path:
    shutil.copytree(pristine[0], dst)
    return dst


def _damage(root: Path, case: str) -> str:
    """Damage one file of the store; returns the file's name."""
    if case == "truncated":
        _truncate(root / "train/vec.npy", (root / "train/vec.npy").stat().st_size - 7)
        return "train/vec.npy"
    if case == "flipped":
        _flip(root / "val/map.npy", -3)  # inside the data, after the header
        return "val/map.npy"
    if case == "missing":
        (root / "test/vec.npy").unlink()
        return "test/vec.npy"
    m = json.loads((root / "manifest.json").read_text())
    m["splits"]["train"]["n"] = 5
    (root / "manifest.json").write_text(json.dumps(m))
    return "manifest.json"


@pytest.mark.parametrize("case", ["truncated", "flipped", "missing", "edited"])
def test_a_damaged_store_is_refused_in_one_line(pristine, tmp_path, case):
    root = _copy(pristine, tmp_path / "s")
    name = _damage(root, case)
    with pytest.raises(UserError) as e:
        FeatureStore.open(root)
    msg = _one_line(e.value)
    assert str(root / name) in msg
    assert ("--overwrite" if case == "edited" else "--resume") in msg


def test_size_only_verification_skips_the_hashes(pristine, tmp_path, monkeypatch):
    root = _copy(pristine, tmp_path / "s")
    _damage(root, "flipped")
    FeatureStore.open(root, verify="size")  # same size: only the hash sees it
    monkeypatch.setenv("LVMLT_STORE_VERIFY", "size")
    FeatureStore.open(root)
    _damage(root, "truncated")
    with pytest.raises(UserError, match="bytes"):
        FeatureStore.open(root, verify="size")


@pytest.mark.parametrize("case", ["truncated", "flipped", "missing"])
def test_resume_repairs_only_the_damaged_split(pristine, tmp_path, monkeypatch, case):
    root = _copy(pristine, tmp_path / "s")
    damaged = _damage(root, case).split("/")[0]
    with pytest.raises(UserError, match="--resume"):
        _extract(root, resume=False)  # as `lvmlt extract` without --resume: said, not silently redone
    before = {p: p.stat().st_ino for p in root.glob("*/*.npy")}
    encoded = []
    real = pipeline._extract_split

    def counting(root_, name, split, jobs, *args):
        encoded.extend([name] * sum(len(idx) for _, idx in jobs))
        return real(root_, name, split, jobs, *args)

    monkeypatch.setattr(pipeline, "_extract_split", counting)
    store = _extract(root, resume=True)
    assert set(encoded) == {damaged} and len(encoded) == len(store.split(damaged))
    for p, ino in before.items():  # the other splits' arrays are not even rewritten
        if p.parent.name != damaged:
            assert p.stat().st_ino == ino, p
    got, want = _arrays(FeatureStore.open(root)), pristine[1]
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


@FUZZ
@given(
    file=st.sampled_from(["manifest.json", "pca.npz", "train/vec.npy", "train/map.npy", "test/vec.npy"]),
    truncate=st.booleans(),
    where=st.floats(0, 1, exclude_max=True),
)
def test_fuzz_store_loads_the_same_numbers_or_says_why(pristine, file, truncate, where):
    with tempfile.TemporaryDirectory() as tmp:
        root = _copy(pristine, Path(tmp) / "s")
        path = root / file
        pos = int(where * path.stat().st_size)
        _truncate(path, pos) if truncate else _flip(path, pos)
        try:
            store = FeatureStore.open(root)
            got = _arrays(store)
            pca = store.pca()
        except UserError as e:
            _one_line(e)
            return
        want = pristine[1]
        assert all(np.array_equal(got[k], want[k]) for k in want)
        with np.load(pristine[0] / "pca.npz") as a:
            assert np.array_equal(pca.to_arrays()["component"], a["component"])


# --------------------------------------------------------------------------- run directory
def _images(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 3)):
        for c, shade in (("cat", 40), ("dog", 200)):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                px = np.clip(rng.normal(shade, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{i}.png")
    return root


def _train_args(data: Path, out: Path) -> list[str]:
    return [
        "train", "--quiet", "data.name=imagefolder", f"data.root={data}", "data.val_fraction=0.25",
        "data.image_size=16", "data.batch_size=8", "data.num_workers=0", "model.backbone=resnet8",
        "optim.epochs=2", "optim.lr=0.05", "optim.precision=fp32", f"out_dir={out}", "run_name=r",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    data = _images(base / "data")
    assert main(_train_args(data, base / "runs")) == 0
    return base / "runs" / "r", data


def _copy_run(run, tmp_path) -> Path:
    return Path(shutil.copytree(run[0], tmp_path / "r"))


def _cli_error(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lvmlt: error: "), lines
    return lines[0]


def test_every_checkpoint_loads_as_data_only(run):
    for name in (rundir.LAST, rundir.BEST):
        state = torch.load(run[0] / name, map_location="cpu", weights_only=True)
        assert {"model", "opt", "rng", "epoch"} <= set(state)
        assert torch.is_tensor(state["rng"]["numpy"]["keys"])
        assert rundir.load_checkpoint(run[0] / name)["epoch"] == state["epoch"]


class _Payload:
    """Stands for any object whose unpickling could run code."""

    def __reduce__(self):
        return (print, ("unpickled",))


def test_a_checkpoint_with_a_pickled_object_is_refused(run, tmp_path, capsys):
    rd = _copy_run(run, tmp_path)
    state = torch.load(rd / rundir.BEST, weights_only=True)
    torch.save(state | {"extra": _Payload()}, rd / rundir.BEST)
    line = _cli_error(["evaluate", str(rd), "--quiet"], capsys)
    assert "pickled Python object" in line and str(rd / rundir.BEST) in line
    assert "unpickled" not in capsys.readouterr().out
    from lvmlt.config import load_config
    from lvmlt.models.stage import apply_stage
    from lvmlt.systems import build_model

    cfg = load_config(None, ["model.backbone=resnet8", f"stage.init_from={rd}"])
    with pytest.raises(UserError, match="pickled Python object"):
        apply_stage(build_model(cfg, 2), cfg.stage)


def test_resume_from_a_damaged_last_checkpoint_says_so(run, tmp_path, capsys):
    rd, last = run[0], run[0] / rundir.LAST
    shutil.copy(last, tmp_path / "last.pt")
    try:
        _truncate(last, 1000)
        line = _cli_error([*_train_args(run[1], rd.parent), "--resume"], capsys)
    finally:
        shutil.copy(tmp_path / "last.pt", last)
    assert str(last) in line and "damaged" in line and "--resume" in line


def _tensor_data_offset(path: Path) -> int:
    """Where the bytes of the first stored tensor start inside a checkpoint (a zip file)."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    head = path.read_bytes()[info.header_offset : info.header_offset + 30]
    return info.header_offset + 30 + int.from_bytes(head[26:28], "little") + int.from_bytes(head[28:30], "little")


def test_a_damaged_best_checkpoint_is_one_line(run, tmp_path, capsys):
    rd = _copy_run(run, tmp_path)
    _flip(rd / rundir.BEST, _tensor_data_offset(rd / rundir.BEST) + 1)  # a weight changes, the size does not
    line = _cli_error(["evaluate", str(rd), "--quiet"], capsys)
    assert str(rd / rundir.BEST) in line and "damaged" in line


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)


@FUZZ
@given(truncate=st.booleans(), where=st.floats(0, 1, exclude_max=True))
def test_fuzz_checkpoint_loads_the_same_numbers_or_says_why(run, truncate, where):
    want = rundir.load_checkpoint(run[0] / rundir.BEST)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best.pt"
        shutil.copy(run[0] / rundir.BEST, path)
        pos = int(where * path.stat().st_size)
        _truncate(path, pos) if truncate else _flip(path, pos)
        try:
            got = rundir.load_checkpoint(path)
        except UserError as e:
            assert str(path) in _one_line(e)
            return
        assert _same(got, want)


def test_evaluate_after_calibrate_keeps_the_calibrated_results(run, tmp_path, capsys):
    rd = _copy_run(run, tmp_path)
    assert main(["calibrate", str(rd), "--method", "mlls"]) == 0
    calibrated = rundir.read_metrics(rd)["calibrated"]
    assert "mlls+bcts" in calibrated  # calibrated first, by default
    assert main(["evaluate", str(rd), "--quiet"]) == 0
    after = rundir.read_metrics(rd)
    assert after["calibrated"] == calibrated and "test" in after


def test_metrics_are_merged_never_dropped(tmp_path):
    rundir.write_metrics(tmp_path, {"test": {"top1": 0.5}, "calibrated": {"mapls": {}}})
    rundir.write_metrics(tmp_path, {"test": {"top1": 0.6}})
    assert rundir.read_metrics(tmp_path) == {"test": {"top1": 0.6}, "calibrated": {"mapls": {}}}
    (tmp_path / rundir.METRICS).write_text("{")
    with pytest.raises(UserError) as e:
        rundir.read_metrics(tmp_path)
    _one_line(e.value)


def test_a_checkpoint_of_an_older_lvmlt_still_resumes(tmp_path):
    """Older checkpoints hold numpy's RNG state as an array: numpy's array globals are allowed."""
    import random

    from lvmlt.training import runtime

    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"model": {"w": torch.ones(2)}, "rng": rng}, tmp_path / "old.pt")
    state = rundir.load_checkpoint(tmp_path / "old.pt")
    runtime.set_rng_state(state["rng"])
    assert np.random.get_state()[1].tolist() == rng["numpy"][1].tolist()
