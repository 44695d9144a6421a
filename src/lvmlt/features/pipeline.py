"""``extract``: run a frozen encoder over every split and fill a feature store, resumably.

The pipeline streams through four stages: images are **decoded** by background threads a
few batches ahead (:mod:`lvmlt.features.decode`), **encoded** by the frozen encoder through
its engine (:class:`EncoderRunner`), each batch **reduced** at once to its stored form, a 256-d
vector and a one-channel map (:class:`Reducer`), and each chunk of ``chunk_size`` samples
**written** by the store's writer (:class:`~lvmlt.features.writer.StoreWriter`, which does
all file I/O of the store: create, resume, repair, chunks, commit). Nothing of size
N x 256 x h x w is ever held, so peak memory depends on the batch and chunk sizes, not on
the dataset.

With the global PCA (the default) the basis must exist before any map can be stored, so
a first pass runs the encoder over a seeded sample of training images and accumulates
the covariance of their spatial vectors (float64 sums, O(C^2) memory). Their encoder
outputs are kept (up to :data:`KEEP_SAMPLE_BYTES`) and reduced with the basis when the
main pass reaches them, so those images are not encoded twice; beyond that bound, for a
resumed run, and where the encoder runs several images per call (torch with batch_size
> 1, whose rounding may depend on the batch), they are encoded again.

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
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lvmlt import distributed, hardware, locks, rundir
from lvmlt.errors import UserError
from lvmlt.features.config import ExtractConfig, extract_precision
from lvmlt.features.decode import Batch, iter_batches, load_image  # noqa: F401 (load_image: the decode stage's entry)
from lvmlt.features.engines import choose_engine, compile_encoder
from lvmlt.features.pca import CovarianceAccumulator, PcaBasis, image_pca_map
from lvmlt.features.store import FeatureStore, expected_provenance, level_file_key
from lvmlt.features.writer import StoreWriter
from lvmlt.inputs import valid_cells


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
            rows[level_file_key(name)] = []
        for b, size_hw in enumerate(sizes):
            f = self.cells(out[b], size_hw)
            rows["vec"].append(f.mean(dim=(1, 2)))
            m = self.basis.project(f) if self.basis is not None else image_pca_map(f)
            rows["map"].append(_resize_map(m, self.map_size))
            for name in self.cfg.levels:
                rows[level_file_key(name)].append(self.cells(outputs[name][b], size_hw).mean(dim=(1, 2)))
        return {k: torch.stack(v).cpu().numpy() for k, v in rows.items()}

    def spatial_vectors(self, outputs: dict[str, torch.Tensor], sizes) -> torch.Tensor:
        """All valid cells of a batch as rows: (sum of cells) x C, for fitting the PCA."""
        out = outputs["out"].float()
        return torch.cat([self.cells(out[b], s).flatten(1).T for b, s in enumerate(sizes)])

    def empty_rows(self, n: int) -> dict[str, np.ndarray]:
        """``n`` rows of zeros (float32) of every stored key, in the order the store lists them."""
        enc = self.encoder
        rows = {"vec": np.zeros((n, enc.out_channels), np.float32), "map": np.zeros((n, 1, self.map_size, self.map_size), np.float32)}
        for name in self.cfg.levels:
            rows[level_file_key(name)] = np.zeros((n, enc.level_channels[name]), np.float32)
        return rows


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------
def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=None if enabled else True, file=sys.stderr, dynamic_ncols=True)


class EncoderRunner:
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
        # Images per call: batch_size, or with 0 (auto) one per stream of the engine (torch: one).
        self.batch_size = cfg.batch_size or (self.compiled.parallel if self.compiled is not None else 1)
        # An image's outputs do not depend on the others in its call (the compiled engines infer
        # each image on its own), so they may be kept and reused (the PCA sample's)
        self.image_by_image = self.compiled is not None or self.batch_size == 1
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


# ---------------------------------------------------------------------------------------
# The extraction: decode -> encode -> reduce -> write
# ---------------------------------------------------------------------------------------
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

    def setup():
        held.append(locks.hold(root, "feature store"))
        return StoreWriter.open(root, bundle, cfg, encoder, provenance, resume, overwrite, log)

    writer = _on_primary(setup)  # rank 0 touches the directory; every rank gets the writer or its error
    if writer is None:
        distributed.barrier()
        return FeatureStore.open(root, verify="size")  # rank 0 has just checked the hashes

    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        _fill(writer, bundle.splits(), encoder, cfg, device, provenance["map_size"], progress, log)
    finally:
        torch.set_num_threads(old_threads)
    distributed.barrier()  # the store is complete before any rank opens it
    return FeatureStore.open(root)


def _fill(writer: StoreWriter, splits: dict, encoder, cfg: ExtractConfig, device, map_size: int, progress, log):
    """Encode this rank's share of the pending chunks; rank 0 then commits the store."""
    rank, world = distributed.world()
    run = EncoderRunner(encoder, cfg, device, log)
    where = hardware.describe_device(device)
    log(f"extracting {encoder.name}@{encoder.img_size} features on {where}: precision {cfg.precision}, engine {run.engine}")
    writer.use_engine(run.engine_info | {"device": where})
    basis = None
    kept: dict = {}
    if cfg.pca == "global":
        basis = _global_basis(writer, splits["train"], encoder, run, cfg, progress, log, kept)
        writer.use_basis(basis)
    reducer = Reducer(encoder, cfg, map_size, basis)
    t0, n0 = time.perf_counter(), run.images
    for name, split in splits.items():
        mine = writer.pending[name][rank::world]  # a balanced share of what is still missing
        _extract_split(writer, name, split, mine, run, reducer, cfg, progress, kept if name == "train" else {})
    encoded = distributed.all_reduce_sum(run.images - n0)
    distributed.barrier()  # every rank's chunks are on disk
    if encoded:
        dt = time.perf_counter() - t0
        where = f" by {world} processes" if world > 1 else ""
        log(f"encoded {encoded} images{where} in {dt:.1f} s ({encoded / dt:.2f} img/s)")
    if rank == 0:
        writer.commit(reducer.empty_rows(0))


