"""The run directory, and the one way lvmlt writes a file durably.

A run directory (``out_dir/run_name``) holds::

    config.yaml              the resolved config, git commit, seed and data fingerprints
    train.log                the log of every epoch
    tb/                      TensorBoard events
    history.jsonl            one line per finished epoch
    checkpoints/last.pt      the state after the last finished epoch (for --resume)
    checkpoints/best.pt      the epoch with the best *validation* score
    metrics.json             final metrics; other commands add their own keys (calibrated)
    predictions.npz          validation and test logits and labels, train class counts
    model.json, model.npz    what rebuilds the model and its inputs without the training data
                             (classes, inputs, preprocessing, feature settings, PCA basis)
    bad_images.txt           ids of skipped (unreadable) images, when there were any
    .lock                    the one-writer lock (lvmlt.locks): who trains or evaluates it now

Every write goes through :func:`atomic_write` (or :func:`writing`): an operating-system
fault (no space, read-only, too large, no permission) is one :class:`WriteError` line
naming the file and the errno's words, and the file's previous version stays.

Checkpoints hold only tensors and plain Python values and are read with
``torch.load(weights_only=True)``: a file from someone else is read as data, never run as
code. Each checkpoint carries the sha256 of its contents, so a damaged file is reported
instead of loading wrong numbers.

This module sits at the bottom of the package: it imports nothing of lvmlt but the errors.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from lvmlt.errors import UserError

CONFIG = "config.yaml"
TRAIN_LOG = "train.log"
TENSORBOARD = "tb"
HISTORY = "history.jsonl"
CHECKPOINTS = "checkpoints"
LAST = f"{CHECKPOINTS}/last.pt"
BEST = f"{CHECKPOINTS}/best.pt"
METRICS = "metrics.json"
PREDICTIONS = "predictions.npz"
BAD_IMAGES = "bad_images.txt"


# ---------------------------------------------------------------------------------------
# Operating-system faults while writing: one line naming the path and the errno's words
# ---------------------------------------------------------------------------------------
_REMEDY = {
    errno.ENOSPC: "free space",
    errno.EDQUOT: "free space within your disk quota",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
    errno.EROFS: "remount it writable or write elsewhere",
    errno.EACCES: "make it writable",
    errno.EPERM: "make it writable",
}


class WriteError(UserError):
    """The operating system refused a write (disk full, read-only, permission, too large).

    Attributes:
        path: what could not be written. errno: the error number (None when unknown).
    """

    def __init__(self, path, err: OSError, then: str | None = None):
        self.path, self.os_error, self.errno = Path(path), err, err.errno
        words = os.strerror(err.errno) if err.errno else (err.strerror or str(err) or type(err).__name__)
        fix = _REMEDY.get(err.errno, "check the disk and the folder")
        super().__init__(f"cannot write {path} ({words})", fix=f"{fix} and {then}" if then else fix)

    def then(self, text: str) -> WriteError:
        """The same fault, with what to do once it is fixed (e.g. "continue with --resume")."""
        return WriteError(self.path, self.os_error, text)


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError that ``exc`` is or wraps (its cause / context chain), else None.

    torch reports a failed write as ``RuntimeError: enforce fail at inline_container.cc``
    and zipfile as ``ValueError: seek of closed file``; the OSError is in their chain.
    """
    seen: list[BaseException] = []
    while exc is not None and not any(exc is s for s in seen):
        if isinstance(exc, OSError) and not isinstance(exc, (BlockingIOError, InterruptedError)):
            return exc
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return None


def _drop_half_written(exc: BaseException) -> None:
    """Release what the failed write's frames hold (numpy's ZipFile, torch's writer) now, and
    quietly: their finalisers would otherwise print "Exception ignored ... seek of closed file"
    once the file they wrote to is closed."""
    old = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        e, n = exc, 0
        while e is not None and n < 16:
            traceback.clear_frames(e.__traceback__)
            e, n = e.__cause__ or e.__context__, n + 1
    finally:
        sys.unraisablehook = old


@contextlib.contextmanager
def writing(path: str | Path | None = None, then: str | None = None):
    """Turn an operating-system fault in the block into one :class:`WriteError` line.

    Args:
        path: what the block writes (default: the file the OSError names).
        then: what to do once the fault is fixed.
    """
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        err = os_error_in(e)
        if err is None:
            raise
        _drop_half_written(e)
        raise WriteError(path if path is not None else (err.filename or "a file"), err, then) from None


