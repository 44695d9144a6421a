"""Checkpoints: tensors and plain Python values only, with a content hash.

Checkpoints are read with ``torch.load(weights_only=True)``: a file from someone else is
read as data, never run as code. Each checkpoint carries the sha256 of its contents, so a
damaged file is reported instead of loading wrong numbers. torch is imported only when a
checkpoint is written or read.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from lvmlt.errors import UserError
from lvmlt.rundir.durable import atomic_write

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
