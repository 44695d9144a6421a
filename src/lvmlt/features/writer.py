"""Writing a feature store: the one owner of its layout while it is made.

:class:`StoreWriter` creates a store, resumes an interrupted one or repairs a damaged one
(:meth:`StoreWriter.open`), writes the chunks of work in progress and the PCA basis, and at
the end assembles each split's arrays and commits the manifest. The file names and the
manifest's schema are those of :mod:`lvmlt.features.store`, which reads what is written
here; nothing else touches a store's files.

Every file is written to a temporary name, fsync-ed and renamed into place, so it exists
only complete. A chunk file's existence is the record that its samples are done; the
manifest is marked complete last, after every array is in place.
"""

from __future__ import annotations

import errno
import os
import shutil
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lvmlt import __version__, locks, rundir
from lvmlt.errors import UserError
from lvmlt.features.config import ExtractConfig
from lvmlt.features.pca import PcaBasis
from lvmlt.features.store import (
    CHUNKS,
    FORMAT,
    MANIFEST,
    PCA_FILE,
    array_file,
    check_manifest_digest,
    damage_error,
    damaged_files,
    diff_provenance,
    file_record,
    read_manifest,
    write_manifest,
)
from lvmlt.rundir import fsync_dir, tmp_name

Jobs = list[tuple[int, list[int]]]  # [(chunk number, the sample indices it holds)]


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    rundir.atomic_write(path, lambda f: np.savez(f, **arrays))


def chunk_jobs(n: int, chunk: int) -> Jobs:
    """A split of ``n`` samples cut into chunks of ``chunk``: [(chunk number, indices)]."""
    return [(c, list(range(s, min(s + chunk, n)))) for c, s in enumerate(range(0, n, chunk))]


