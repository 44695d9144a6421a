"""File-backed splits: the ImageNet-LT / Places-LT / iNaturalist split-file format and
ImageFolder trees.

A split file has one image per line, ``<path relative to a root> <integer label>``::

    # comments and blank lines are skipped
    train/n01440764/n01440764_762.JPEG 0
    train/my photos/cat 1.png 3

The label is the *last* whitespace-separated token, so paths may contain spaces (but not
leading or trailing whitespace, which is stripped). Every mistake in a split file is a
one-line :class:`~lvmlt.errors.UserError` naming ``file:line`` and the fix.

Images are opened lazily: a missing or undecodable file raises
:class:`~lvmlt.errors.BadImageError` when it is loaded, naming the image, the split-file
line it came from and the fix, so one bad file among 100k is found without a traceback.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lvmlt.config import DataConfig
from lvmlt.data.base import DataBundle, ImageSplit
from lvmlt.data.datasets import DataNotFoundError, register_dataset
from lvmlt.errors import BadImageError, UserError
from lvmlt.inputs import IMAGE_EXTENSIONS, open_image

_FORMAT_FIX = "write one '<relative/path> <integer label>' per line ('#' starts a comment)"
# ASCII digits only: int() would also accept "1_000" or Arabic-Indic digits, which in a
# split file are far more likely a mistake than intended.
_INT = re.compile(r"[+-]?[0-9]+")


def _read_lines(path: Path) -> list[str]:
    """The file's lines, decoded as UTF-8 one at a time so a bad byte names its line."""
    if not path.is_file():
        raise UserError("split file not found", where=str(path), fix="check the data.*_split path")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read split file ({e.strerror})", where=str(path)) from None
    lines = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            # utf-8-sig drops a byte-order mark, which editors on Windows like to add.
            lines.append(raw.decode("utf-8-sig" if n == 1 else "utf-8"))
        except UnicodeDecodeError:
            raise UserError(
                "line is not UTF-8 text", where=f"{path}:{n}", fix="save the split file as UTF-8"
            ) from None
    return lines


def _parse(path: str | os.PathLike, num_classes: int | None) -> list[tuple[str, int, int]]:
    """Like :func:`parse_split_file` but keeps each entry's line number: (path, label, line)."""
    path = Path(path)
    entries = []
    for n, line in enumerate(_read_lines(path), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path}:{n}"
        parts = text.rsplit(None, 1)
        if len(parts) != 2:
            raise UserError(f"line {text[:60]!r} does not parse", where=where, fix=_FORMAT_FIX)
        rel, tok = parts[0].strip(), parts[1]
        if "\x00" in rel:
            raise UserError("image path contains a NUL character", where=where, fix=_FORMAT_FIX)
        if not _INT.fullmatch(tok):
            raise UserError(
                f"label {tok[:30]!r} is not an integer",
                where=where,
                fix="the last token of each line must be the class index 0..C-1",
            )
        label = int(tok)
        if label < 0:
            raise UserError(f"label {label} is negative", where=where, fix="class indices must be 0..C-1")
        if num_classes is not None and label >= num_classes:
            raise UserError(
                f"label {label} is out of range for {num_classes} classes",
                where=where,
                fix=f"class indices must be 0..{num_classes - 1}, the classes of the training split",
            )
        entries.append((rel, label, n))
    if not entries:
        raise UserError("split file lists no images", where=str(path), fix=_FORMAT_FIX)
    return entries


def parse_split_file(path: str | os.PathLike, num_classes: int | None = None) -> list[tuple[str, int]]:
    """Read a split file into ``(relative_path, label)`` pairs, in file order.

    Args:
        path: the split file (UTF-8 text).
        num_classes: when given, a label >= num_classes is an error.

    Returns:
        One ``(relative_path, label)`` per non-blank, non-comment line.

    Raises:
        UserError: naming ``file:line`` for a line that does not parse, a non-integer,
            negative or out-of-range label, or a file with no images at all.
    """
    return [(rel, label) for rel, label, _ in _parse(path, num_classes)]


