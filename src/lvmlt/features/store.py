"""The on-disk feature store: memory-mapped arrays plus a provenance manifest.

This module reads a store and defines its layout; :mod:`lvmlt.features.writer` writes it.
Layout of a store directory (the names are the constants below, each defined once)::

    manifest.json          provenance; "complete": true only once everything is in place
    pca.npz                the global PCA basis (pca=global)
    <split>/vec.npy        N x C       v_SAM, the average-pooled encoder output
    <split>/map.npy        N x 1 x h x w  F_PCA, the first-principal-component map
    <split>/level_<name>.npy  N x C_l  pooled earlier stages (when requested)
    chunks/<split>/*.npz   work in progress; deleted once the store is complete

The manifest (JSON)::

    format, complete, lvmlt_version, torch_version, dataset
    provenance             the settings that decide the stored values (expected_provenance)
    encoder, config        the encoder's description; every ExtractConfig field
    chunk_size, dtype
    map                    pca, size; with pca=global also basis_file, basis_sha256,
                           basis_bytes, explained_variance, fit_vectors, fit_split
    splits.<name>          n, fingerprint; once assembled files {key: relative path},
                           bad {index: reason}, checksums {key: {bytes, sha256}}
    engine                 the engine that encoded (name, version, cache key, device)
    manifest_sha256        sha256 of everything else (manifest_digest)

Every file is written to a temporary name, flushed to disk and then renamed, so a reader
never sees half a file; the manifest is marked complete last. A store that is not marked
complete refuses to open.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from lvmlt import rundir
from lvmlt.errors import UserError
from lvmlt.features.config import PROVENANCE_FIELDS, ExtractConfig, extract_precision
from lvmlt.features.pca import PcaBasis
from lvmlt.rundir import file_sha256

FORMAT = "lvmlt-features/1"
MANIFEST = "manifest.json"
PCA_FILE = "pca.npz"
CHUNKS = "chunks"
LEVEL_PREFIX = "level_"  # the stored key of a pooled earlier stage: level_<name>


REPAIR = "re-run the same `lvmlt extract ... --resume` to recompute it"
REEXTRACT = "restore it, or re-extract with `lvmlt extract ... --overwrite`"
VERIFY_ENV = "LVMLT_STORE_VERIFY"  # "size" skips the sha256 check of the arrays when a store opens


def array_file(split: str, key: str) -> str:
    """Where a split's array ``key`` (vec, map, level_<name>) lies, relative to the store."""
    return f"{split}/{key}.npy"


def level_file_key(name: str) -> str:
    return f"{LEVEL_PREFIX}{name}"


# ---------------------------------------------------------------------------------------
# The manifest: written atomically with the digest of its contents
# ---------------------------------------------------------------------------------------
def atomic_write_json(path: Path, obj: dict) -> None:
    rundir.atomic_write_json(path, obj, indent=1)