# ---------------------------------------------------------------------------------------
# Durable, atomic writes (run directories, feature stores, reports)
# ---------------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    """The temporary name ``path`` is written under before its rename (``.NAME.tmp-PID``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | Path, write: Callable) -> None:
    """Write ``path`` through ``write(binary_file)`` so it is either absent, old, or complete.

    The bytes go to a temporary file which is fsync-ed before the rename, and the directory
    is fsync-ed after it: once this returns, the file survives a crash or power loss.

    Raises:
        WriteError: the operating system refused the write (no space, read-only, too
            large, no permission); the temporary file is removed and a previous ``path``
            is left as it was.
    """
    path = Path(path)
    tmp = tmp_name(path)
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------
# metrics.json: read, and merge-write (never drop what another command added)
# ---------------------------------------------------------------------------------------
def read_metrics(run_dir: str | Path) -> dict:
    """The run's ``metrics.json`` ({} when there is none yet)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return {}
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})", fix="restore it, or delete it and run `lvmlt evaluate`") from None
    if not isinstance(m, dict):
        raise UserError(f"{path} does not hold a JSON object", fix="restore it, or delete it and run `lvmlt evaluate`")
    return m


def write_metrics(run_dir: str | Path, updates: dict) -> dict:
    """Merge ``updates`` into ``metrics.json``: their keys replace, every other key stays.

    ``lvmlt evaluate`` rewrites "val" and "test" and keeps e.g. the "calibrated" entries
    that ``lvmlt calibrate`` added. Returns the merged dict as written.
    """
    merged = read_metrics(run_dir) | dict(updates)
    atomic_write_json(Path(run_dir) / METRICS, merged)
    return merged


# ---------------------------------------------------------------------------------------
# Checkpoints: tensors and plain values only, with a content hash
# ---------------------------------------------------------------------------------------
_HASH_KEY = "content_sha256"


def _hash_value(h, v) -> None:
    import torch

    if torch.is_tensor(v):
        t = v.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(v, dict):
        h.update(f"D{len(v)}".encode())
        for k in sorted(v, key=repr):
            _hash_value(h, k)
            _hash_value(h, v[k])
    elif isinstance(v, (list, tuple)):
        h.update(f"{type(v).__name__[0]}{len(v)}".encode())
        for x in v:
            _hash_value(h, x)
    elif isinstance(v, float):
        h.update(b"f" + (repr(v) if math.isfinite(v) else str(v)).encode())
    elif v is None or isinstance(v, (bool, int, str, bytes)):
        h.update(f"{type(v).__name__}:{v!r}".encode())
    else:
        raise TypeError(f"a checkpoint may hold only tensors and plain values, not {type(v).__name__}")


def content_sha256(state: dict) -> str:
    """sha256 of a checkpoint's values (tensor bytes, dtypes, shapes and plain values)."""
    h = hashlib.sha256()
    _hash_value(h, {k: v for k, v in state.items() if k != _HASH_KEY})
    return h.hexdigest()


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (tensors and plain values) atomically, with its content hash."""
    import torch

    state = dict(state)
    state[_HASH_KEY] = content_sha256(state)
    atomic_write(path, lambda f: torch.save(state, f))


def _legacy_safe_globals() -> list:
    """numpy's array reconstruction: checkpoints of older lvmlt hold the numpy RNG state."""
    import numpy as np

    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        from numpy._core.multiarray import _reconstruct
    else:
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: str | Path, map_location="cpu", fix: str | None = None) -> dict:
    """Read a checkpoint with ``weights_only=True`` and check its content hash.

    A missing, damaged or code-carrying file is a one-line :class:`UserError` naming it.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}", fix="pass a finished run directory or its checkpoint file")
    redo = fix or "restore the file, or train the run again into a new run directory"
    legacy = _legacy_safe_globals()
    try:
        with torch.serialization.safe_globals(legacy):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for broken files
        # Why, from the globals the file's pickle names (parsed, never run): one torch does
        # not admit is a pickled object; a file that does not parse is damaged.
        from lvmlt.safepickle import checkpoint_globals, torch_admitted_globals

        admitted = torch_admitted_globals(legacy)
        try:
            refused = [g for g in checkpoint_globals(path) if g not in admitted]
        except Exception:  # not a zip, truncated, a member failing its CRC, a broken pickle
            refused = None
        resave = "re-save it holding only tensors and plain values (e.g. torch.save({'model': model.state_dict()}))"
        if refused:
            raise UserError(
                f"checkpoint {path} holds a pickled Python object ({refused[0]}), "
                "and lvmlt loads checkpoints as data only, never as code",
                fix=resave,
            ) from None
        if refused is not None:  # an intact zip whose pickle names only admitted globals
            raise UserError(
                f"checkpoint {path} holds no pickled object, yet torch.load(weights_only=True) cannot read it "
                f"({type(e).__name__}; a pickle_protocol other than torch.save's default?)",
                fix=resave,
            ) from None
        raise UserError(
            f"checkpoint {path} is damaged and cannot be read ({type(e).__name__})", fix=redo
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"checkpoint {path} is not an lvmlt checkpoint (no 'model' entry)", fix=redo)
    recorded = state.get(_HASH_KEY)
    try:
        actual = content_sha256(state) if recorded is not None else None
    except TypeError:
        actual = None
    if recorded is not None and recorded != actual:
        raise UserError(f"checkpoint {path} is damaged (its contents do not match their sha256)", fix=redo)
    state.pop(_HASH_KEY, None)
    return state


# ---------------------------------------------------------------------------------------
# Reading a run directory: every command goes through these (no file name spelled twice)
# ---------------------------------------------------------------------------------------
DESCRIPTION = "model.json"  # what rebuilds the model and its inputs without the training data
DESCRIPTION_ARRAYS = "model.npz"  # its arrays: PCA basis, fitted feature normalisations
DESCRIPTION_FORMAT = 1
REEVALUATE = "re-run `lvmlt evaluate {run}` with this lvmlt to add it"


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` holds a run's ``config.yaml``."""
    return (Path(path) / CONFIG).is_file()