class FileLoader:
    """``load(i) -> PIL image`` for files under a root (picklable for worker processes): decoded
    fully, EXIF orientation applied, its mode kept (:func:`lvmlt.inputs.open_image`).

    Args:
        root: the folder the relative paths are resolved against.
        relpaths: one relative path per sample.
        origins: per sample, where the path came from, for error messages
            (e.g. "line 12 of train.txt").
    """

    def __init__(self, root: str | os.PathLike, relpaths: Sequence[str], origins: Sequence[str]):
        self.root = Path(root)
        self.relpaths = list(relpaths)
        self.origins = list(origins)

    def path(self, i: int) -> Path:
        return self.root / self.relpaths[i]

    def __call__(self, i: int) -> Image.Image:
        p = self.path(i)
        where = f"{p} ({self.origins[i]})"
        if not p.is_file():
            what, fix = _not_a_file(p)
            raise BadImageError(what, where=where, fix=f"{fix}, or set data.skip_bad_images=true")
        try:
            # decoded fully (a truncated file fails here), EXIF orientation applied, the mode
            # kept: 16-bit and float images are scaled to 8 bits by the transform, not clipped
            return open_image(p)
        except Exception as e:
            # Broad on purpose: PIL's format plugins raise OSError, SyntaxError, ValueError,
            # struct.error, IndexError... on corrupt files, and any of them means "bad image".
            raise BadImageError(
                f"cannot decode image ({type(e).__name__})",
                where=where,
                fix="replace or remove the file, or set data.skip_bad_images=true",
            ) from None

    def size(self, i: int) -> int:
        """Bytes on disk, -1 when missing (fingerprints must not fail on a missing file)."""
        try:
            return os.stat(self.path(i)).st_size
        except (OSError, ValueError):
            return -1


def _not_a_file(p: Path) -> tuple[str, str]:
    """(what, fix) for an image path that is not a regular file: missing, a folder, a link loop."""
    try:
        mode = os.stat(p).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "image path is a symbolic link loop", "point the link at an image file"
        if os.path.islink(p):
            return f"image file not found (a symbolic link to {os.readlink(p)})", "restore the link's target"
        return "image file not found", "check data.root and the path"
    if stat.S_ISDIR(mode):
        return "image path is a directory, not an image file", "list image files, not folders"
    return "image path is not a regular file", "list image files only"


def split_from_file(
    root: str | os.PathLike,
    split_file: str | os.PathLike,
    name: str,
    num_classes: int | None = None,
) -> ImageSplit:
    """An :class:`ImageSplit` over the images a split file lists.

    Args:
        root: folder the split file's relative paths are resolved against.
        split_file: the split file (see :func:`parse_split_file`).
        name: "train", "val" or "test".
        num_classes: when given, labels must be below it.

    Returns:
        A split whose ids are the relative paths, sizes the file sizes (-1 if missing) and
        ``load(i)`` an RGB PIL image.
    """
    entries = _parse(split_file, num_classes)
    rels = [rel for rel, _, _ in entries]
    seen: dict[str, int] = {}
    for rel, _, n in entries:
        if rel in seen:
            # ids key the feature store, so a duplicate would silently share one feature row.
            raise UserError(
                f"image {rel!r} is listed twice (first on line {seen[rel]})",
                where=f"{split_file}:{n}",
                fix="list each image once",
            )
        seen[rel] = n
    loader = FileLoader(root, rels, [f"line {n} of {split_file}" for _, _, n in entries])
    labels = np.array([label for _, label, _ in entries], dtype=np.int64)
    sizes = [loader.size(i) for i in range(len(rels))]
    return ImageSplit(name, rels, labels, loader, sizes)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _enter_once(path: Path, walked: dict[str, Path]) -> bool:
    """Whether a folder walk enters ``path``: not when its real folder is walked already (a
    key of ``walked``, which maps real folders to the path that walks them); one warning."""
    real = os.path.realpath(path)
    first = walked.setdefault(real, path)
    if first == path:
        return True
    if not path.is_symlink():
        how = f"is the same folder as {first}, walked already (through a symbolic link)"
    elif (os.path.realpath(path.parent) + os.sep).startswith(real + os.sep):
        how = f"is a symbolic link loop (to {first})"
    else:
        how = f"is a symbolic link to {first}, which is walked already"
    warnings.warn(f"image folder {path} {how}; skipped, so each image is listed once", stacklevel=3)
    return False


