"""The one way lvmlt writes a file durably, and the one line an operating-system fault becomes.

Every write goes through :func:`atomic_write` (or :func:`writing`): an operating-system
fault (no space, read-only, too large, no permission) is one :class:`WriteError` line
naming the file and the errno's words, and the file's previous version stays. Run
directories, feature stores, reports and bundles are written through it.

This module imports nothing of lvmlt but the errors.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from lvmlt.errors import UserError

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