def read_config(run_dir: str | Path, partial: bool = False) -> dict:
    """The resolved config a run was made with (``config.yaml``: config, git commit, seed...).

    Read with YAML's safe loader: a tag that would build a Python object is refused.
    ``partial`` accepts any mapping (a hand-written file without the ``config`` section).
    """
    import yaml

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG})", fix="pass the directory `lvmlt train` made")
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{path} is not a plain YAML config ({first})",
            fix="restore it from the run's origin; lvmlt never builds Python objects from a config",
        ) from None
    if not isinstance(saved, dict) or not (partial or isinstance(saved.get("config"), dict)):
        raise UserError(f"{path} does not hold a run's resolved config", fix="pass the directory `lvmlt train` made")
    return saved


def write_config(run_dir: str | Path, resolved: dict) -> None:
    import yaml

    atomic_write_text(Path(run_dir) / CONFIG, yaml.safe_dump(resolved, sort_keys=False))


def append_history(run_dir: str | Path, record: dict) -> None:
    """One finished epoch, as one JSON line of ``history.jsonl``."""
    path = Path(run_dir) / HISTORY
    with writing(path), open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_history(run_dir: str | Path, notes: list[str] | None = None) -> list[dict]:
    """The epochs of ``history.jsonl``; a damaged line is left out (and named in ``notes``)."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        elif line.strip() and notes is not None:
            notes.append(f"{path}:{n} is not a JSON object; left out")
    return out


def write_predictions(run_dir: str | Path, arrays: dict) -> None:
    import numpy as np

    atomic_write(Path(run_dir) / PREDICTIONS, lambda f: np.savez(f, **arrays))


def read_predictions(run_dir: str | Path, keys=None) -> dict:
    """The arrays of ``predictions.npz`` (all, or ``keys``; a missing key is one line)."""
    import numpy as np

    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise UserError(f"{path} not found", fix="train the run first (it writes predictions.npz)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in (keys or ()) if k not in f.files]
            if missing:
                raise UserError(f"{path} lacks {', '.join(missing)}", fix=REEVALUATE.format(run=run_dir))
            return {k: f[k] for k in (keys or f.files)}
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__})", fix=REEVALUATE.format(run=run_dir)) from None


def write_description(run_dir: str | Path, spec: dict, arrays: dict) -> None:
    """``model.json`` and ``model.npz``: the model kind, inputs, classes and feature settings."""
    import numpy as np

    spec = {"format": DESCRIPTION_FORMAT, **spec}
    atomic_write(Path(run_dir) / DESCRIPTION_ARRAYS, lambda f: np.savez(f, **arrays))
    spec["arrays_sha256"] = file_sha256(Path(run_dir) / DESCRIPTION_ARRAYS)
    atomic_write_json(Path(run_dir) / DESCRIPTION, spec)


def read_description(run_dir: str | Path) -> tuple[dict, dict]:
    """(spec, arrays) of a finished run's ``model.json`` / ``model.npz``.

    Raises:
        UserError: a run of an older lvmlt (no description yet), or a damaged one.
    """
    import numpy as np

    run_dir = Path(run_dir)
    path = run_dir / DESCRIPTION
    if not path.is_file():
        if is_run_dir(run_dir):
            raise UserError(
                f"run {run_dir} does not describe its model and inputs yet (no {DESCRIPTION}; "
                "made by an older lvmlt, or not finished)",
                fix=REEVALUATE.format(run=run_dir),
            )
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG})", fix="pass the directory `lvmlt train` made")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({type(e).__name__})", fix=REEVALUATE.format(run=run_dir)) from None
    arrays_path = run_dir / DESCRIPTION_ARRAYS
    if not arrays_path.is_file() or file_sha256(arrays_path) != spec.get("arrays_sha256"):
        raise UserError(f"{arrays_path} is missing or damaged (sha256 differs)", fix=REEVALUATE.format(run=run_dir))
    with np.load(arrays_path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return spec, arrays
