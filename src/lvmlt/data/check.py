"""``lvmlt check DATA|CONFIG``: every problem of a data set in one report, before anything trains.

Every image of every split is read once (decoded, as training would), and the report lists:

- unreadable images (missing, damaged, not an image), with the reason;
- duplicates: the same file reached twice (a symlink, a path spelled twice) and images whose
  decoded pixels are identical (byte copies, the same picture saved twice), within a split
  and across splits (an image in train and test inflates the test score);
- tiny images (a side under :data:`TINY_SIDE` pixels) and oddly shaped ones (one side more
  than :data:`ODD_ASPECT` times the other: resizing to a square distorts them);
- classes whose validation images are too few for the selection metric (mean class accuracy
  moves by 100 / (classes x images) points per image of such a class).

Training stops at the first unreadable image (unless ``data.skip_bad_images``); this reads
them all and names each.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvmlt.errors import BadImageError

TINY_SIDE = 8
ODD_ASPECT = 4.0
#: Fewer validation images than this in a class: its accuracy moves in steps too coarse to select on.
MIN_VAL_IMAGES = 3


@dataclass
class DataReport:
    """What :func:`check_data` found; :meth:`lines` formats it."""

    images: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (split/id, reason)
    same_file: list[list[str]] = field(default_factory=list)
    same_pixels: list[list[str]] = field(default_factory=list)
    tiny: list[tuple[str, tuple[int, int]]] = field(default_factory=list)
    odd: list[tuple[str, tuple[int, int]]] = field(default_factory=list)
    thin_val: list[tuple[str, int]] = field(default_factory=list)  # (class, validation images)

    @property
    def problems(self) -> int:
        return sum(len(x) for x in (self.unreadable, self.same_file, self.same_pixels, self.tiny, self.odd,
                                    self.thin_val))

    def lines(self, shown: int = 20) -> list[str]:
        out = [f"checked {self.images} images: "
               + ("no problem found" if not self.problems else f"{self.problems} problems")]

        def section(title, rows, fmt):
            if rows:
                out.append(f"{title} ({len(rows)}):")
                out.extend("  " + fmt(r) for r in rows[:shown])
                if len(rows) > shown:
                    out.append(f"  ... and {len(rows) - shown} more")

        section("unreadable images", self.unreadable, lambda r: f"{r[0]}: {r[1]}")
        section("the same file reached twice", self.same_file, lambda r: " = ".join(r))
        section("identical images", self.same_pixels, lambda r: " = ".join(r))
        section(f"tiny images (a side under {TINY_SIDE} px)", self.tiny, lambda r: f"{r[0]}: {r[1][0]} x {r[1][1]}")
        section(f"oddly shaped images (one side over {ODD_ASPECT:g}x the other)", self.odd,
                lambda r: f"{r[0]}: {r[1][0]} x {r[1][1]}")
        section(f"classes with fewer than {MIN_VAL_IMAGES} validation images (the selection metric moves in "
                "coarse steps)", self.thin_val, lambda r: f"{r[0]}: {r[1]}")
        return out


def _file_of(split, i: int) -> str | None:
    """The real path of item ``i`` where the split reads files (None for array data sets)."""
    try:
        return os.path.realpath(split.load.path(i))
    except (AttributeError, OSError, TypeError, IndexError):
        return None


def check_data(bundle, progress=None) -> DataReport:
    """Read every image of ``bundle`` once and collect every problem (see the module docstring)."""
    report = DataReport()
    by_file: dict[str, list[str]] = {}
    by_pixels: dict[str, list[str]] = {}
    for name, split in bundle.splits().items():
        for i, sid in enumerate(split.ids):
            key = f"{name}/{sid}"
            report.images += 1
            if progress is not None:
                progress(report.images)
            real = _file_of(split, i)
            if real is not None:
                by_file.setdefault(real, []).append(key)
            try:
                img = split.load(i)
                img.load()
            except BadImageError as e:
                report.unreadable.append((key, str(e).split(" (")[0]))
                continue
            except (OSError, ValueError, SyntaxError) as e:  # PIL's ways of saying "not an image"
                report.unreadable.append((key, f"{type(e).__name__}: {e}"))
                continue
            w, h = img.size
            if min(w, h) < TINY_SIDE:
                report.tiny.append((key, (w, h)))
            elif max(w, h) > ODD_ASPECT * min(w, h):
                report.odd.append((key, (w, h)))
            digest = hashlib.sha256(f"{img.mode}{img.size}".encode() + img.tobytes()).hexdigest()
            by_pixels.setdefault(digest, []).append(key)
    report.same_file = [keys for keys in by_file.values() if len(keys) > 1]
    same_file = {k for keys in report.same_file for k in keys}
    report.same_pixels = [keys for keys in by_pixels.values() if len(keys) > 1 and not set(keys) <= same_file]
    counts = np.bincount(np.asarray(bundle.val.labels)[np.asarray(bundle.val.labels) >= 0],
                         minlength=bundle.num_classes)
    report.thin_val = [(bundle.class_names[k], int(n)) for k, n in enumerate(counts) if n < MIN_VAL_IMAGES]
    return report


def check_target(target: str, overrides: list[str]):
    """The data bundle ``lvmlt check`` reads: a config file's data section, or an image folder
    (``train/``, optional ``val/`` and ``test/`` of class folders)."""
    from lvmlt.config import load_config
    from lvmlt.data import build_data

    path = Path(target)
    if path.is_dir():
        cfg = load_config(None, ["data.name=imagefolder", f"data.root={path}", *overrides])
    else:
        cfg = load_config(str(path), list(overrides))
    return build_data(cfg.data)