def new_manifest(bundle, cfg: ExtractConfig, encoder, provenance: dict, chunk_size: int) -> dict:
    """The manifest of a store being made, not yet complete (see :mod:`lvmlt.features.store`)."""
    map_size = provenance["map_size"]
    return {
        "format": FORMAT,
        "complete": False,
        "lvmlt_version": __version__,
        "torch_version": torch.__version__,
        "dataset": getattr(bundle, "name", None),
        "provenance": provenance,
        "encoder": encoder.describe() | {"checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None},
        "config": asdict(cfg) | {"levels": list(cfg.levels)},
        "chunk_size": chunk_size,
        "dtype": cfg.dtype,
        "map": {"pca": cfg.pca, "size": [map_size, map_size]},
        "splits": {name: {"n": len(s), "fingerprint": s.fingerprint()} for name, s in bundle.splits().items()},
    }


class StoreWriter:
    """A store directory being written: its manifest (not yet complete) and the work left.

    Made by :meth:`open` on one process (rank 0 under ``torchrun``) and handed to every
    rank as it is (plain data, so it pickles); each rank writes its own chunks, rank 0
    alone writes the basis and commits.

    Attributes:
        root: the store directory.
        manifest: the manifest as it will be committed.
        pending: per split, the chunk jobs ``[(chunk, indices)]`` that have no valid file yet.
    """

    def __init__(self, root: Path, manifest: dict, pending: dict[str, Jobs] | None = None):
        self.root, self.manifest, self.pending = Path(root), manifest, pending or {}
        self.basis: PcaBasis | None = None

    @property
    def chunk_size(self) -> int:
        """Chunk boundaries are fixed by the run that created the store."""
        return int(self.manifest["chunk_size"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    # ------------------------------------------------------------------ create, resume, repair
    @classmethod
    def open(
        cls, root, bundle, cfg: ExtractConfig, encoder, provenance: dict, resume: bool, overwrite: bool, log
    ) -> StoreWriter | None:
        """Check or create the store in ``root``; None when it is complete already and intact.

        Args:
            provenance: what this run records (:func:`~lvmlt.features.store.expected_provenance`
                with the encoder's weights).
            resume: continue an unfinished extraction, or repair a damaged store, with the
                same settings; when False either is an error.
            overwrite: remove a store in ``root`` (its own files only) and start again.

        Raises:
            UserError: ``root`` holds something else, a store made differently, an edited
                manifest, or (without ``resume``) unfinished or damaged work.
        """
        root = Path(root)
        existing = read_manifest(root) if root.is_dir() else None
        if existing is not None and overwrite:
            wipe_store(root)
            existing = None
        intact: dict = {}
        if existing is None:
            _check_empty(root)
            chunk_size = cfg.chunk_size
        else:
            found = _check_existing(root, existing, bundle, cfg, encoder, resume, log)
            if found is None:
                return None
            chunk_size = int(existing["chunk_size"])
            clean_tmp_files(root)
            intact = _intact_splits(root, existing, found)
        manifest = new_manifest(bundle, cfg, encoder, provenance, chunk_size)
        manifest["splits"] |= intact
        write_manifest(root, manifest)
        writer = cls(root, manifest)
        writer.pending = {
            name: [] if name in intact else writer._missing(name, len(split))
            for name, split in bundle.splits().items()
        }
        return writer

    def _missing(self, name: str, n: int) -> Jobs:
        return [(c, idx) for c, idx in chunk_jobs(n, self.chunk_size) if not _chunk_ok(self.chunk_path(name, c), len(idx))]

    # ------------------------------------------------------------------ work in progress
    def chunk_path(self, split: str, c: int) -> Path:
        return self.root / CHUNKS / split / f"{c:06d}.npz"

    def write_chunk(self, split: str, c: int, rows: dict[str, np.ndarray], bad: dict[int, str]) -> None:
        """Write chunk ``c`` of ``split`` atomically: its rows (in the store's dtype) and its
        unreadable images {sample index: reason}."""
        arrays = {k: v.astype(self.dtype) for k, v in rows.items()}
        arrays["bad_index"] = np.asarray(sorted(bad), dtype=np.int64)
        arrays["bad_reason"] = np.asarray([bad[i] for i in sorted(bad)], dtype=np.str_)
        atomic_save_npz(self.chunk_path(split, c), **arrays)

    def has_basis(self) -> bool:
        """Whether the PCA basis of an earlier (interrupted) run is on disk."""
        return (self.root / PCA_FILE).is_file()

    def load_basis(self) -> PcaBasis:
        with np.load(self.root / PCA_FILE, allow_pickle=False) as a:
            return PcaBasis.from_arrays(a)

    def save_basis(self, basis: PcaBasis, sample: list[int]) -> None:
        """Write the fitted basis and the train samples it was fitted on (rank 0)."""
        atomic_save_npz(self.root / PCA_FILE, **basis.to_arrays(), sample=np.asarray(sample, dtype=np.int64))

    def use_basis(self, basis: PcaBasis) -> None:
        """The global basis every map is projected on: recorded in the manifest at the commit."""
        self.basis = basis

    def use_engine(self, info: dict) -> None:
        """Record the engine that encodes (name, version, cache key, device, ...)."""
        self.manifest["engine"] = info

    # ------------------------------------------------------------------ the commit
    def commit(self, template: dict[str, np.ndarray]) -> None:
        """Rank 0, every chunk on disk: assemble each split's arrays, then write the complete manifest.

        Args:
            template: zero-row arrays giving every stored key (in file order) and its row shape.
        """
        if self.basis is not None:
            path = self.root / PCA_FILE
            self.manifest["map"] |= {
                "basis_file": PCA_FILE,
                "basis_sha256": rundir.file_sha256(path),
                "basis_bytes": path.stat().st_size,
                "explained_variance": self.basis.explained,
                "fit_vectors": self.basis.n_vectors,
                "fit_split": "train",
            }
        template = {k: v.astype(self.dtype) for k, v in template.items()}
        for name, entry in self.manifest["splits"].items():
            if "checksums" not in entry:  # not an intact split kept by a repair
                entry |= self._assemble(name, int(entry["n"]), template)
        self.manifest["complete"] = True
        write_manifest(self.root, self.manifest)  # the commit point
        shutil.rmtree(self.root / CHUNKS, ignore_errors=True)

    def _assemble(self, name: str, n: int, template: dict[str, np.ndarray]) -> dict:
        """Concatenate a split's chunks into memory-mappable .npy files, each written atomically."""
        files = {key: array_file(name, key) for key in template}
        try:
            return self._write_split_files(name, n, template, files)
        except BaseException:
            for rel in files.values():  # the chunks stay: a resumed run assembles again
                tmp_name(self.root / rel).unlink(missing_ok=True)
            raise

    def _write_split_files(self, name: str, n: int, template: dict, files: dict) -> dict:
        from numpy.lib.format import open_memmap

        root, outs = self.root, {}
        with rundir.writing(root / name):
            (root / name).mkdir(parents=True, exist_ok=True)
        for key, t in template.items():
            with rundir.writing(root / files[key]):
                outs[key] = open_memmap(tmp_name(root / files[key]), mode="w+", dtype=t.dtype, shape=(n, *t.shape[1:]))
                _preallocate(tmp_name(root / files[key]))
        bad: dict[str, str] = {}
        for c, idx in chunk_jobs(n, self.chunk_size):
            with np.load(self.chunk_path(name, c), allow_pickle=False) as z:
                bad |= {str(i): r for i, r in zip(z["bad_index"].tolist(), z["bad_reason"].tolist(), strict=True)}
                for key, out in outs.items():
                    out[idx[0] : idx[0] + len(idx)] = z[key]
        checksums: dict[str, dict] = {}  # size and sha256 of each file, checked when the store opens
        for key in files:
            final = root / files[key]
            with rundir.writing(final):
                outs.pop(key).flush()  # and unmapped before the rename
                with open(tmp_name(final), "rb+") as f:
                    os.fsync(f.fileno())
                checksums[key] = file_record(tmp_name(final))
                os.replace(tmp_name(final), final)
        with rundir.writing(root / name):
            fsync_dir(root / name)
        return {"files": files, "bad": bad, "checksums": checksums}


# ---------------------------------------------------------------------------------------
# What is already in the directory
# ---------------------------------------------------------------------------------------
def _check_empty(root: Path) -> None:
    """A new store goes into a missing or empty directory (its lock file aside)."""
    if root.is_dir() and any(p.name != locks.LOCK_FILE for p in root.iterdir()):
        raise UserError(f"{str(root)!r} is not empty and holds no feature store", fix="choose an empty --out directory")


def _check_existing(root: Path, existing: dict, bundle, cfg, encoder, resume: bool, log) -> dict[str, str] | None:
    """May this run continue the store in ``root``? Returns the damaged files found
    (:func:`damaged_files`), or None when the store is complete and intact (nothing to do)."""
    check_manifest_digest(root, existing)
    problems = diff_provenance(existing, bundle, cfg, encoder.weights_sha256)
    if problems:
        raise UserError(
            f"{str(root)!r} holds a feature store made differently: " + "; ".join(problems),
            fix="choose another --out, or pass --overwrite to replace it",
        )
    # Sizes and sha256 of every recorded file, read once: decides "nothing to do" for a
    # complete store and which splits a repair (or a resumed repair) keeps.
    found = damaged_files(root, existing)
    damaged = found if existing.get("complete") else {}
    if existing.get("complete") and not damaged:
        log(f"feature store {root} is complete and matches; nothing to do")
        return None
    if damaged and not resume:
        raise damage_error(root, damaged, fix="pass --resume to recompute it, or --overwrite to start again")
    if damaged:
        log(f"repairing the feature store in {root}: " + "; ".join(f"{k}: {v}" for k, v in damaged.items()))
    elif not resume:
        raise UserError(
            f"{str(root)!r} holds an unfinished extraction",
            fix="pass --resume to continue it, or --overwrite to start again",
        )
    log(f"resuming the extraction in {root}")
    return found


def _intact_splits(root: Path, existing: dict, damaged: dict[str, str]) -> dict:
    """The manifest entries of the splits whose arrays a repair keeps (assembled, recorded,
    and every file's size and sha256 as recorded: not in ``damaged``, what
    :func:`damaged_files` found). A damaged PCA basis keeps none: the maps of every split
    were projected on it."""
    if PCA_FILE in damaged:
        (root / PCA_FILE).unlink(missing_ok=True)
        return {}
    keep = {}
    for name, entry in existing.get("splits", {}).items():
        files = entry.get("files", {})
        if "checksums" in entry and not any(rel in damaged for rel in files.values()):
            keep[name] = entry
    return keep


def _chunk_ok(path: Path, n_rows: int) -> bool:
    """A chunk file exists and holds n_rows rows (files are renamed into place complete)."""
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["vec"].shape[0] == n_rows and z["map"].shape[0] == n_rows
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False


def clean_tmp_files(root: Path) -> None:
    """Temporaries of a killed run (``.name.tmp-PID``): never renamed, so never trusted."""
    for p in root.rglob(".*.tmp-*"):
        p.unlink(missing_ok=True)


def wipe_store(root: Path) -> None:
    """Remove a store's own files (and nothing else) from ``root``."""
    manifest = read_manifest(root)
    splits = list(manifest["splits"]) if manifest else []
    for name in [MANIFEST, PCA_FILE]:
        (root / name).unlink(missing_ok=True)
    for d in [CHUNKS, *splits]:
        if (root / d).is_dir():
            shutil.rmtree(root / d)
    clean_tmp_files(root)


def _preallocate(path: Path) -> None:
    """Give a new memory-mapped file its blocks now: a full disk is then an OSError here,
    not a SIGBUS when a mapped page is first written."""
    with open(path, "rb+") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            # a file system without fallocate: mapped writes as before
