"""The on-disk feature store: memory-mapped arrays plus a provenance manifest.

Layout of a store directory::

    manifest.json          provenance; "complete": true only once everything is in place
    pca.npz                the global PCA basis (pca=global)
    <split>/vec.npy        N x C       v_SAM, the average-pooled encoder output
    <split>/map.npy        N x 1 x h x w  F_PCA, the first-principal-component map
    <split>/level_<name>.npy  N x C_l  pooled earlier stages (when requested)
    chunks/<split>/*.npz   work in progress; deleted once the store is complete

Every file is written to a temporary name, flushed to disk and then renamed, so a reader
never sees half a file; the manifest is marked complete last. A store that is not marked
complete refuses to open.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from lvmlt.errors import UserError
from lvmlt.features.config import PROVENANCE_FIELDS, ExtractConfig
from lvmlt.features.pca import PcaBasis

FORMAT = "lvmlt-features/1"
MANIFEST = "manifest.json"
PCA_FILE = "pca.npz"
CHUNKS = "chunks"


# ---------------------------------------------------------------------------------------
# Durable, atomic writes
# ---------------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the file is either absent, old, or complete.

    The bytes go to a temporary file which is fsync-ed before the rename, and the directory
    is fsync-ed after it: once this returns, the file survives a crash or power loss.
    A full disk raises OSError before anything is renamed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def read_manifest(root: Path) -> dict | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError("feature-store manifest is not valid JSON", where=str(path)) from None
    if m.get("format") != FORMAT:
        raise UserError(
            f"unknown feature-store format {m.get('format')!r}", where=str(path), fix=f"expected {FORMAT}"
        )
    return m


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
        return {k[len("level_") :]: self._get(k) for k in self.files if k.startswith("level_")}

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
    def open(cls, path: str | Path) -> FeatureStore:
        """Open a store; one whose extraction did not finish is refused."""
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
    if cfg.pca != "global":  # the basis sample settings do not matter then
        p["pca_images"] = p["pca_seed"] = None
    if sha256 is not None:
        p["weights_sha256"] = sha256
    return p


def _default_sha(cfg: ExtractConfig) -> str | None:
    """sha256 of the weights ``cfg`` would load, when they are on this machine."""
    from lvmlt.encoders import file_sha256, resolve_weights

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
