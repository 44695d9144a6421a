"""``extract``: run a frozen encoder over every split and fill a feature store, resumably.

The pipeline streams: images are decoded by background threads a few batches ahead of the
encoder, each chunk of ``chunk_size`` samples is reduced to its stored form (a 256-d vector
and a one-channel map) and written atomically, and nothing of size N x 256 x h x w is ever
held. Peak memory therefore depends on the batch and chunk sizes, not on the dataset.

With the global PCA (the default) the basis must exist before any map can be stored, so
a first pass runs the encoder over a seeded sample of training images and accumulates
the covariance of their spatial vectors (float64 sums, O(C^2) memory); those images are
encoded again in the main pass, a few percent of extra work that keeps the full maps out
of memory and off disk.

Under ``torchrun`` the work is sharded over the ranks of the process group (gloo on the
CPU, NCCL on CUDA, one GPU per rank): rank 0 checks or creates the store and lists the
chunks still to do, the PCA sample is split over the ranks and its covariance sums are
all-reduced (one basis, fitted once, identical everywhere), each rank encodes and writes
its own share of the pending chunks into the one store, and rank 0 assembles the arrays
and marks the store complete once every rank is done. A resumed run, with any number of
processes, shares out whatever chunks are still missing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lvmlt import __version__, distributed, hardware, locks, rundir
from lvmlt.errors import BadImageError, UserError
from lvmlt.features.config import ExtractConfig, extract_precision
from lvmlt.features.engines import choose_engine, compile_encoder
from lvmlt.features.pca import CovarianceAccumulator, PcaBasis, image_pca_map
from lvmlt.features.store import (
    CHUNKS,
    FORMAT,
    MANIFEST,
    PCA_FILE,
    FeatureStore,
    atomic_save_npz,
    check_manifest_digest,
    damage_error,
    damaged_files,
    diff_provenance,
    expected_provenance,
    file_record,
    fsync_dir,
    read_manifest,
    tmp_name,
    write_manifest,
)
from lvmlt.inputs import valid_cells


# ---------------------------------------------------------------------------------------
# Decoding images ahead of the encoder
# ---------------------------------------------------------------------------------------
def load_image(split, i: int) -> Image.Image:
    """Sample i of a split as a PIL image; any decoding failure is a BadImageError naming it."""
    try:
        img = split.load(i)
        img.load()  # PIL decodes lazily: force it here so a truncated file fails here
        return img
    except BadImageError:
        raise
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... for broken files
        raise BadImageError(
            f"cannot read image {split.ids[i]!r} (sample {i} of split {split.name!r}): {type(e).__name__}: {e}"
        ) from None


class _Batch:
    """Preprocessed inputs for some samples of one chunk; ``bad`` ones are left out of ``x``."""

    def __init__(self, key, indices, x, sizes, bad):
        self.key, self.indices, self.x, self.sizes, self.bad = key, indices, x, sizes, bad


def _prepare_batch(split, encoder, key, indices: Sequence[int], skip_bad: bool) -> _Batch:
    good, tensors, sizes, bad = [], [], [], {}
    for i in indices:
        try:
            img = load_image(split, i)
        except BadImageError as e:
            if not skip_bad:
                raise
            bad[i] = str(e)
            continue
        good.append(i)
        sizes.append((img.height, img.width))
        tensors.append(encoder.preprocessing(img))
    x = torch.stack(tensors) if tensors else None
    if x is not None and getattr(encoder, "channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    return _Batch(key, good, x, sizes, bad)


def iter_batches(
    split, encoder, jobs: Sequence[tuple], batch_size: int, workers: int, skip_bad: bool
) -> Iterator[_Batch]:
    """Decode and preprocess ``jobs`` = [(key, indices)] in order, ``workers`` threads ahead.

    PIL decoding/resizing and the tensor normalisation release the GIL, so threads overlap
    them with the encoder without copying the dataset into worker processes.
    """
    tasks = [(key, idx[s : s + batch_size]) for key, idx in jobs for s in range(0, len(idx), batch_size)]
    if workers == 0:
        for key, idx in tasks:
            yield _prepare_batch(split, encoder, key, idx, skip_bad)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lvmlt-decode") as pool:
        pending: deque = deque()
        ahead = 2 * workers
        it = iter(tasks)
        for key, idx in it:
            pending.append(pool.submit(_prepare_batch, split, encoder, key, idx, skip_bad))
            if len(pending) >= ahead:
                break
        while pending:
            batch = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_prepare_batch, split, encoder, nxt[0], nxt[1], skip_bad))
            yield batch


# ---------------------------------------------------------------------------------------
# From encoder output to what is stored
# ---------------------------------------------------------------------------------------
def _resize_map(m: torch.Tensor, size: int) -> torch.Tensor:
    """1 x h x w -> 1 x size x size: area-average when shrinking, bilinear when growing."""
    if m.shape[-2:] == (size, size):
        return m
    mode = "area" if min(m.shape[-2:]) >= size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(m[None], size=(size, size), mode=mode, **kwargs)[0]


class Reducer:
    """Turns encoder outputs into stored rows: v_SAM, F_PCA (and pooled levels).

    Args:
        encoder: gives the padded fraction of each input.
        cfg: the extraction settings.
        map_size: side of the stored map.
        basis: the global PCA basis (None for per-image PCA or while fitting it).
    """

    def __init__(self, encoder, cfg: ExtractConfig, map_size: int, basis: PcaBasis | None):
        self.encoder, self.cfg, self.map_size, self.basis = encoder, cfg, map_size, basis

    def cells(self, fmap: torch.Tensor, size_hw) -> torch.Tensor:
        """The valid part of one image's C x h x w map (float32)."""
        frac = self.encoder.valid_fraction(size_hw)
        gh, gw = valid_cells(fmap.shape[-1], frac, self.cfg.crop_padding)
        return fmap[:, :gh, :gw].float()

    def reduce(self, outputs: dict[str, torch.Tensor], sizes) -> dict[str, np.ndarray]:
        out = outputs["out"].float()  # reduced where it was computed: only the small rows travel
        rows: dict[str, list] = {"vec": [], "map": []}
        for name in self.cfg.levels:
            rows[f"level_{name}"] = []
        for b, size_hw in enumerate(sizes):
            f = self.cells(out[b], size_hw)
            rows["vec"].append(f.mean(dim=(1, 2)))
            m = self.basis.project(f) if self.basis is not None else image_pca_map(f)
            rows["map"].append(_resize_map(m, self.map_size))
            for name in self.cfg.levels:
                rows[f"level_{name}"].append(self.cells(outputs[name][b], size_hw).mean(dim=(1, 2)))
        return {k: torch.stack(v).cpu().numpy() for k, v in rows.items()}

    def spatial_vectors(self, outputs: dict[str, torch.Tensor], sizes) -> torch.Tensor:
        """All valid cells of a batch as rows: (sum of cells) x C, for fitting the PCA."""
        out = outputs["out"].float()
        return torch.cat([self.cells(out[b], s).flatten(1).T for b, s in enumerate(sizes)])