def _checked_encoder(cfg: ExtractConfig, encoder):
    """The encoder ``cfg`` names (built when None is given), checked against ``cfg``."""
    if encoder is None:
        from lvmlt.encoders import build_encoder

        encoder = build_encoder(cfg.encoder, cfg.img_size or None, cfg.checkpoint)
    elif encoder.name != cfg.encoder or (cfg.img_size and cfg.img_size != encoder.img_size):
        raise ValueError(f"encoder {encoder.name}@{encoder.img_size} does not match the config")
    encoder.check_levels(cfg.levels)
    return encoder


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


#: The PCA sample's encoder outputs kept for the main pass, at most (64 MobileSAM maps at
#: 1024 px are 256 MB in float32; at 256 px, 16 MB).
KEEP_SAMPLE_BYTES = 256 * 2**20


def _global_basis(
    writer: StoreWriter, train, encoder, run, cfg: ExtractConfig, progress: bool, log, kept: dict
) -> PcaBasis:
    """Load the basis of an interrupted run, or fit it on a seeded sample of train images;
    ``kept`` receives the sample's outputs, index -> (outputs, size), while they fit
    :data:`KEEP_SAMPLE_BYTES`."""
    # Every rank looks before any rank can write (the write follows the all-reduce below).
    if distributed.all_reduce_sum(int(writer.has_basis())) == distributed.world()[1]:
        return writer.load_basis()
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
    for batch in iter_batches(train, encoder, [(0, mine)], run.batch_size, cfg.workers, cfg.skip_bad_images):
        if batch.x is not None:
            outputs = run(batch.x)
            acc.add(fitter.spatial_vectors(outputs, batch.sizes))
            if run.image_by_image:  # else the main pass's batches may round them otherwise
                _keep(kept, outputs, batch)
        bar.update(len(batch.indices) + len(batch.bad))
    bar.close()
    acc.n = distributed.all_reduce_sum(acc.n)  # the sums of every rank's share: one basis
    distributed.all_reduce_(acc.sum, acc.outer)
    basis = acc.fit()
    if rank == 0:
        writer.save_basis(basis, sample)
    distributed.barrier()
    log(
        f"global PCA fitted on {basis.n_vectors} spatial vectors of {k} train images "
        f"(first component explains {100 * basis.explained:.1f} % of the variance)"
    )
    return basis


def _keep(kept: dict, outputs: dict, batch: Batch) -> None:
    """Keep each image's encoder outputs, as a batch of one in the memory layout they came in
    (copies, not views of the batch), while they fit."""
    used = sum(t.nbytes for out, _ in kept.values() for t in out.values())
    for b, i in enumerate(batch.indices):
        one = {k: v[b : b + 1].clone() for k, v in outputs.items()}
        used += sum(t.nbytes for t in one.values())
        if used > KEEP_SAMPLE_BYTES:
            return
        kept[i] = (one, batch.sizes[b])


def _extract_split(
    writer: StoreWriter, name, split, jobs, run, reducer: Reducer, cfg: ExtractConfig, progress, kept: dict
) -> None:
    """Decode, encode, reduce and write the chunks ``jobs`` = [(chunk, indices)] of one split;
    the images in ``kept`` (index -> (outputs, size)) are reduced from there, not encoded."""
    if not jobs:
        return
    bar = _progress(sum(len(idx) for _, idx in jobs), f"extract {name}", progress)
    sizes = dict(jobs)
    parts: dict[int, list] = {}
    todo = []
    for key, idx in jobs:
        hits = [i for i in idx if i in kept]
        for i in hits:  # reduced one by one: a stacked copy could change the layout, and the rounding
            outputs, size = kept.pop(i)
            parts.setdefault(key, []).append((Batch(key, [i], None, [size], {}), reducer.reduce(outputs, [size])))
        bar.update(len(hits))
        if len(hits) == len(idx):
            _write_chunk(writer, name, key, idx, parts.pop(key), reducer)
        else:
            done = set(hits)
            todo.append((key, [i for i in idx if i not in done]))
    for batch in iter_batches(split, reducer.encoder, todo, run.batch_size, cfg.workers, cfg.skip_bad_images):
        reduced = reducer.reduce(run(batch.x), batch.sizes) if batch.x is not None else None
        parts.setdefault(batch.key, []).append((batch, reduced))
        bar.update(len(batch.indices) + len(batch.bad))
        idx = sizes[batch.key]
        if sum(len(b.indices) + len(b.bad) for b, _ in parts[batch.key]) == len(idx):
            _write_chunk(writer, name, batch.key, idx, parts.pop(batch.key), reducer)
    bar.close()


def _write_chunk(writer: StoreWriter, name: str, c: int, idx: list[int], parts: list, reducer: Reducer) -> None:
    """Assemble one chunk's rows from its batches (zeros for bad images) and hand it to the writer."""
    rows = reducer.empty_rows(len(idx))
    bad: dict[int, str] = {}
    start = idx[0]
    for batch, reduced in parts:
        bad |= batch.bad
        if reduced is not None:
            for key, arr in reduced.items():
                rows[key][np.asarray(batch.indices) - start] = arr
    writer.write_chunk(name, c, rows, bad)
