"""Classify images with a trained model, and adapt to the class mix of what is classified.

This module imports neither torch nor anything of lvmlt that does: the same code runs a
model from a run directory (:mod:`lvmlt.deploy.run_model`, torch) and from an exported
bundle (:mod:`lvmlt.deploy.bundle`, ONNX Runtime or OpenVINO). A *model* here is any object
with:

* ``spec``: the run's description (``model.json``: inputs, classes, counts, thresholds,
  image size, feature settings, calibration);
* ``sam_norm``: the encoder's input normalisation (``sam`` or ``minmax``);
* ``norms``: ``{key: FeatureNorm}`` fitted on the training split, ``pca``: (mean,
  component) or None;
* ``encode(x)``: 1 x 3 x S x S float32 -> ``{"out": 1 x C x h x w, level: ...}``;
* ``classify(batch)``: ``{input key: B x ...}`` -> B x C float32 logits;
* ``val_logits`` / ``val_labels``: the validation predictions adaptation is checked against.

The job is split along its seams: :mod:`~lvmlt.deploy.sources` (what to classify),
:mod:`~lvmlt.deploy.stream` (decode, encode, reduce, classify in batches),
:mod:`~lvmlt.deploy.adaptation` (``--adapt``) and :mod:`~lvmlt.deploy.rows` (CSV, JSONL or
a table); this module runs them as one job, :func:`predict`, and every public name of
them can be imported from here.

Images stream: paths are listed lazily, decoded a few batches ahead by threads, encoded,
reduced and classified in batches; without adaptation every row is written as soon as it
is known, so memory stays flat in the number of images. Adaptation needs every image's
logits (4 bytes x classes per image) before the first adapted row can be written.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from lvmlt.deploy.adaptation import (
    ADAPT_IMAGES_PER_CLASS,
    ADAPT_METHODS,
    MIN_ADAPT_IMAGES,
    Adaptation,
    adapt,
    min_adapt_images,
    write_prior,
)
from lvmlt.deploy.rows import Writer, class_groups, printable, softmax, top_k
from lvmlt.deploy.sources import (
    IMAGE_EXTENSIONS,
    count_sources,
    is_image_name,
    iter_sources,
    resolve_sources,
    walk_images,
)
from lvmlt.deploy.stream import auto_batch_size, logits_of
from lvmlt.errors import UserError

__all__ = [
    "ADAPT_IMAGES_PER_CLASS", "ADAPT_METHODS", "IMAGE_EXTENSIONS", "MIN_ADAPT_IMAGES", "Adaptation", "Writer",
    "adapt", "auto_batch_size", "class_groups", "count_sources", "is_image_name", "iter_sources", "logits_of",
    "min_adapt_images", "predict", "softmax", "top_k", "walk_images",
]


def predict(
    model,
    paths: Iterable[str] = (),
    *,
    list_file: str | None = None,
    sources: Iterable[tuple[str, Callable]] | None = None,
    out: str | None = None,
    topk: int = 3,
    adapt_method: str = "none",
    strict: bool = False,
    batch_size: int = 0,
    workers: int = 1,
    progress: bool = True,
    force_adapt: bool = False,
    show: bool = True,
    log=None,
) -> dict:
    """Classify images with ``model``; write one row per image to ``out`` (or stdout).

    Args:
        paths: image files and folders (walked recursively, sorted).
        list_file: a text file with one image path per line (relative to its folder).
        sources: instead of paths, ``[(name, opener)]`` where ``opener()`` returns a PIL image.
        out: ``.csv`` or ``.jsonl``; None prints a table (``show``) or writes no rows.
        topk: how many classes each row lists.
        adapt_method: none | mapls | mlls | bbse (see :func:`adapt`).
        strict: stop at the first unreadable image instead of skipping it.
        batch_size: images per classifier call; 0 = :func:`auto_batch_size`.

    Returns:
        ``{"images", "classified", "skipped", "seconds", "images_per_second", "logits" (N x C of
        the classified images, raw), "names", "prior" (estimated, with adaptation)}``.
    """
    log = log or (lambda s: print(s, file=sys.stderr))
    if adapt_method not in ADAPT_METHODS:
        raise UserError(f"unknown --adapt {adapt_method!r}", fix=f"choose one of: {', '.join(ADAPT_METHODS)}")
    spec = model.spec
    classes = spec["classes"]
    if int(topk) < 1:
        raise UserError(f"--topk {topk} must be at least 1", fix="e.g. --topk 3")
    if int(topk) > len(classes):
        log(f"--topk {topk}: the model has {len(classes)} classes; listing all {len(classes)}")
    topk = min(int(topk), len(classes))
    if out is not None:
        _check_out(Path(out), list_file)
    batch_size = batch_size if batch_size > 0 else auto_batch_size(spec)
    sources, total = resolve_sources(paths, list_file, sources)
    adapting = adapt_method != "none"
    bar = _progress(total, progress)
    writer = None

    def on_error(name, error):
        if strict:
            raise UserError(f"cannot read image {name} ({error})", fix="remove it, or drop --strict to skip it")
        bar.write(f"lvmlt: skipped {printable(name)}: {error}", file=sys.stderr)

    t0 = time.perf_counter()
    try:
        writer = Writer(out, classes, class_groups(spec), topk, adapting, show)
        batches = logits_of(model, sources, batch_size, workers, bar, on_error)
        names, all_logits, errors = _classify(batches, writer, adapting)
        seconds = time.perf_counter() - t0
        good = [r for r in all_logits if r is not None]
        raw = np.stack(good) if good else np.zeros((0, len(classes)), np.float32)
        result = {"images": total, "classified": int(raw.shape[0]), "skipped": total - int(raw.shape[0]),
                  "seconds": seconds, "images_per_second": total / seconds if seconds > 0 else 0.0, "logits": raw}
        if adapting:
            est = adapt(spec, raw, adapt_method, model.val_logits, model.val_labels, force_adapt)
            _write_adapted(writer, names, errors, all_logits, softmax(raw), softmax(est.adapted(raw)))
            result |= {"prior": est.prior, "source_prior": est.source_prior, "adapt_info": est.info}
            if out:
                prior_file = Path(out).with_suffix(".prior.json")
                write_prior(prior_file, classes, est, raw.shape[0])
                result["prior_file"] = str(prior_file)
        writer.close()
    except BaseException:  # an error, Ctrl-C or SIGTERM: no temporary file stays behind
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    return result


def _check_out(out: Path, list_file) -> None:
    """``--out`` names a file lvmlt may replace: not a folder, not the list being read."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder", fix="name a .csv or .jsonl file, e.g. --out runs/preds.csv")
    if list_file is not None and out.exists() and Path(list_file).exists() and out.samefile(list_file):
        raise UserError(f"--out {out} is the --from list being read", fix="write the rows to another file")


