"""Pickled data files read as data, never as code.

A pickle is a small program: its GLOBAL / STACK_GLOBAL instructions import any callable
and REDUCE calls it, so ``pickle.load`` of a crafted file runs whatever the file asks for.
Some datasets come as pickles all the same (the CIFAR "python version", ``mnist.pkl.gz``);
:func:`load` reads them with an unpickler that admits only numpy's array reconstruction,
and :func:`pickle_globals` lists what a pickle would import without running any of it
(for saying *why* a checkpoint was refused).

This module sits at the bottom of the package: it imports nothing of lvmlt but the errors.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import io
import os
import pickle
import pickletools
import zipfile
from typing import IO

from lvmlt.errors import UserError

# The only globals a data pickle may name: numpy arrays (pickle protocol 5 rebuilds them with
# _frombuffer), their dtypes and numpy scalars, none of which calls anything else, and the
# _codecs.encode(text, "latin1") of Python 3's bytes in protocols 0-2 (see _latin1_bytes).
# Plain containers, strings, numbers and bytes otherwise need no global at all.
_NUMPY_CORES = ("numpy.core", "numpy._core")  # numpy >= 2 pickles under numpy._core
DATA_GLOBALS = frozenset(
    [("numpy", "ndarray"), ("numpy", "dtype")]
    + [(f"{core}.multiarray", "_reconstruct") for core in _NUMPY_CORES]
    + [(f"{core}.multiarray", "scalar") for core in _NUMPY_CORES]
    + [(f"{core}.numeric", "_frombuffer") for core in _NUMPY_CORES]
    + [("_codecs", "encode")]
)


def _latin1_bytes(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as far as pickled bytes need it: latin-1 text to bytes, no other codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):  # what pickle writes
        raise pickle.UnpicklingError(f"_codecs.encode to {encoding!r} is not pickled bytes")
    return text.encode("latin-1", errors)


def _qualname(module: str, name: str) -> str:
    """``module.name`` as Python 3 imports it (``__builtin__.getattr`` is ``builtins.getattr``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


class DataUnpickler(pickle.Unpickler):
    """An unpickler that admits only :data:`DATA_GLOBALS`; any other global is a :class:`UserError`.

    Args:
        file: a binary file object.
        label: how messages name the file (e.g. "CIFAR file /data/cifar-10-batches-py/test_batch").
        fix: the ``fix=`` of the error for a refused global.
        encoding: as for :func:`pickle.load` ("bytes" or "latin1" for Python 2 pickles).
    """

    def __init__(self, file: IO[bytes], label: str, fix: str, encoding: str = "ASCII"):
        super().__init__(file, encoding=encoding)
        self.label, self.fix = label, fix

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) in DATA_GLOBALS:
            return super().find_class(module, name)
        raise UserError(
            f"{self.label} holds a pickled Python object ({_qualname(module, name)}); "
            "lvmlt reads data files as data only",
            fix=self.fix,
        )


def load(file: IO[bytes], label: str, fix: str, encoding: str = "ASCII"):
    """Unpickle one object from ``file`` with a :class:`DataUnpickler` (arguments as there)."""
    return DataUnpickler(file, label, fix, encoding=encoding).load()


_STRINGS = {
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MARK = object()  # a MARK on the simulated stack


def pickle_globals(path_or_fileobj: str | os.PathLike | IO[bytes] | bytes) -> list[str]:
    """The globals (``module.name``) one pickle stream would import, in order; nothing is run.

    The opcodes are only parsed (:func:`pickletools.genops`) while a stack of the strings
    they push is kept, so a STACK_GLOBAL's module and name are recovered from the string,
    memo (``BINGET``...) and ``DUP`` pushes before it; a part built some other way shows as
    ``?``. Extension codes (``EXT1``...) are named from :mod:`copyreg`'s registry, and
    Python 2 names as Python 3 imports them (``__builtin__.getattr`` is ``builtins.getattr``).

    Raises:
        ValueError: the stream is not a well-formed pickle (truncated, unknown opcode).
    """
    if isinstance(path_or_fileobj, bytes):
        path_or_fileobj = io.BytesIO(path_or_fileobj)
    if isinstance(path_or_fileobj, str | os.PathLike):
        with open(path_or_fileobj, "rb") as f:
            return pickle_globals(f)
    found: list[str] = []
    stack: list = []  # str for a pushed string, _MARK, None for anything else
    memo: dict = {}
    for op, arg, _ in pickletools.genops(path_or_fileobj):
        kind = op.name
        if kind in ("GLOBAL", "INST"):
            found.append(_qualname(*arg.split(" ", 1)))
        elif kind == "STACK_GLOBAL":
            module, name = stack[-2:] if len(stack) >= 2 else (None, None)
            found.append(".".join(v if isinstance(v, str) else "?" for v in (module, name)))
        elif kind in ("EXT1", "EXT2", "EXT4"):
            key = copyreg._inverted_registry.get(arg)
            found.append(".".join(key) if key else f"?.extension code {arg}")
        if kind in _PUTS or kind == "MEMOIZE":
            top = stack[-1] if stack else None
            memo[arg if kind in _PUTS else len(memo)] = top if isinstance(top, str) else None
        elif kind in _STRINGS:
            stack.append(arg)
        elif kind in _GETS:
            stack.append(memo.get(arg))
        elif kind == "DUP":
            stack.append(stack[-1] if stack else None)
        else:
            before, after = op.stack_before, op.stack_after
            if pickletools.markobject in before:  # pops to the last MARK, then what lies below it
                while stack and stack.pop() is not _MARK:
                    pass
                before = before[: before.index(pickletools.markobject)]
            del stack[max(0, len(stack) - len(before)) :]
            stack.extend(_MARK if s is pickletools.markobject else None for s in after)
    return found


def checkpoint_globals(path: str | os.PathLike) -> list[str]:
    """The globals a torch checkpoint (a zip holding ``<archive>/data.pkl``) would import.

    Every member of the zip is checked against its CRC first, so an answer means the file is
    intact as a zip.

    Raises:
        zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError: the file is not a
            readable torch zip checkpoint (not a zip, truncated, a member fails its CRC).
    """
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
        if bad is not None:
            raise zipfile.BadZipFile(f"member {bad} fails its CRC")
        names = [n for n in z.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(names) != 1:
            raise KeyError("data.pkl")
        return pickle_globals(z.read(names[0]))


def torch_admitted_globals(extra: list) -> frozenset[str]:
    """The ``module.name`` of every global ``torch.load(weights_only=True)`` admits, plus ``extra``.

    torch keeps its list in a private function; should that move, the globals of plain
    tensors, parameters, storages, dtypes and devices are named here instead.
    """
    import torch

    names = {f"{g.__module__}.{g.__name__}" for g in extra}
    for g in torch.serialization.get_safe_globals():  # an object, or (object, "module.name")
        names.add(g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__name__}")
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
    except ImportError:
        plain = {"collections.OrderedDict", "torch.Size", "torch.device", "torch.nn.parameter.Parameter"}
        plain |= {
            f"torch._utils.{f}" for f in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter")
        }
        for n, v in vars(torch).items():
            if isinstance(v, torch.dtype) or (n.endswith("Storage") and isinstance(v, type)):
                plain.add(str(v) if isinstance(v, torch.dtype) else f"torch.{n}")
        return frozenset(names | plain)
    return frozenset(names | set(_get_allowed_globals()))
