"""Safe to share, safe to run twice, every fault one line (issue 23, points 2, 7 and 9).

One writer per run directory and feature store (a second one stops at once naming the
first's pid; a killed holder leaves no stale lock; readers never wait); operating-system
faults (file too large, no space, read-only, not a directory) are one line naming the path
and the errno's words, with what was finished left usable; a finished run is reused only
with the config it was made with; the validation split warns when it cannot choose an
epoch, and ties in the selection metric go to the lower validation NLL.

Faults are provoked without root: a file-size limit (``RLIMIT_FSIZE``, SIGXFSZ ignored, so
writes fail with EFBIG) set around one call and restored after it, a file where a folder
should be, and a read-only folder (skipped where the tests run as root, who writes anyway).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import test_integrity
from helpers import feature_bundle, toy_bundle
from lvmlt import locks, rundir
from lvmlt.cli import main
from lvmlt.config import load_config
from lvmlt.errors import UserError
from lvmlt.features import ExtractConfig, engines, extract
from lvmlt.training import trainer as T
from test_integrity import _cli_error, _copy_run, _same, _train_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")
run = test_integrity.run  # the fixture: a finished 2-epoch run of `lvmlt train` (run dir, data)

STORE_CFG = ExtractConfig(encoder="tiny_test", precision="fp32", engine="torch", chunk_size=4, batch_size=4,
                          pca="per_image")  # fmt: skip


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past ``nbytes`` fail with EFBIG ("File too large") inside the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (the lock file left out)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != locks.LOCK_FILE
    }


def temporaries(root: Path) -> list[Path]:
    """Temporary files of atomic writes (``.NAME.tmp-PID``) left under ``root``."""
    return list(root.rglob(".*.tmp-*"))


# --------------------------------------------------------------------------- one writer
def test_a_second_writer_of_a_run_directory_stops_naming_the_first(run, tmp_path, capsys):
    rd = _copy_run(run, tmp_path)
    before = snapshot(rd)
    with locks.hold(rd):  # the test process stands for a `lvmlt train` running there
        train_line = _cli_error(_train_args(run[1], rd.parent), capsys)
        resume_line = _cli_error([*_train_args(run[1], rd.parent), "--resume"], capsys)
        eval_line = _cli_error(["evaluate", str(rd), "--quiet"], capsys)
        # readers never wait for a writer
        assert rundir.read_metrics(rd)["best_epoch"] >= 0
        assert main(["report", str(rd), "--out", str(tmp_path / "page")]) == 0
    for line in (train_line, resume_line, eval_line):
        assert line.startswith(f"lvmlt: error: run directory {rd} is being written by pid {os.getpid()} ("), line
    assert snapshot(rd) == before  # nothing of the run was touched
    assert main(["evaluate", str(rd), "--quiet"]) == 0  # released: the next writer goes ahead


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from lvmlt import locks
        lock = locks.hold({str(tmp_path / "store")!r}, "feature store")
        print("held", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"^feature store {tmp_path / 'store'} is being written by pid {child.pid} \("):
            locks.hold(tmp_path / "store", "feature store")
    finally:
        child.kill()  # SIGKILL: no cleanup code runs
        child.wait()
    with locks.hold(tmp_path / "store", "feature store"):  # the kernel released it
        assert (tmp_path / "store" / locks.LOCK_FILE).is_file()


def test_a_second_extraction_into_one_store_stops(tmp_path, capsys):
    out = tmp_path / "store"
    with locks.hold(out, "feature store"):
        with pytest.raises(UserError, match=rf"^feature store {out} is being written by pid {os.getpid()} "):
            extract(toy_bundle(8, 4, 4), STORE_CFG, out, progress=False, log=lambda s: None)
        assert sorted(p.name for p in out.iterdir()) == [locks.LOCK_FILE]
    # the lock file does not make the folder "not empty": the store is made in it
    store = extract(toy_bundle(8, 4, 4), STORE_CFG, out, progress=False, log=lambda s: None)
    assert len(store.split("train")) == 8


@pytest.mark.skipif(engines.engine_version("onnxruntime") is None, reason="onnxruntime is not installed")
def test_two_extractions_sharing_the_engine_cache_both_end_right(tmp_path, monkeypatch):
    from lvmlt.encoders import build_encoder

    monkeypatch.setattr(engines, "cache_root", lambda: tmp_path / "cache")
    got, logs, errors = [None, None], [[], []], []
    encoders = [build_encoder("tiny_test") for _ in range(2)]  # built here: torch's RNG is global
    started = threading.Barrier(2)

    def build(k):
        try:
            started.wait()
            got[k] = engines.compile_encoder(encoders[k], "onnxruntime", "fp32", (), 1, logs[k].append)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=build, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(g.info["reused"] for g in got) == [False, True]  # built once, then loaded
    entries = [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(entries) == 1 and not entries[0].startswith(".")  # one entry, no temporary left
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(got[0](x)["out"], got[1](x)["out"])


# --------------------------------------------------------------------------- OS faults
def test_a_full_disk_during_training_keeps_the_last_epoch_and_resume_finishes(run, tmp_path, capsys, monkeypatch):
    rd = tmp_path / "runs" / "r"
    real, kept, full = T.Trainer._train_epoch, {}, contextlib.ExitStack()

    def full_after_first_epoch(self, epoch):
        if epoch == 1:
            # the lock is held while the run trains: a second writer stops
            with pytest.raises(UserError, match=f"being written by pid {os.getpid()}"):
                T.Trainer(self.cfg, resume=True, progress=False)
            kept.update(snapshot(rd))
            full.enter_context(file_size_limit(4096))  # the checkpoints are larger
        return real(self, epoch)

    monkeypatch.setattr(T.Trainer, "_train_epoch", full_after_first_epoch)
    with full:
        line = _cli_error(_train_args(run[1], rd.parent), capsys)
    monkeypatch.setattr(T.Trainer, "_train_epoch", real)
    assert line.startswith(f"lvmlt: error: cannot write {rd / 'checkpoints'}/"), line
    assert "(File too large); raise the file-size limit" in line and line.endswith("and continue with --resume")
    assert not temporaries(rd)  # the temporary file is removed
    after = snapshot(rd)
    for name in (rundir.LAST, rundir.CONFIG):
        assert after[name] == kept[name]  # the finished epoch's checkpoint is untouched
    assert main([*_train_args(run[1], rd.parent), "--resume"]) == 0
    # the resumed run ends bit-identical to the uninterrupted one
    a, b = (torch.load(d / rundir.LAST, weights_only=True)["model"] for d in (run[0], rd))
    assert _same(a, b)
    assert rundir.read_metrics(rd)["best_epoch"] == rundir.read_metrics(run[0])["best_epoch"]


def test_a_full_disk_during_evaluate_is_one_line_and_changes_nothing(run, tmp_path, capsys):
    rd = _copy_run(run, tmp_path)
    before = snapshot(rd)
    with file_size_limit(1024):  # predictions.npz is larger
        line = _cli_error(["evaluate", str(rd), "--quiet"], capsys)
    assert line.startswith(f"lvmlt: error: cannot write {rd / rundir.PREDICTIONS} (File too large); "), line
    assert line.endswith(f"and run `lvmlt evaluate {rd}` again")
    assert snapshot(rd) == before and not temporaries(rd)


def test_a_full_disk_during_extraction_keeps_the_chunks_and_resume_finishes(tmp_path):
    bundle, out = toy_bundle(12, 4, 4), tmp_path / "store"
    # a chunk (4 images) is ~3.2 kB, the manifest ~3 kB; the train split's vectors (12 images) 6.3 kB
    with file_size_limit(5000), pytest.raises(UserError) as e:
        extract(bundle, STORE_CFG, out, progress=False, log=lambda s: None)
    msg = str(e.value)
    assert msg.startswith(f"cannot write {out / 'train' / 'vec.npy'} (File too large)"), msg
    assert msg.endswith("and continue with the same `lvmlt extract ... --resume`")
    chunks = snapshot(out / "chunks")
    assert len(chunks) == 5 and not temporaries(out)  # 3 train chunks, 1 val, 1 test: all finished
    store = extract(bundle, STORE_CFG, out, progress=False, log=lambda s: None)
    assert store.manifest["complete"] and len(store.split("train")) == 12


def test_a_file_where_a_folder_should_be_is_one_line(run, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    line = _cli_error(_train_args(run[1], tmp_path / "taken"), capsys)
    assert line.startswith(f"lvmlt: error: cannot write {tmp_path / 'taken' / 'r'} (Not a directory)"), line
    with pytest.raises(UserError, match=rf"^cannot write {tmp_path / 'taken' / 's'} \(Not a directory\)"):
        extract(toy_bundle(8, 4, 4), STORE_CFG, tmp_path / "taken" / "s", progress=False, log=lambda s: None)


def _as_user(argv: list[str]) -> list[str]:
    """The lvmlt command line ``argv`` in a new process; as root, run as ``nobody`` (setpriv),
    for whom a read-only folder is read-only."""
    cmd = [sys.executable, "-m", "lvmlt", *argv]
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("the tests run as root (who writes into a read-only folder) and setpriv is missing")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]


@pytest.mark.slow  # four CLI processes as another user (about 12 s); the write faults above run every time
def test_a_read_only_out_dir_is_one_line(run):
    # outside pytest's folder (private to its user), so that `nobody` reaches it
    base = Path(tempfile.mkdtemp(prefix="lvmlt-ro-"))
    try:
        data = Path(shutil.copytree(run[1], base / "data"))
        rd = Path(shutil.copytree(run[0], base / "runs" / "r"))
        (rd / locks.LOCK_FILE).unlink()
        (base / "data.yaml").write_text(f"data:\n  name: imagefolder\n  root: {data}\n  val_fraction: 0.25\n")
        for p in (base, *base.rglob("*")):
            p.chmod(0o755 if p.is_dir() else 0o644)
        before = snapshot(rd)
        for d in (rd.parent, rd):
            d.chmod(0o555)
        commands = {
            "evaluate": (["evaluate", str(rd), "--quiet"], rd),
            "train": ([*_train_args(data, rd.parent), "run_name=new", "threads=1"], rd.parent / "new"),
            "calibrate": (["calibrate", str(rd), "--method", "mlls"], rd),  # its writer lock, first
            "extract": (["extract", "--data-config", str(base / "data.yaml"), "--encoder", "tiny_test",
                         "--out", str(rd.parent / "store"), "--quiet", "engine=torch"], rd.parent / "store"),
        }  # fmt: skip
        env = {**os.environ, "HOME": str(base), "LVMLT_CACHE": str(base / "cache")}
        for name, (argv, where) in commands.items():
            p = subprocess.run(_as_user(argv), cwd=base, env=env, capture_output=True, text=True, timeout=120)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 2 and len(lines) == 1, (name, p.stderr)
            assert lines[0].startswith(f"lvmlt: error: cannot write {where} (Permission denied); make it writable"), name
        assert snapshot(rd) == before
    finally:
        for p in (base, *base.rglob("*")):
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    "fault, words",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "(No space left on device); free space"),
        (PermissionError(errno.EACCES, "Permission denied"), "(Permission denied); make it writable"),
        (OSError(errno.EROFS, "Read-only file system"), "(Read-only file system); remount it writable"),
    ],
)
@pytest.mark.parametrize("wrap", ["plain", "torch", "zipfile"])
def test_every_write_fault_is_one_line_and_the_old_file_stays(tmp_path, fault, words, wrap):
    target = tmp_path / "metrics.json"
    target.write_text('{"old": 1}')

    def write(f):
        f.write(b"half")
        if wrap == "plain":
            raise fault
        try:
            raise fault
        except OSError:
            # the OSError stays the new exception's context, as in torch and zipfile
            if wrap == "torch":  # torch.save
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904
            raise ValueError("seek of closed file")  # noqa: B904 (zipfile's close after the failed write)

    with pytest.raises(rundir.WriteError) as e:
        rundir.atomic_write(target, write)
    assert str(e.value).startswith(f"cannot write {target} {words}")
    assert target.read_text() == '{"old": 1}' and not temporaries(tmp_path)
    assert e.value.then("continue with --resume").fix.endswith("and continue with --resume")


def test_a_bug_keeps_its_traceback(tmp_path):
    with pytest.raises(ValueError, match="a bug"):
        rundir.atomic_write(tmp_path / "x", lambda f: (_ for _ in ()).throw(ValueError("a bug")))


def test_an_os_error_escaping_a_command_is_one_line(monkeypatch, capsys):
    import lvmlt.cli as cli

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/data/x.png")

    monkeypatch.setattr(cli, "cmd_datasets", denied)
    assert _cli_error(["datasets"], capsys) == "lvmlt: error: Permission denied: /srv/data/x.png"

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_datasets", bug)
    with pytest.raises(RuntimeError):  # a real bug keeps its traceback
        main(["datasets"])


def test_a_python_tag_in_config_yaml_is_one_line_and_runs_nothing(run, tmp_path, capsys):
    rd = _copy_run(run, tmp_path)
    marker = tmp_path / "ran"
    text = (rd / rundir.CONFIG).read_text()
    (rd / rundir.CONFIG).write_text(f"hook: !!python/object/apply:os.system ['touch {marker}']\n" + text)
    before = snapshot(rd)
    for argv in (["evaluate", str(rd), "--quiet"], [*_train_args(run[1], rd.parent), "--resume"]):
        line = _cli_error(argv, capsys)
        assert line.startswith(f"lvmlt: error: {rd / rundir.CONFIG} is not a plain YAML config"), line
    assert not marker.exists() and snapshot(rd) == before


def test_a_binary_metrics_file_is_one_line_for_report(run, tmp_path, capsys):
    rd = _copy_run(run, tmp_path)
    (rd / rundir.METRICS).write_bytes(b"\x80\x81\xfe\xff" * 16)
    line = _cli_error(["report", str(rd), "--out", str(tmp_path / "page")], capsys)
    assert str(rd / rundir.METRICS) in line or "metrics.json" in line, line


# --------------------------------------------------------------------------- silent wrong results
def test_a_finished_run_is_reused_only_with_its_own_config(run, capsys):
    from lvmlt.experiments.grid import run_result

    rd, data = run
    asked = load_config(None, [a for a in _train_args(data, rd.parent) if "=" in a])
    before = snapshot(rd)
    assert run_result(asked) == rundir.read_metrics(rd)  # the same settings: read, not trained
    for changed, diff in (("optim.epochs=1", "optim.epochs: 2 -> 1"), ("loss.name=focal", "loss.name: 'ce' -> 'focal'")):
        cfg = load_config(None, [a for a in _train_args(data, rd.parent) if "=" in a] + [changed])
        with pytest.raises(UserError) as e:
            run_result(cfg)
        msg = str(e.value)
        assert msg.startswith(f"the finished run {rd} was made with other settings ({diff}"), msg
        assert f"delete {rd} for a fresh run" in msg
    # a setting that never changes a result does not refuse it
    assert run_result(load_config(None, [a for a in _train_args(data, rd.parent) if "=" in a] + ["threads=1"]))
    assert snapshot(rd) == before


def test_a_validation_split_that_cannot_choose_an_epoch_warns_naming_the_classes(tmp_path, capsys):
    thin = feature_bundle({"train": [24, 12, 6, 3], "val": [2, 1, 1, 0], "test": [2, 2, 2, 2]})
    msg = T.check_validation(thin)
    assert "1 of 4 classes have no validation image (c3)" in msg
    assert "it holds 4 images for 4 classes (fewer than 2 per class)" in msg
    assert T.check_validation(feature_bundle({"train": [4, 4], "val": [2, 2], "test": [1, 1]})) is None
    cfg = load_config(None, ["model.backbone=resnet8", "data.image_size=16", f"out_dir={tmp_path}", "run_name=w",
                             "optim.epochs=1", "optim.precision=fp32", "threads=1"])  # fmt: skip
    t = T.Trainer(cfg, bundle=toy_bundle(12, 2, 3), progress=False)
    t.close()
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if line.startswith("lvmlt: warning: the validation split")]
    assert len(warned) == 1 and "1 of 3 classes have no validation image (b)" in warned[0], err


def test_ties_in_the_selection_metric_go_to_the_lower_validation_nll(run):
    best = SimpleNamespace(best=50.0, best_nll=0.5)
    assert T.Trainer._improves(best, 50.0, 0.4)  # tied accuracy, lower NLL: the later epoch wins
    assert not T.Trainer._improves(best, 50.0, 0.6)
    assert not T.Trainer._improves(best, 50.0, 0.5)  # a full tie keeps the earlier epoch
    assert T.Trainer._improves(best, 50.5, 9.0) and not T.Trainer._improves(best, 49.5, 0.1)
    m = rundir.read_metrics(run[0])
    assert m["selected_on"] == "val/mean_class_acc" and m["tie_break"] == "val/nll (lower)"
    hist = rundir.read_history(run[0])
    want = min(range(len(hist)), key=lambda e: (-hist[e]["val/mean_class_acc"], hist[e]["val/nll"]))
    assert m["best_epoch"] == want
    assert np.isfinite([h["val/nll"] for h in hist]).all()
