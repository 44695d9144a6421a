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

Images stream: paths are listed lazily, decoded a few batches ahead by threads, encoded,
reduced and classified in batches; without adaptation every row is written as soon as it
is known, so memory stays flat in the number of images. Adaptation needs every image's
logits (4 bytes x classes per image) before the first adapted row can be written.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvmlt import inputs
from lvmlt.errors import UserError

IMAGE_EXTENSIONS = inputs.IMAGE_EXTENSIONS
ADAPT_METHODS = ("none", "mapls", "mlls", "bbse")
#: Adaptation needs at least this many images per class in the batch (and MIN_ADAPT_IMAGES in
#: all). Measured (benchmarks/results/adaptation/, CE runs on ELPV, MNIST-LT and
#: Fashion-MNIST-LT, 8 and 10 classes): under a shifted mix MAPLS's estimate is closer to the
#: truth than the training prior from 10 images on (the smallest batch swept), and without a
#: shift adapting stops costing top-1 on MNIST-LT from 20 on; the rule keeps a margin above both.
ADAPT_IMAGES_PER_CLASS = 2
MIN_ADAPT_IMAGES = 20


def auto_batch_size(spec: dict) -> int:
    """Images per classifier call: 256 at the CNN's 48 px (or without a CNN), fewer for larger
    inputs (the same pixels per call, at least 16). Calls between the encoder's images cost
    more than their own time on a small CPU (both engines share the cores), so fewer, larger
    calls: on 2 cores, 256 images per call classified ELPV at the extraction's rate, 32 at 0.85 of it."""
    if inputs.IMAGE not in spec["inputs"]:
        return 256
    side = int(spec["image"]["size"])
    return max(16, min(256, int(256 * (48 / side) ** 2)))


def min_adapt_images(num_classes: int) -> int:
    """The smallest batch :func:`adapt` estimates a prior from."""
    return max(MIN_ADAPT_IMAGES, ADAPT_IMAGES_PER_CLASS * num_classes)


# ---------------------------------------------------------------------------------------
# What to classify: image files, folders, list files -> (name, opener), lazily
# ---------------------------------------------------------------------------------------
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
                with open(list_file, encoding="utf-8") as f:
                    for line in f:
                        text = line.strip()
                        if text and not text.startswith("#"):
                            yield text if os.path.isabs(text) else str(base / text)
            except OSError as e:
                raise UserError(f"cannot read {list_file} ({e.strerror})", fix="pass a text file of image paths") from None

    for p in named():
        path = Path(p)
        if path.is_dir():
            yield from walk_images(path, warn)
        else:
            yield path  # a missing or unreadable file is reported as a bad image, in its place


# ---------------------------------------------------------------------------------------
# Decode -> inputs
# ---------------------------------------------------------------------------------------
@dataclass
class _Item:
    name: str
    hw: tuple[int, int] | None = None
    image: np.ndarray | None = None  # the CNN's input
    sam: np.ndarray | None = None  # the encoder's input
    error: str | None = None


def _prepare(model, name: str, opener: Callable) -> _Item:
    item = _Item(name)
    try:
        img = opener()
        if img.width < 1 or img.height < 1:
            raise ValueError("the image is empty")
        item.hw = (img.height, img.width)
        if inputs.IMAGE in model.needs:
            item.image = inputs.cnn_input(img, model.spec["image"]["size"])
        if model.sam_keys:
            item.sam = inputs.sam_input(img, model.spec["features"]["img_size"], model.sam_norm)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... for bad files
        words = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0] if str(e) else ""
        item.error = f"{type(e).__name__}: {words}" if words else type(e).__name__
    return item


def _decoded(model, sources: Iterator[tuple[str, Callable]], workers: int, ahead: int) -> Iterator[_Item]:
    """Items in order, decoded by ``workers`` threads up to ``ahead`` images in advance."""
    if workers <= 0:
        for name, opener in sources:
            yield _prepare(model, name, opener)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lvmlt-decode") as pool:
        pending: deque = deque()
        for name, opener in sources:
            pending.append(pool.submit(_prepare, model, name, opener))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _features(model, item: _Item, encoded: dict | None = None) -> dict[str, np.ndarray]:
    """The stored form of one image's SAM features, as the store would hold them.

    Args:
        encoded: the encoder's outputs for ``item`` when already computed (else encoded here).
    """
    f = model.spec["features"]
    outs = {k: v[0] for k, v in (encoded if encoded is not None else model.encode(item.sam[None])).items()}
    pca = model.pca
    red = inputs.reduce_outputs(
        outs,
        item.hw,
        img_size=f["img_size"],
        crop_padding=f["crop_padding"],
        map_size=f["map_size"],
        pca_mean=pca[0] if pca else None,
        pca_component=pca[1] if pca else None,
        levels=f["levels"],
    )
    dtype = np.dtype(f["dtype"])  # what the model was trained on went through the store's dtype
    return {k: red[k].astype(dtype).astype(np.float32) for k in model.sam_keys}


