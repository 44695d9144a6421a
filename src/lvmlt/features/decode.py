"""Decoding images ahead of the encoder: the first stage of :func:`lvmlt.features.extract`.

Images are read, decoded and preprocessed by background threads a few batches ahead of the
encoder. PIL decoding/resizing and the tensor normalisation release the GIL, so threads
overlap them with the encoder without copying the dataset into worker processes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image

from lvmlt.errors import BadImageError


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


class Batch:
    """Preprocessed inputs for some samples of one chunk; ``bad`` ones are left out of ``x``."""

    def __init__(self, key, indices, x, sizes, bad):
        self.key, self.indices, self.x, self.sizes, self.bad = key, indices, x, sizes, bad


def prepare_batch(split, encoder, key, indices: Sequence[int], skip_bad: bool) -> Batch:
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
    return Batch(key, good, x, sizes, bad)


def iter_batches(
    split, encoder, jobs: Sequence[tuple], batch_size: int, workers: int, skip_bad: bool
) -> Iterator[Batch]:
    """Decode and preprocess ``jobs`` = [(key, indices)] in order, in batches of
    ``batch_size``, ``workers`` threads ahead (0: in this thread)."""
    tasks = [(key, idx[s : s + batch_size]) for key, idx in jobs for s in range(0, len(idx), batch_size)]
    if workers == 0:
        for key, idx in tasks:
            yield prepare_batch(split, encoder, key, idx, skip_bad)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lvmlt-decode") as pool:
        pending: deque = deque()
        ahead = 2 * workers
        it = iter(tasks)
        for key, idx in it:
            pending.append(pool.submit(prepare_batch, split, encoder, key, idx, skip_bad))
            if len(pending) >= ahead:
                break
        while pending:
            batch = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(prepare_batch, split, encoder, nxt[0], nxt[1], skip_bad))
            yield batch