def split_from_image_folder(
    folder: str | os.PathLike,
    name: str,
    class_names: Sequence[str] | None = None,
    id_root: str | os.PathLike | None = None,
) -> tuple[ImageSplit, list[str]]:
    """An :class:`ImageSplit` over an ImageFolder tree ``folder/<class_name>/.../<image>``.

    Class folders are sorted by name; images are found recursively inside each and kept
    when their extension is one of :data:`IMAGE_EXTENSIONS` (case-insensitive).

    Args:
        folder: the tree's top folder.
        name: "train", "val" or "test".
        class_names: the classes (from the training tree) for val/test trees; a class
            folder not among them is an error. None: this tree defines the classes, and
            a class folder with no images still counts as a class.
        id_root: ids are paths relative to this folder (default: ``folder``), so that ids
            stay unique across train/val/test trees under one root.

    Returns:
        ``(split, class_names)``.
    """
    folder = Path(folder)
    id_root = Path(id_root) if id_root is not None else folder
    if not folder.is_dir():
        raise UserError("image folder not found", where=str(folder), fix="check data.root")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_names is None:
        class_names = found
        if not class_names:
            raise UserError(
                "image folder has no class folders",
                where=str(folder),
                fix="lay images out as <folder>/<class_name>/<image>",
            )
    else:
        class_names = list(class_names)
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise UserError(
                f"class folder {unknown[0]!r} is not a class of the training folder",
                where=str(folder / unknown[0]),
                fix="use the same class folder names as the train/ folder",
            )
    index = {c: k for k, c in enumerate(class_names)}
    # Symbolic links are followed, each real folder entered once: a link back up the tree
    # (``ln -s .. train/3/loop``) or to a class folder would list images again, or forever.
    walked: dict[str, Path] = {}
    for p in [folder, *(folder / c for c in found)]:
        walked.setdefault(os.path.realpath(p), p)
    ids, labels = [], []
    for c in found:
        for dirpath, dirnames, filenames in os.walk(folder / c, followlinks=True):
            dirnames.sort()  # os.walk order is filesystem order: sort for stable ids
            skipped = set()
            # real folders claim their place before links to them (one level at a time)
            for d in sorted(dirnames, key=lambda d: os.path.islink(os.path.join(dirpath, d))):
                if not _enter_once(Path(dirpath) / d, walked):
                    skipped.add(d)
            dirnames[:] = [d for d in dirnames if d not in skipped]
            for f in sorted(filenames):
                if _is_image(f):
                    ids.append((Path(dirpath) / f).relative_to(id_root).as_posix())
                    labels.append(index[c])
    if not ids:
        raise UserError(
            "image folder holds no images",
            where=str(folder),
            fix=f"images need one of the extensions {', '.join(IMAGE_EXTENSIONS)}",
        )
    loader = FileLoader(id_root, ids, [f"image folder {folder}"] * len(ids))
    sizes = [loader.size(i) for i in range(len(ids))]
    return ImageSplit(name, ids, np.array(labels, dtype=np.int64), loader, sizes), list(class_names)


# ----------------------------------------------------------------------------- the splitfile and imagefolder datasets


def _need_root(cfg: DataConfig, what: str) -> Path:
    if cfg.root is None:
        raise DataNotFoundError(
            f"data.name={cfg.name} needs data.root", fix=f"set data.root to {what}", short="needs data.root"
        )
    root = Path(cfg.root)
    if not root.is_dir():
        raise UserError("data.root folder not found", where=str(root), fix=f"set data.root to {what}")
    return root