def _batch_inputs(model, items: list[_Item], feats: list[dict]) -> dict[str, np.ndarray]:
    batch = {}
    if inputs.IMAGE in model.needs:
        batch[inputs.IMAGE] = np.stack([it.image for it in items])
    for k in model.sam_keys:
        a = np.stack([f[k] for f in feats])
        batch[k] = model.norms[k](a) if k in model.norms else a
    return batch


def logits_of(model, sources: Iterable[tuple[str, Callable]], batch_size: int = 32, workers: int = 1,
              progress=None, on_error=None) -> Iterator[tuple[list[str], np.ndarray | None, list[str | None]]]:
    """Classify ``sources`` = [(name, opener)] batch by batch.

    Yields:
        (names, logits of the good images (G x C, or None), errors per name: None = classified).
    """
    items: list[_Item] = []
    feats: list[dict] = []

    def flush():
        good = [i for i, it in enumerate(items) if it.error is None]
        logits = None
        if good:
            logits = np.asarray(model.classify(_batch_inputs(model, [items[i] for i in good], [feats[i] for i in good])),
                                dtype=np.float32)
        out = ([it.name for it in items], logits, [it.error for it in items])
        items.clear()
        feats.clear()
        return out

    for item in _decoded(model, iter(sources), workers, ahead=max(4, 2 * batch_size)):
        if item.error is None and model.sam_keys:
            try:
                feats.append(_features(model, item))
            except Exception as e:  # an image the encoder cannot take (e.g. 1 x 1 pixel)
                item.error = f"{type(e).__name__}: {str(e)[:120]}"
                feats.append({})
        else:
            feats.append({})
        if item.error is not None and on_error is not None:
            on_error(item.name, item.error)
        items.append(item)
        if progress is not None:
            progress.update(1)
        if len(items) >= batch_size:
            yield flush()
    if items:
        yield flush()


# ---------------------------------------------------------------------------------------
# Probabilities, groups, adaptation
# ---------------------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    from lvmlt.calibration.label_shift import log_softmax

    return np.exp(log_softmax(logits))


def class_groups(spec: dict) -> list[str]:
    """many / medium / few of every class, by its training count and the run's thresholds."""
    from lvmlt.config import class_group

    many, few = spec["thresholds"]["many"], spec["thresholds"]["few"]
    return [class_group(n, many, few) for n in spec["train_counts"]]


@dataclass
class Adaptation:
    """The class prior estimated on the classified images, and how logits are re-weighted."""

    method: str
    prior: np.ndarray  # estimated target prior (C,)
    source_prior: np.ndarray  # what the calibrated model assumes (C,)
    temperature: float
    bias: np.ndarray
    info: dict = field(default_factory=dict)

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        from lvmlt.calibration.label_shift import apply_bcts

        return apply_bcts(logits, self.temperature, self.bias)

    def adapted(self, logits: np.ndarray) -> np.ndarray:
        """Logits of the adapted posterior: calibrated + log q - log p_s."""
        return self.calibrated(logits) + np.log(np.maximum(self.prior, 1e-12)) - np.log(self.source_prior)