# ---------------------------------------------------------------------------------------
# The extraction
# ---------------------------------------------------------------------------------------
def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


class _Runner:
    """Calls the encoder through its engine under inference mode and counts images.

    The engine (``cfg.engine``, see :mod:`lvmlt.features.engines`) is OpenVINO or ONNX
    Runtime on the CPU when installed, else torch. On torch, ``compile`` sends the encoder
    through ``torch.compile``; on the CPU with inductor's "freezing" (weights become
    constants, so convolutions are pre-packed and fused with their activations).
    Compilation happens at the first call; if it fails (no C++ compiler, an unsupported
    op) we warn and run eagerly.

    Attributes:
        engine: the engine that runs (torch when the asked one is missing or failed its check).
        engine_info: what the manifest records about it.
    """

    def __init__(self, encoder, cfg: ExtractConfig, device: torch.device, log=print):
        self.encoder, self.device, self.levels, self.log = encoder, device, tuple(cfg.levels), log
        self.engine = choose_engine(cfg.engine, device, cfg.precision, cfg.compile, log)
        self.compiled = None
        if self.engine != "torch":
            self.compiled = compile_encoder(encoder, self.engine, cfg.precision, cfg.levels, cfg.threads, log)
            if self.compiled is None:
                self.engine = "torch"
        if self.compiled is not None:
            self.engine_info = dict(self.compiled.info)
        else:
            encoder.prepare(device, cfg.precision, cfg.channels_last)
            self.engine_info = {"engine": "torch", "version": str(torch.__version__), "compile": cfg.compile}
        self.eager = encoder.forward_levels
        self.fn = torch.compile(self.eager, dynamic=False) if cfg.compile and self.compiled is None else self.eager
        self.images = 0
        self.seconds = 0.0

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        t = time.perf_counter()
        x = x.to(self.device, non_blocking=True)
        if self.compiled is not None:
            out = self.compiled(x)
        elif self.fn is self.eager:
            out = self.fn(x, self.levels)
        else:
            out = self._compiled(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # so that seconds measure the encoder, not the queue
        self.seconds += time.perf_counter() - t
        self.images += x.shape[0]
        return out

    def _compiled(self, x):
        import torch._inductor.config as inductor

        try:
            with inductor.patch(freezing=self.device.type == "cpu"):
                return self.fn(x, self.levels)
        except Exception as e:  # compilation is an optimisation: never fail the extraction on it
            self.log(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); running eagerly")
            self.fn = self.eager
            return self.fn(x, self.levels)


def _chunk_jobs(n: int, chunk: int) -> list[tuple[int, list[int]]]:
    return [(c, list(range(s, min(s + chunk, n)))) for c, s in enumerate(range(0, n, chunk))]


def _chunk_path(root: Path, split: str, c: int) -> Path:
    return root / CHUNKS / split / f"{c:06d}.npz"


def _chunk_ok(path: Path, n_rows: int) -> bool:
    """A chunk file exists and holds n_rows rows (files are renamed into place complete)."""
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["vec"].shape[0] == n_rows and z["map"].shape[0] == n_rows
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False


def _empty_rows(
    n: int, c: int, map_size: int, level_channels: dict[str, int], levels
) -> dict[str, np.ndarray]:
    rows = {"vec": np.zeros((n, c), np.float32), "map": np.zeros((n, 1, map_size, map_size), np.float32)}
    for name in levels:
        rows[f"level_{name}"] = np.zeros((n, level_channels[name]), np.float32)
    return rows


def _clean_tmp_files(root: Path) -> None:
    """Temporaries of a killed run (``.name.tmp-PID``): never renamed, so never trusted."""
    for p in root.rglob(".*.tmp-*"):
        p.unlink(missing_ok=True)


def _wipe_store(root: Path) -> None:
    """Remove a store's own files (and nothing else) from ``root``."""
    manifest = read_manifest(root)
    splits = list(manifest["splits"]) if manifest else []
    for name in [MANIFEST, PCA_FILE]:
        (root / name).unlink(missing_ok=True)
    for d in [CHUNKS, *splits]:
        if (root / d).is_dir():
            shutil.rmtree(root / d)
    _clean_tmp_files(root)


def extract(
    bundle,
    cfg: ExtractConfig,
    out_dir: str | Path,
    resume: bool = True,
    overwrite: bool = False,
    encoder=None,
    progress: bool = True,
    log=None,
) -> FeatureStore:
    """Extract v_SAM and F_PCA for every split of ``bundle`` into a store at ``out_dir``.

    Args:
        bundle: a DataBundle (its ``splits()`` are extracted in order train, val, test).
        cfg: what to extract and how.
        out_dir: the store directory (created).
        resume: continue an interrupted extraction with the same settings in ``out_dir``;
            when False such a directory is an error (unless ``overwrite``).
        overwrite: delete a store already in ``out_dir`` (its own files only) and start again.
        encoder: an already built FrozenEncoder (tests); None = build ``cfg.encoder``.
        progress: show tqdm progress bars with ETA on stderr.
        log: ``log(str)`` for status lines; default prints to stderr.

    Returns:
        The complete, opened :class:`FeatureStore`.

    Raises:
        UserError: another process is writing the store (rank 0 holds ``out_dir``'s
            one-writer lock throughout), or the disk refused a write (the finished chunks
            stay; the message says to continue with ``--resume``).
    """
    held: list = []  # the store's lock, taken by rank 0 before it touches the directory
    try:
        return _extract(bundle, cfg, out_dir, resume, overwrite, encoder, progress, log, held)
    except rundir.WriteError as e:
        raise e.then("continue with the same `lvmlt extract ... --resume`") from None
    finally:
        for lock in held:
            lock.release()


def _extract(bundle, cfg, out_dir, resume, overwrite, encoder, progress, log, held: list) -> FeatureStore:
    joined = distributed.init_from_env(cfg.device, timeout_minutes=EXTRACT_TIMEOUT_MINUTES)
    rank, world = distributed.world()
    primary = rank == 0
    log = log or (lambda s: print(s, file=sys.stderr))
    if not primary:
        log = _quiet
    progress = progress and primary
    root = Path(out_dir)
    device = joined or hardware.pick_device(cfg.device)
    # `auto` becomes what this device runs natively; the store records the resolved value.
    cfg = dataclasses.replace(cfg, precision=extract_precision(cfg, device))

    # Settings -> the provenance this run will record (needs the encoder's weights hash).
    encoder = _checked_encoder(cfg, encoder)
    provenance = expected_provenance(cfg, encoder.weights_sha256)
    provenance["weights_sha256"] = encoder.weights_sha256
    map_size = provenance["map_size"]
    splits = bundle.splits()

    def setup():
        held.append(locks.hold(root, "feature store"))
        return _open_or_create(root, bundle, cfg, encoder, provenance, map_size, resume, overwrite, log)

    plan = _on_primary(setup)  # rank 0 touches the directory; every rank gets the plan or its error
    if plan is None:
        distributed.barrier()
        return FeatureStore.open(root, verify="size")  # rank 0 has just checked the hashes
    manifest, pending = plan
    chunk_size = int(manifest["chunk_size"])

    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        run = _Runner(encoder, cfg, device, log)
        where = hardware.describe_device(device)
        log(f"extracting {encoder.name}@{encoder.img_size} features on {where}: precision {cfg.precision}, engine {run.engine}")
        manifest["engine"] = run.engine_info | {"device": where}
        basis = None
        if cfg.pca == "global":
            basis = _global_basis(root, splits["train"], encoder, run, cfg, progress, log)
            manifest["map"] |= {
                "basis_file": PCA_FILE,
                "basis_sha256": rundir.file_sha256(root / PCA_FILE) if primary else None,
                "basis_bytes": (root / PCA_FILE).stat().st_size if primary else None,
                "explained_variance": basis.explained,
                "fit_vectors": basis.n_vectors,
                "fit_split": "train",
            }
        reducer = Reducer(encoder, cfg, map_size, basis)
        t0, n0 = time.perf_counter(), run.images
        for name, split in splits.items():
            mine = pending[name][rank::world]  # a balanced share of what is still missing
            _extract_split(root, name, split, mine, run, reducer, cfg, map_size, progress)
        encoded = distributed.all_reduce_sum(run.images - n0)
        distributed.barrier()  # every rank's chunks are on disk
        if encoded:
            dt = time.perf_counter() - t0
            where = f" by {world} processes" if world > 1 else ""
            log(f"encoded {encoded} images{where} in {dt:.1f} s ({encoded / dt:.2f} img/s)")
        if primary:
            _commit(root, manifest, splits, encoder, cfg, map_size, chunk_size)
    finally:
        torch.set_num_threads(old_threads)
    distributed.barrier()  # the store is complete before any rank opens it
    return FeatureStore.open(root)


def _checked_encoder(cfg: ExtractConfig, encoder):
    """The encoder ``cfg`` names (built when None is given), checked against ``cfg``."""
    if encoder is None:
        from lvmlt.encoders import build_encoder

        encoder = build_encoder(cfg.encoder, cfg.img_size or None, cfg.checkpoint)
    elif encoder.name != cfg.encoder or (cfg.img_size and cfg.img_size != encoder.img_size):
        raise ValueError(f"encoder {encoder.name}@{encoder.img_size} does not match the config")
    encoder.check_levels(cfg.levels)
    return encoder


def _commit(root: Path, manifest: dict, splits: dict, encoder, cfg: ExtractConfig, map_size: int, chunk_size: int):
    """Rank 0, every chunk on disk: assemble each split's arrays, then write the complete manifest."""
    template = {
        k: v.astype(cfg.dtype)
        for k, v in _empty_rows(0, encoder.out_channels, map_size, encoder.level_channels, cfg.levels).items()
    }
    for name, split in splits.items():
        if "checksums" not in manifest["splits"][name]:  # not an intact split kept by a repair
            manifest["splits"][name] |= _assemble_split(root, name, len(split), template, chunk_size)
    manifest["complete"] = True
    write_manifest(root, manifest)  # the commit point
    shutil.rmtree(root / CHUNKS, ignore_errors=True)


EXTRACT_TIMEOUT_MINUTES = 240  # ranks wait at most this long for each other (uneven shards, slow disks)


def _quiet(_msg: str) -> None:
    """The log of ranks other than 0: status lines are printed once, by rank 0."""


def _on_primary(fn):
    """Run ``fn`` on rank 0 only and hand its result to every rank.

    If it fails on rank 0, every rank raises: a UserError with the same message on the
    others (so ``torchrun`` reports one clear error rather than a hung collective).
    """
    rank, world = distributed.world()
    if world == 1:
        return fn()
    box: list = [None]
    if rank == 0:
        try:
            box[0] = ("ok", fn())
        except BaseException as e:
            box[0] = ("error", str(e))
            distributed.broadcast_object(box)
            raise
    distributed.broadcast_object(box)
    if box[0][0] == "error":
        raise UserError(f"rank 0 stopped the extraction: {box[0][1]}")
    return box[0][1]


def _open_or_create(root, bundle, cfg, encoder, provenance, map_size, resume, overwrite, log):
    """Check or create the store in ``root``; None when it is complete already.

    Returns:
        (manifest, pending): the manifest as written (not yet complete) and, per split, the
        chunk jobs ``[(chunk, indices)]`` that have no valid file yet.
    """
    splits = bundle.splits()
    existing = read_manifest(root) if root.is_dir() else None
    if existing is not None and overwrite:
        _wipe_store(root)
        existing = None
    if existing is not None:
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
        chunk_size = int(existing["chunk_size"])  # chunk boundaries are fixed by the first run
        _clean_tmp_files(root)
    else:
        if root.is_dir() and any(p.name != locks.LOCK_FILE for p in root.iterdir()):
            raise UserError(
                f"{str(root)!r} is not empty and holds no feature store",
                fix="choose an empty --out directory",
            )
        chunk_size = cfg.chunk_size

    manifest = {
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
        "splits": {name: {"n": len(s), "fingerprint": s.fingerprint()} for name, s in splits.items()},
    }
    intact = _intact_splits(root, existing, found) if existing is not None else {}
    manifest["splits"] |= intact
    write_manifest(root, manifest)
    pending = {
        name: [
            (c, idx)
            for c, idx in _chunk_jobs(len(split), chunk_size)
            if name not in intact and not _chunk_ok(_chunk_path(root, name, c), len(idx))
        ]
        for name, split in splits.items()
    }
    return manifest, pending


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


def _global_basis(root, train, encoder, run, cfg: ExtractConfig, progress: bool, log) -> PcaBasis:
    """Load the basis of an interrupted run, or fit it on a seeded sample of train images."""
    path = root / PCA_FILE
    # Every rank looks before any rank can write (the write follows the all-reduce below).
    if distributed.all_reduce_sum(int(path.is_file())) == distributed.world()[1]:
        with np.load(path, allow_pickle=False) as a:
            return PcaBasis.from_arrays(a)
    n = len(train)
    if n == 0:
        raise UserError(
            "the global PCA needs training images, and the train split is empty", fix="use pca=per_image"
        )
    k = min(cfg.pca_images, n)
    sample = np.sort(np.random.default_rng(cfg.pca_seed).choice(n, size=k, replace=False)).tolist()
    acc = CovarianceAccumulator(encoder.out_channels)
    fitter = Reducer(encoder, cfg, 0, None)
    rank, world = distributed.world()
    mine = sample[rank::world]
    bar = _progress(len(mine), "fit PCA (train sample)", progress)
    for batch in iter_batches(train, encoder, [(0, mine)], cfg.batch_size, cfg.workers, cfg.skip_bad_images):
        if batch.x is not None:
            acc.add(fitter.spatial_vectors(run(batch.x), batch.sizes))
        bar.update(len(batch.indices) + len(batch.bad))
    bar.close()
    acc.n = distributed.all_reduce_sum(acc.n)  # the sums of every rank's share: one basis
    distributed.all_reduce_(acc.sum, acc.outer)
    basis = acc.fit()
    if rank == 0:
        atomic_save_npz(path, **basis.to_arrays(), sample=np.asarray(sample, dtype=np.int64))
    distributed.barrier()
    log(
        f"global PCA fitted on {basis.n_vectors} spatial vectors of {k} train images "
        f"(first component explains {100 * basis.explained:.1f} % of the variance)"
    )
    return basis


def _extract_split(root, name, split, jobs, run, reducer, cfg, map_size, progress) -> None:
    """Encode and write the chunks ``jobs`` = [(chunk, indices)] of one split."""
    encoder = reducer.encoder
    if not jobs:
        return
    bar = _progress(sum(len(idx) for _, idx in jobs), f"extract {name}", progress)
    sizes = dict(jobs)
    parts: dict[int, list] = {}
    for batch in iter_batches(split, encoder, jobs, cfg.batch_size, cfg.workers, cfg.skip_bad_images):
        parts.setdefault(batch.key, []).append(
            (
                batch.indices,
                reducer.reduce(run(batch.x), batch.sizes) if batch.x is not None else None,
                batch.bad,
            )
        )
        bar.update(len(batch.indices) + len(batch.bad))
        idx = sizes[batch.key]
        if sum(len(p[0]) + len(p[2]) for p in parts[batch.key]) == len(idx):
            _write_chunk(root, name, batch.key, idx, parts.pop(batch.key), encoder, cfg, map_size)
    bar.close()


def _write_chunk(root, name, c, idx, parts, encoder, cfg, map_size) -> None:
    """Assemble one chunk's rows (zeros for bad images) and write it atomically."""
    rows = _empty_rows(len(idx), encoder.out_channels, map_size, encoder.level_channels, cfg.levels)
    bad: dict[int, str] = {}
    start = idx[0]
    for indices, reduced, bad_part in parts:
        bad |= bad_part
        if reduced is not None:
            for key, arr in reduced.items():
                rows[key][np.asarray(indices) - start] = arr
    dtype = np.dtype(cfg.dtype)
    arrays = {k: v.astype(dtype) for k, v in rows.items()}
    arrays["bad_index"] = np.asarray(sorted(bad), dtype=np.int64)
    arrays["bad_reason"] = np.asarray([bad[i] for i in sorted(bad)], dtype=np.str_)
    atomic_save_npz(_chunk_path(root, name, c), **arrays)


def _assemble_split(root: Path, name: str, n: int, template: dict[str, np.ndarray], chunk_size: int) -> dict:
    """Concatenate a split's chunks into memory-mappable .npy files, each written atomically.

    Args:
        template: zero-row arrays giving every stored key's row shape and dtype.
    """
    files = {key: f"{name}/{key}.npy" for key in template}
    try:
        return _write_split_files(root, name, n, template, chunk_size, files)
    except BaseException:
        for rel in files.values():  # the chunks stay: a resumed run assembles again
            tmp_name(root / rel).unlink(missing_ok=True)
        raise


def _preallocate(path: Path) -> None:
    """Give a new memory-mapped file its blocks now: a full disk is then an OSError here,
    not a SIGBUS when a mapped page is first written."""
    import errno

    with open(path, "rb+") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            # a file system without fallocate: mapped writes as before


def _write_split_files(root: Path, name: str, n: int, template: dict, chunk_size: int, files: dict) -> dict:
    from numpy.lib.format import open_memmap

    outs = {}
    with rundir.writing(root / name):
        (root / name).mkdir(parents=True, exist_ok=True)
    for key, t in template.items():
        with rundir.writing(root / files[key]):
            outs[key] = open_memmap(tmp_name(root / files[key]), mode="w+", dtype=t.dtype, shape=(n, *t.shape[1:]))
            _preallocate(tmp_name(root / files[key]))
    bad: dict[str, str] = {}
    for c, idx in _chunk_jobs(n, chunk_size):
        with np.load(_chunk_path(root, name, c), allow_pickle=False) as z:
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
