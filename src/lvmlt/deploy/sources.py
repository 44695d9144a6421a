"""What ``lvmlt predict`` classifies: image files, folders and list files, named lazily.

Paths are listed in order and never all held at once; a folder is walked recursively in
sorted order, a missing or unreadable file is passed on in its place (the classifier lists
it as an unreadable image). Imports neither torch nor anything of lvmlt that does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lvmlt import inputs
from lvmlt.errors import UserError

IMAGE_EXTENSIONS = inputs.IMAGE_EXTENSIONS


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not Path(name).name.startswith(".")


def walk_images(folder: Path, warn: Callable[[str], None]) -> Iterator[Path]:
    """Image files below ``folder`` in sorted order; a linked folder is walked once, a link
    loop is skipped with one warning naming it."""
    seen = {os.path.realpath(folder)}
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            warn(f"cannot list {d} ({e.strerror}); skipped")
            continue
        subdirs = []
        for e in entries:
            if e.is_dir():
                real = os.path.realpath(e.path)
                if real in seen:
                    warn(f"{e.path} links to a folder already walked ({real}); skipped")
                    continue
                seen.add(real)
                subdirs.append(Path(e.path))
            elif is_image_name(e.name):
                yield Path(e.path)
        stack.extend(reversed(subdirs))


def iter_sources(paths: Iterable[str], list_file: str | None = None, warn=None) -> Iterator[Path]:
    """Every image named by ``paths`` (files and folders) and by the lines of ``list_file``
    (one path per line, ``#`` comments), in order, never all held at once."""
    warn = warn or (lambda s: print(f"lvmlt: warning: {s}", file=sys.stderr))

    def named() -> Iterator[str]:
        yield from paths
        if list_file is not None:
            base = Path(list_file).parent
            try:
                # surrogateescape: a line that is not UTF-8 (a latin-1 list) names its file by its own bytes
                with open(list_file, encoding="utf-8", errors="surrogateescape") as f:
                    for n, line in enumerate(f, start=1):
                        if "\0" in line:
                            raise UserError(f"{list_file} line {n} holds a NUL byte: not a text list of image paths",
                                            fix="pass a text file with one image path per line")
                        text = line.strip()
                        if text and not text.startswith("#"):
                            yield text if os.path.isabs(text) else str(base / text)
            except OSError as e:
                raise UserError(f"cannot read {list_file} ({e.strerror})", fix="pass a text file of image paths") from None

    seen: dict[str, Path] = {}  # real path -> the first name it was reached by

    def once_noted(path: Path) -> Path:
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError):
            return path
        first = seen.setdefault(real, path)
        if first is not path and first != path:
            warn(f"{path} is the file {first} again (a link or a path named twice): classified again")
        return path

    for p in named():
        path = Path(p)
        if path.is_dir():
            yield from (once_noted(q) for q in walk_images(path, warn))
        else:
            yield once_noted(path)  # a missing or unreadable file is reported as a bad image, in its place


def count_sources(paths, list_file) -> int:
    """How many images a job names (a listing pass: names only, for the ETA)."""
    return sum(1 for _ in iter_sources(paths, list_file, warn=lambda s: None))


def resolve_sources(paths, list_file, sources) -> tuple[Iterable[tuple[str, Callable]], int]:
    """``(sources, how many)``: the given ``sources``, or the images of ``paths`` / ``list_file``
    as ``(name, opener)`` pairs, listed lazily after one counting pass."""
    if sources is not None:
        sources = list(sources)
        return sources, len(sources)
    total = count_sources(paths, list_file)
    if total == 0:
        raise UserError(f"no images found in {' '.join(map(str, paths)) or list_file}",
                        fix=f"pass image files or folders holding {', '.join(IMAGE_EXTENSIONS)} files")
    return ((str(p), _opener(p)) for p in iter_sources(paths, list_file)), total


def _opener(path: Path) -> Callable:
    return lambda: inputs.open_image(path)