def _classify(batches, writer: Writer, adapting: bool) -> tuple[list, list, list]:
    """Read ``(names, logits, errors)`` batches; without adaptation write each row as it comes.

    Returns:
        (names, logits, errors): with adaptation one entry per image (logits None for an
        unreadable one), to be written once the prior is known; without, only the logits
        of the classified images (names and errors stay empty).
    """
    names, all_logits, errors = [], [], []
    for batch_names, logits, batch_errors in batches:
        j = 0
        for name, err in zip(batch_names, batch_errors, strict=True):
            row = None
            if err is None:
                row, j = logits[j], j + 1
            if adapting:
                names.append(name)
                errors.append(err)
                all_logits.append(row)
            else:
                writer.write(name, err, None if row is None else softmax(row[None])[0])
                if row is not None:
                    all_logits.append(row)
    return names, all_logits, errors


def _write_adapted(writer: Writer, names, errors, all_logits, p_raw: np.ndarray, p_ad: np.ndarray) -> None:
    """One row per image, in input order: raw and adapted probabilities, or the image's error."""
    j = 0
    for name, err, row in zip(names, errors, all_logits, strict=True):
        if row is None:
            writer.write(name, err, None)
        else:
            writer.write(name, None, p_raw[j], p_ad[j])
            j += 1


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="classify", unit="img", disable=None if enabled else True, file=sys.stderr, dynamic_ncols=True)