def adapt(spec: dict, logits: np.ndarray, method: str, val_logits: np.ndarray, val_labels: np.ndarray,
          force: bool = False) -> Adaptation:
    """Estimate the class prior of ``logits`` (unlabelled) with ``method``, after bias-corrected
    temperature scaling fitted on the validation split (the run's ``calibration``).

    The source prior is the validation label histogram (+0.5 per class), the distribution
    the calibrated model describes.

    Raises:
        UserError: too few images for an estimate that means anything (unless ``force``),
            or a run without validation predictions.
    """
    from lvmlt.calibration.label_shift import CALIBRATORS, apply_bcts, bcts_source_prior

    c = len(spec["classes"])
    need = min_adapt_images(c)
    if logits.shape[0] < need and not force:
        raise UserError(
            f"--adapt {method} needs at least {need} images to estimate the class mix of {c} classes, "
            f"and {logits.shape[0]} were classified (below that the estimated mix is noise: "
            "benchmarks/results/adaptation measures where it starts to beat the training prior)",
            fix="classify more images at once, or use --adapt none",
        )
    cal = spec.get("calibration")
    if not cal:
        raise UserError("adaptation needs the run's validation predictions, and this run has none",
                        fix="use --adapt none")
    t, b = float(cal["temperature"]), np.asarray(cal["bias"], dtype=np.float64)
    ps = bcts_source_prior(cal["val_label_counts"])
    keep = val_labels >= 0
    val_cal, target = apply_bcts(val_logits[keep], t, b), apply_bcts(logits, t, b)
    est = CALIBRATORS.get(method)(target, ps, val_logits=val_cal, val_labels=val_labels[keep])
    return Adaptation(method, est.target_prior, ps, t, b, dict(est.info))


# ---------------------------------------------------------------------------------------
# Output rows
# ---------------------------------------------------------------------------------------
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
        self.tmp = self.out.with_name(f".{self.out.name}.tmp-{os.getpid()}")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.tmp, "w", newline="", encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write {self.out} ({e.strerror})", fix="choose a writable --out") from None
        if self.kind == "csv":
            self.csv = csv.writer(self.f)
            head = ["path", "status", "class", "probability", "group", "top_k"]
            if adapted:
                head += ["adapted_class", "adapted_probability", "adapted_group", "adapted_top_k"]
            self.csv.writerow(head)

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
            if error:
                print(f"{name}\terror: {error}")
            else:
                text = "\t".join(f"{c} {p:.4f} ({g})" for c, p, g, _ in cells)
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

    def abort(self) -> None:
        if self.f is not None:
            self.f.close()
            self.tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# The whole job
# ---------------------------------------------------------------------------------------
def count_sources(paths, list_file) -> int:
    """How many images a job names (a listing pass: names only, for the ETA)."""
    return sum(1 for _ in iter_sources(paths, list_file, warn=lambda s: None))


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
    topk = max(1, min(int(topk), len(classes)))
    batch_size = batch_size if batch_size > 0 else auto_batch_size(spec)
    sources, total = _sources(paths, list_file, sources)
    adapting = adapt_method != "none"
    writer = Writer(out, classes, class_groups(spec), topk, adapting, show)
    bar = _progress(total, progress)

    def on_error(name, error):
        if strict:
            raise UserError(f"cannot read image {name} ({error})", fix="remove it, or drop --strict to skip it")
        bar.write(f"lvmlt: skipped {name}: {error}", file=sys.stderr)

    t0 = time.perf_counter()
    try:
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
                _write_prior(prior_file, classes, est, raw.shape[0])
                result["prior_file"] = str(prior_file)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return result


def _sources(paths, list_file, sources) -> tuple[Iterable[tuple[str, Callable]], int]:
    """``(sources, how many)``: the given ``sources``, or the images of ``paths`` / ``list_file``."""
    if sources is not None:
        sources = list(sources)
        return sources, len(sources)
    total = count_sources(paths, list_file)
    if total == 0:
        raise UserError(f"no images found in {' '.join(map(str, paths)) or list_file}",
                        fix=f"pass image files or folders holding {', '.join(IMAGE_EXTENSIONS)} files")
    return ((str(p), _opener(p)) for p in iter_sources(paths, list_file)), total


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


def _opener(path: Path) -> Callable:
    return lambda: inputs.open_image(path)


def _write_prior(path: Path, classes, est: Adaptation, n: int) -> None:
    rec = {"method": est.method, "images": n,
           "estimated_prior": {c: float(p) for c, p in zip(classes, est.prior, strict=True)},
           "source_prior": {c: float(p) for c, p in zip(classes, est.source_prior, strict=True)},
           "info": est.info}
    from lvmlt import rundir

    with rundir.writing(path, then="free space, or choose another --out"):
        rundir.atomic_write_json(path, rec, indent=1)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="classify", unit="img", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