def manifest_digest(m: dict) -> str:
    """sha256 of a manifest's contents, itself left out: an edited manifest shows."""
    body = {k: v for k, v in m.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(root: Path, manifest: dict) -> None:
    """Write ``root/manifest.json`` atomically, with the digest of its contents."""
    m = json.loads(json.dumps({k: v for k, v in manifest.items() if k != "manifest_sha256"}))
    m["manifest_sha256"] = manifest_digest(m)
    atomic_write_json(root / MANIFEST, m)


def file_record(path: Path) -> dict:
    """What the manifest records of a finished file: its size and sha256."""
    return {"bytes": Path(path).stat().st_size, "sha256": file_sha256(path)}


def read_manifest(root: Path) -> dict | None:
    """The manifest of the store in ``root``, complete or not and unchecked; None without one.

    Raises:
        UserError: it is not valid JSON, not a JSON object, or of an unknown format.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError("feature-store manifest is not valid JSON", where=str(path), fix=REEXTRACT) from None
    if not isinstance(m, dict):
        raise UserError("feature-store manifest is not a JSON object", where=str(path), fix=REEXTRACT)
    if m.get("format") != FORMAT:
        raise UserError(
            f"unknown feature-store format {m.get('format')!r}", where=str(path), fix=f"expected {FORMAT}"
        )
    return m


# ---------------------------------------------------------------------------------------
# Integrity: sizes always, sha256 by default
# ---------------------------------------------------------------------------------------
def check_manifest_digest(root: Path, m: dict) -> None:
    """A manifest changed after lvmlt wrote it is refused (older stores carry no digest)."""
    recorded = m.get("manifest_sha256")
    if recorded is not None and recorded != manifest_digest(m):
        raise UserError(
            f"feature-store manifest {root / MANIFEST} was edited or damaged after extraction "
            "(its contents do not match their sha256)",
            fix=REEXTRACT,
        )


def _npy_problem(path: Path, n: int) -> str | None:
    """Why ``path`` is not a complete .npy array of ``n`` rows (None when it is)."""
    from numpy.lib import format as npy

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, _, dtype = read(f)
            data_start = f.tell()
    except Exception as e:  # numpy raises ValueError, SyntaxError, ... for a broken header
        return f"its .npy header is unreadable ({type(e).__name__})"
    if dtype.hasobject:
        return "it holds Python objects"
    want = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != want:
        return f"it has {size} bytes, its header needs {want}"
    if not shape or shape[0] != n:
        return f"it holds {shape[0] if shape else 0} rows, the manifest says {n}"
    return None


def _file_problem(path: Path, record: dict | None, hashes: bool) -> str | None:
    if not path.is_file():
        return "it is missing"
    if record is not None:
        size = path.stat().st_size
        if size != record.get("bytes"):
            return f"it has {size} bytes, the manifest records {record.get('bytes')}"
        if hashes and file_sha256(path) != record.get("sha256"):
            return "its contents changed (the sha256 differs from the manifest's)"
    return None


def damaged_files(root: Path, m: dict, hashes: bool = True) -> dict[str, str]:
    """{relative path: what is wrong} for the arrays and PCA basis of a complete store.

    Sizes are always checked (against the manifest and the .npy headers), the sha256 of
    every file when ``hashes``. Stores from before the sizes and hashes were recorded get
    the header checks only.
    """
    root = Path(root)
    out: dict[str, str] = {}
    basis = m.get("map", {})
    if basis.get("pca") == "global":
        record = {"bytes": basis["basis_bytes"], "sha256": basis.get("basis_sha256")} if "basis_bytes" in basis else None
        problem = _file_problem(root / PCA_FILE, record, hashes)
        if problem:
            out[PCA_FILE] = problem
    for entry in m.get("splits", {}).values():
        checks = entry.get("checksums", {})
        for key, rel in entry.get("files", {}).items():
            problem = _file_problem(root / rel, checks.get(key), hashes) or _npy_problem(root / rel, int(entry["n"]))
            if problem:
                out[rel] = problem
    return out


def damage_error(root: Path, damaged: dict[str, str], fix: str = REPAIR) -> UserError:
    rel, why = next(iter(damaged.items()))
    more = f" (and {len(damaged) - 1} more file(s))" if len(damaged) > 1 else ""
    return UserError(f"feature store file {Path(root) / rel} is damaged: {why}{more}", fix=fix)


def _verify_mode(verify: str | None) -> bool:
    """True when sha256 hashes are to be checked."""
    mode = verify or os.environ.get(VERIFY_ENV) or "sha256"
    if mode not in ("sha256", "size"):
        raise UserError(f"unknown feature-store verify mode {mode!r}", fix=f"use sha256 or size (e.g. {VERIFY_ENV}=size)")
    return mode == "sha256"


# ---------------------------------------------------------------------------------------
# Reading a store
# ---------------------------------------------------------------------------------------
class StoredSplit:
    """The features of one split, indexed like the split itself (sample i -> row i).

    Attributes (memory-mapped, opened on first use; pickling sends only the paths, so
    DataLoader workers open their own maps instead of copying the arrays):
        vec: N x C array, v_SAM.
        map: N x 1 x h x w array, F_PCA.
        levels: {name: N x C_l array}.
        bad: {sample index: reason} for images that were skipped (their rows are zeros).
    """

    def __init__(self, root: Path, name: str, entry: dict):
        self.root, self.name = Path(root), name
        self.n = int(entry["n"])
        self.files: dict[str, str] = dict(entry["files"])
        self.bad = {int(k): v for k, v in entry.get("bad", {}).items()}
        self._arrays: dict[str, np.ndarray] = {}

    def _get(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            self._arrays[key] = np.load(self.root / self.files[key], mmap_mode="r", allow_pickle=False)
        return self._arrays[key]

    @property
    def vec(self) -> np.ndarray:
        return self._get("vec")

    @property
    def map(self) -> np.ndarray:
        return self._get("map")

    @property
    def levels(self) -> dict[str, np.ndarray]:
        return {k[len(LEVEL_PREFIX) :]: self._get(k) for k in self.files if k.startswith(LEVEL_PREFIX)}

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state


class FeatureStore:
    """A complete feature store on disk. Open with :meth:`open`; check with :meth:`check`."""

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path, verify: str | None = None) -> FeatureStore:
        """Open a store; one whose extraction did not finish, or a damaged one, is refused.

        Args:
            verify: ``"sha256"`` (default) checks every array's size and sha256 against the
                manifest; ``"size"`` checks sizes only (quicker on very large stores).
                None = the ``LVMLT_STORE_VERIFY`` environment variable, else sha256.
        """
        root = Path(path)
        m = read_manifest(root)
        if m is None:
            raise UserError(
                f"no feature store at {str(root)!r} (no {MANIFEST})",
                fix="run `lvmlt extract --out DIR` first",
            )
        if not m.get("complete"):
            raise UserError(
                f"the feature store at {str(root)!r} is incomplete (its extraction was interrupted)",
                fix="re-run the same `lvmlt extract ... --resume` to finish it",
            )
        check_manifest_digest(root, m)
        damaged = damaged_files(root, m, hashes=_verify_mode(verify))
        if damaged:
            raise damage_error(root, damaged)
        return cls(root, m)

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str) -> StoredSplit:
        if name not in self.manifest["splits"]:
            raise UserError(
                f"feature store {str(self.root)!r} has no split {name!r}", fix=f"it has {self.split_names}"
            )
        return StoredSplit(self.root, name, self.manifest["splits"][name])

    def pca(self) -> PcaBasis | None:
        """The global PCA basis, or None for per-image PCA."""
        if self.manifest["map"]["pca"] != "global":
            return None
        with np.load(self.root / PCA_FILE, allow_pickle=False) as a:
            return PcaBasis.from_arrays(a)

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    def check(
        self, bundle, expected: ExtractConfig | None = None, expected_sha256: str | None = None
    ) -> None:
        """Raise a UserError naming what differs between this store and the data / settings.

        Args:
            bundle: the DataBundle the features will be used with: every split's sample
                count and fingerprint (ids, labels, file sizes) must match.
            expected: the extraction settings the caller expects (None = data only).
            expected_sha256: the expected encoder weights; None = the official/cached
                weights of ``expected.encoder`` when they are available locally.
        """
        problems = diff_provenance(self.manifest, bundle, expected, expected_sha256)
        if problems:
            raise UserError(
                f"feature store {str(self.root)!r} does not match: " + "; ".join(problems),
                fix="re-run `lvmlt extract` with these settings into a new --out directory",
            )


def expected_provenance(cfg: ExtractConfig, sha256: str | None = None) -> dict:
    """The provenance fields of ``cfg`` with "native" defaults resolved (img_size, map_size)."""
    from lvmlt.encoders import resolve_geometry

    img_size, grid = resolve_geometry(cfg.encoder, cfg.img_size)
    p = {k: getattr(cfg, k) for k in PROVENANCE_FIELDS}
    p["img_size"] = img_size
    p["map_size"] = cfg.map_size or grid
    p["levels"] = list(cfg.levels)
    if cfg.precision == "auto":  # what `auto` means for this encoder on the device this config names
        from lvmlt.hardware import pick_device

        device = torch.device(cfg.device) if cfg.device != "auto" else pick_device("auto")
        p["precision"] = extract_precision(cfg, device)
    if cfg.pca != "global":  # the basis sample settings do not matter then
        p["pca_images"] = p["pca_seed"] = None
    if sha256 is not None:
        p["weights_sha256"] = sha256
    return p


def _default_sha(cfg: ExtractConfig) -> str | None:
    """sha256 of the weights ``cfg`` would load, when they are on this machine."""
    from lvmlt.encoders import resolve_weights

    if cfg.encoder.startswith("tiny_test"):
        return None
    try:
        return file_sha256(resolve_weights(cfg.encoder, cfg.checkpoint))
    except UserError:
        return None  # weights absent here: compare everything else


def diff_provenance(
    manifest: dict, bundle, expected: ExtractConfig | None, expected_sha256: str | None
) -> list[str]:
    """Human-readable differences between a store's manifest and the data / settings."""
    problems = []
    if expected is not None:
        sha = expected_sha256 if expected_sha256 is not None else _default_sha(expected)
        want = expected_provenance(expected, sha)
        have = dict(manifest["provenance"])
        names = {"weights_sha256": "encoder weights (sha256)", "img_size": "resolution (img_size)"}
        for key, value in want.items():
            if have.get(key) != value:
                shown = [
                    str(v)[:16] + "..." if key == "weights_sha256" and v else v
                    for v in (have.get(key), value)
                ]
                problems.append(f"{names.get(key, key)} is {shown[0]!r} in the store, {shown[1]!r} expected")
    stored = manifest["splits"]
    if bundle is not None:
        for name, split in bundle.splits().items():
            if name not in stored:
                problems.append(f"split {name!r} is missing from the store")
                continue
            s = stored[name]
            if s["n"] != len(split) or s["fingerprint"] != split.fingerprint():
                problems.append(
                    f"data fingerprint of split {name!r} differs ({s['n']} samples in the store, "
                    f"{len(split)} in the data; ids, labels or file sizes changed)"
                )
    return problems