def _split_path(path: str | None, root: Path, key: str) -> Path:
    if path is None:
        raise DataNotFoundError(
            f"data.{key} is not set",
            fix=f"set data.{key} to a split file for data.name=splitfile",
            short="needs data.root and split files",
        )
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    # A relative path may be given from the working directory or from data.root.
    return root / p if (root / p).is_file() else p


def _warn_lone_classes(train: ImageSplit, others: list[ImageSplit]) -> None:
    """Warn, one line each, about a class with one training image that no other split has."""
    counts = np.bincount(train.labels)
    elsewhere = set(np.concatenate([s.labels for s in others]).tolist())
    for k in np.flatnonzero(counts == 1):
        if int(k) not in elsewhere:
            i = int(np.flatnonzero(train.labels == k)[0])
            warnings.warn(
                f"label {k} ({train.load.origins[i]}) is the only training image of its class and is in "
                "neither the validation nor the test split (a mistyped label?); "
                "set data.num_classes to make a label outside 0..C-1 an error",
                stacklevel=4,
            )


@register_dataset("splitfile", None, uses_root=True)
def build_splitfile(cfg: DataConfig) -> DataBundle:
    """Images under data.root listed by split files (ImageNet-LT / Places-LT / iNat format).

    The classes are 0..C-1 with C = ``data.num_classes``, or else the largest training
    label + 1; labels beyond it are reported on their line, and a gap is reported by
    :func:`build_data`. Without ``data.num_classes`` a class with one training image that
    neither the validation nor the test split has (a mistyped label, most likely) is
    warned about.
    """
    root = _need_root(cfg, "the folder the split files' paths are relative to")
    train_file = _split_path(cfg.train_split, root, "train_split")
    test_file = _split_path(cfg.test_split, root, "test_split")
    train = split_from_file(root, train_file, "train", num_classes=cfg.num_classes)
    c = cfg.num_classes if cfg.num_classes is not None else int(train.labels.max()) + 1
    val = None
    if cfg.val_split is not None:
        val = split_from_file(root, _split_path(cfg.val_split, root, "val_split"), "val", num_classes=c)
    test = split_from_file(root, test_file, "test", num_classes=c)
    if cfg.num_classes is None:
        _warn_lone_classes(train, [s for s in (val, test) if s is not None])
    names = _class_names(cfg.class_names, root, c)
    return DataBundle("splitfile", train, val, test, names, {"train_source": str(train_file)})


def _class_names(path: str | None, root: Path, c: int) -> list[str]:
    """The names of classes 0..c-1: one per line of ``data.class_names`` (a text file, its
    path relative to data.root or absolute), else ``class_0``, ``class_1``, ..."""
    if path is None:
        return [f"class_{k}" for k in range(c)]
    file = _split_path(path, root, "class_names")
    names = [line.strip() for line in _read_lines(file) if line.strip() and not line.strip().startswith("#")]
    if len(names) < c:
        raise UserError(
            f"data.class_names lists {len(names)} names, and the split files have {c} classes",
            where=str(file),
            fix="write one class name per line, in label order 0..C-1",
        )
    if len(set(names)) != len(names):
        raise UserError("data.class_names lists a name twice", where=str(file), fix="give each class its own name")
    return names[:c] if len(names) == c else names


@register_dataset("imagefolder", None, uses_root=True)
def build_imagefolder(cfg: DataConfig) -> DataBundle:
    """data.root/{train,val,test}/<class_name>/<image>; val/ is optional (else carved)."""
    root = _need_root(cfg, "a folder with train/, test/ and optionally val/ class folders")
    train, classes = split_from_image_folder(root / "train", "train", id_root=root)
    val = None
    if (root / "val").is_dir():
        val, _ = split_from_image_folder(root / "val", "val", classes, id_root=root)
    test, _ = split_from_image_folder(root / "test", "test", classes, id_root=root)
    return DataBundle("imagefolder", train, val, test, classes, {"train_source": str(root / "train")})
