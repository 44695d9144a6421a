"""Output rows of ``lvmlt predict``: probabilities, groups and top-k, as CSV, JSONL or a table.

Imports neither torch nor anything of lvmlt that does.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from lvmlt import locks
from lvmlt.errors import UserError
from lvmlt.rundir import tmp_name


def softmax(logits: np.ndarray) -> np.ndarray:
    from lvmlt.calibration.label_shift import log_softmax

    return np.exp(log_softmax(logits))


def class_groups(spec: dict) -> list[str]:
    """many / medium / few of every class, by its training count and the run's thresholds."""
    from lvmlt.config import class_group

    many, few = spec["thresholds"]["many"], spec["thresholds"]["few"]
    return [class_group(n, many, few) for n in spec["train_counts"]]


def printable(name: str) -> str:
    """A path for a terminal: bytes that are not UTF-8 (surrogate escapes) shown as U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest probabilities of each row, largest first (ties: lower index)."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


class Writer:
    """Rows to ``out`` (.csv or .jsonl, written to a temporary name and renamed at the end) or,
    without ``out``, a table on stdout (``show``) or nowhere."""

    def __init__(self, out: str | None, classes: list[str], groups: list[str], k: int, adapted: bool,
                 show: bool = True):
        self.classes, self.groups, self.k, self.adapted = classes, groups, k, adapted
        self.out = Path(out) if out else None
        self.rows = 0
        if self.out is None:
            self.f, self.kind = None, "table" if show else "none"
            return
        self.kind = "jsonl" if self.out.suffix == ".jsonl" else "csv"
        if self.out.suffix not in (".csv", ".jsonl"):
            raise UserError(f"--out {out}: the file must end in .csv or .jsonl")
        self.tmp = tmp_name(self.out)
        self.lock = None
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.lock = locks.hold_file(self.out, "--out")  # a second predict to the same file stops at once
            # surrogateescape: a file name that is not UTF-8 is written back as its own bytes
            self.f = open(self.tmp, "w", newline="", encoding="utf-8", errors="surrogateescape")
        except OSError as e:
            if self.lock is not None:
                self.lock.release()
            raise UserError(f"cannot write {self.out} ({e.strerror})", fix="choose a writable --out") from None
        try:
            if self.kind == "csv":
                self.csv = csv.writer(self.f)
                head = ["path", "status", "class", "probability", "group", "top_k"]
                if adapted:
                    head += ["adapted_class", "adapted_probability", "adapted_group", "adapted_top_k"]
                self.csv.writerow(head)
        except BaseException:  # interrupted while starting: the caller has no writer to abort
            self.abort()
            raise

    def _cells(self, p: np.ndarray) -> tuple[str, float, str, list]:
        idx = top_k(p[None], self.k)[0]
        top = [(self.classes[i], float(p[i])) for i in idx]
        return self.classes[idx[0]], float(p[idx[0]]), self.groups[idx[0]], top

    def write(self, name: str, error: str | None, raw: np.ndarray | None, adapted: np.ndarray | None = None) -> None:
        self.rows += 1
        if self.kind == "none":
            return
        cells = [] if raw is None else [self._cells(raw)] + ([self._cells(adapted)] if adapted is not None else [])
        if self.kind == "table":
            name = printable(name)
            if error:
                print(f"{name}\terror: {error}")
            else:
                # the top-k of each (raw, adapted), the first with its group
                text = "\t".join(f"{c} {p:.4f} ({g})" + "".join(f", {n} {q:.4f}" for n, q in top[1:])
                                 for c, p, g, top in cells)
                print(f"{name}\t{text}")
            return
        if self.kind == "jsonl":
            rec = {"path": name, "status": "ok" if error is None else f"error: {error}"}
            for prefix, (c, p, g, top) in zip(("", "adapted_"), cells, strict=False):
                rec |= {f"{prefix}class": c, f"{prefix}probability": p, f"{prefix}group": g,
                        f"{prefix}top_k": [{"class": n, "probability": q} for n, q in top]}
            self.f.write(json.dumps(rec) + "\n")
            return
        row = [name, "ok" if error is None else f"error: {error}"]
        for c, p, g, top in cells:
            row += [c, f"{p:.6f}", g, ";".join(f"{n}={q:.6f}" for n, q in top)]
        self.csv.writerow(row)

    def close(self) -> None:
        if self.f is None:
            return
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            os.replace(self.tmp, self.out)
        except OSError as e:
            raise UserError(f"cannot write {self.out} ({e.strerror})", fix="free space, or choose another --out") from None
        finally:
            self.lock.release()

    def abort(self) -> None:
        if self.f is not None:
            self.f.close()
            self.tmp.unlink(missing_ok=True)
        if getattr(self, "lock", None) is not None:
            self.lock.release()
