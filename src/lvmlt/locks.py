"""One writer per directory: an operating-system lock that dies with its process.

A command that writes a run directory (``lvmlt train``, ``evaluate``) or a feature store
(``lvmlt extract``) first takes :func:`hold` on it: an exclusive ``flock`` on the file
``.lock`` inside the directory, which records who holds it (pid and command line). A
second writer stops at once with one line naming the first process and the directory.
The kernel releases the lock when its process ends in any way, ``kill -9`` included, so a
lock is never stale: a ``.lock`` file left behind is just a file. Readers (``report``,
``predict``) take no lock and never wait.

:func:`wait` is the blocking kind, for shared caches where the second process should wait
for the first one's result instead of stopping (the engine cache of the extraction).

This module imports nothing of lvmlt but the errors and the run-directory writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

from lvmlt.errors import UserError

LOCK_FILE = ".lock"


def primary_process() -> bool:
    """True unless this is a ``torchrun`` rank other than 0 (read from RANK, so it holds
    before the process group is joined): only rank 0 writes, so only rank 0 locks."""
    return int(os.environ.get("RANK", "0") or 0) == 0


class Lock:
    """A held lock; :meth:`release` it (or use it as a context manager)."""

    def __init__(self, path: Path, fd: int, created_dir: Path | None = None):
        self.path, self.fd, self.created_dir = path, fd, created_dir
        self.owner = os.getpid()

    def release(self, tidy: bool = False) -> None:
        """Release the lock. With ``tidy``, a directory this lock created and that holds
        nothing but the lock file is removed again (a writer that failed before writing)."""
        if self.fd is None:
            return
        if tidy and self.created_dir is not None:
            try:
                if [p.name for p in self.created_dir.iterdir()] == [self.path.name]:
                    self.path.unlink()
                    self.created_dir.rmdir()
            except OSError:
                pass  # tidying is a courtesy: never hide the error being raised
        if os.getpid() == self.owner:
            # explicitly: a forked child (a DataLoader worker) shares the descriptor, and
            # closing ours alone would leave the lock held until the child ends
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # a holder dropped without release: closing releases it once no
        if getattr(self, "fd", None) is not None:  # forked child shares the descriptor
            os.close(self.fd)


def holder(path: str | Path) -> str:
    """Who holds (or last held) the lock file ``path``: "pid N (command line)"."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
        return f"pid {int(info['pid'])} ({info.get('command', '?')})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its pid yet)"


def _open_locked(path: Path, blocking: bool) -> int | None:
    """A descriptor of ``path`` holding its exclusive flock (None when held elsewhere and
    not ``blocking``). The file is the one at ``path`` when this returns: a file removed or
    replaced between the open and the lock is opened again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _command_line(limit: int = 160) -> str:
    """This process's command line as a user typed it (``lvmlt train ...``), shortened."""
    argv = list(sys.argv) or [sys.executable]
    if argv[0].endswith(("lvmlt/__main__.py", "/lvmlt")):
        argv[0] = "lvmlt"
    text = " ".join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _record_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "command": _command_line(), "since": time.time()}
    data = (json.dumps(info) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def hold(directory: str | Path, what: str = "run directory") -> Lock:
    """Take the one-writer lock of ``directory`` (created when missing), or stop at once.

    Raises:
        UserError: another process holds it (named by pid and command line), or the
            directory cannot be written (a :class:`~lvmlt.rundir.WriteError`).
    """
    from lvmlt import rundir

    directory = Path(directory)
    path = directory / LOCK_FILE
    with rundir.writing(directory):
        created = None if directory.is_dir() else directory
        directory.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(path, blocking=False)
        if fd is None:
            raise UserError(
                f"{what} {directory} is being written by {holder(path)}",
                fix="wait for it to finish, or write elsewhere (another run_name / --out)",
            )
        try:
            _record_holder(fd)
        except BaseException:
            os.close(fd)
            raise
    return Lock(path, fd, created)


def hold_file(path: str | Path, what: str = "output file") -> Lock:
    """One writer of the file ``path`` (``lvmlt predict --out``): an exclusive lock on
    ``.NAME.lock`` beside it, or one line naming the process that holds it. Release it with
    :meth:`Lock.release`; the lock file is removed then (it is only for the write)."""
    path = Path(path)
    lock_path = path.with_name(f".{path.name}.lock")
    fd = _open_locked(lock_path, blocking=False)
    if fd is None:
        raise UserError(f"{what} {path} is being written by {holder(lock_path)}",
                        fix="wait for it to finish, or write to another file")
    _record_holder(fd)
    return _FileLock(lock_path, fd)


class _FileLock(Lock):
    def release(self, tidy: bool = False) -> None:
        if self.fd is not None:
            try:
                self.path.unlink()  # while held: a waiting writer then opens a new file (_open_locked)
            except OSError:
                pass
        super().release()


def wait(path: str | Path, log=None, what: str | None = None) -> Lock:
    """Take the exclusive lock file ``path``, waiting for its holder (one line to ``log``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(path, blocking=False)
    if fd is None:
        if log is not None:
            log(f"waiting for {holder(path)} to finish {what or path}")
        fd = _open_locked(path, blocking=True)
    try:
        _record_holder(fd)
    except BaseException:
        os.close(fd)
        raise
    return Lock(path, fd)
