"""The streaming classify loop: decode -> inputs -> (encode -> reduce) -> classify, in batches.

Images are decoded a few batches ahead by threads, encoded and reduced one by one as the
feature store would hold them, and classified in batches; every batch is yielded as soon as
it is classified, so memory stays flat in the number of images. The *model* is the object
:mod:`lvmlt.deploy.predictor` describes (a run directory or a bundle). Imports neither
torch nor anything of lvmlt that does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from lvmlt import inputs


def auto_batch_size(spec: dict) -> int:
    """Images per classifier call: 256 at the CNN's 48 px (or without a CNN), fewer for larger
    inputs (the same pixels per call, at least 16). Calls between the encoder's images cost
    more than their own time on a small CPU (both engines share the cores), so fewer, larger
    calls: on 2 cores, 256 images per call classified ELPV at the extraction's rate, 32 at 0.85 of it."""
    if inputs.IMAGE not in spec["inputs"]:
        return 256
    side = int(spec["image"]["size"])
    return max(16, min(256, int(256 * (48 / side) ** 2)))


@dataclass
class Item:
    """One image on its way through the loop."""

    name: str
    hw: tuple[int, int] | None = None
    image: np.ndarray | None = None  # the CNN's input
    sam: np.ndarray | None = None  # the encoder's input
    error: str | None = None


def prepare(model, name: str, opener: Callable) -> Item:
    """Decode one image into the model's inputs; a failure is the item's ``error``, not raised."""
    item = Item(name)
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


def _decoded(model, sources: Iterator[tuple[str, Callable]], workers: int, ahead: int) -> Iterator[Item]:
    """Items in order, decoded by ``workers`` threads up to ``ahead`` images in advance."""
    if workers <= 0:
        for name, opener in sources:
            yield prepare(model, name, opener)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lvmlt-decode") as pool:
        pending: deque = deque()
        for name, opener in sources:
            pending.append(pool.submit(prepare, model, name, opener))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def sam_features(model, item: Item, encoded: dict | None = None) -> dict[str, np.ndarray]:
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


def batch_inputs(model, items: list[Item], feats: list[dict]) -> dict[str, np.ndarray]:
    """The classifier's batch of ``items``: stacked CNN inputs and normalised SAM features."""
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
    items: list[Item] = []
    feats: list[dict] = []

    def flush():
        good = [i for i, it in enumerate(items) if it.error is None]
        logits = None
        if good:
            logits = np.asarray(model.classify(batch_inputs(model, [items[i] for i in good], [feats[i] for i in good])),
                                dtype=np.float32)
        out = ([it.name for it in items], logits, [it.error for it in items])
        items.clear()
        feats.clear()
        return out

    for item in _decoded(model, iter(sources), workers, ahead=max(4, 2 * batch_size)):
        if item.error is None and model.sam_keys:
            try:
                feats.append(sam_features(model, item))
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
