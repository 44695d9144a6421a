"""Training samplers: how often each class is drawn per epoch.

Registered in :data:`SAMPLERS` (the choices of ``data.sampler``):

- ``instance``: every image once per epoch in a seeded random order (class c is drawn in
  proportion to its size n_c).
- ``class_balanced``: each draw picks a class uniformly (among classes with images),
  then an image of it uniformly, with replacement.
- ``sqrt``: like ``class_balanced`` but class c is picked with probability
  proportional to sqrt(n_c), halfway between the two above.

Every sampler is reproducible: the order of epoch e depends only on ``(seed, e)``. Call
``set_epoch(e)`` before each epoch (as with ``DistributedSampler``); when it is not
called, each ``iter()`` advances the epoch by one, so epochs still differ. With
``world_size > 1`` every rank draws the same global order and keeps every
``world_size``-th index from ``rank`` on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from lvmlt.registry import Registry

SAMPLERS: Registry[Callable[..., ClassAwareSampler]] = Registry("sampler")


class ClassAwareSampler(torch.utils.data.Sampler[int]):
    """Draws ``num_samples`` indices per epoch; subclasses choose the class probabilities.

    Args:
        labels: class per training sample, shape (N,).
        seed: base seed; epoch e uses the generator seeded with ``(seed, e)``.
        num_samples: indices per epoch (over all ranks). Default: N.
        rank, world_size: this process's share under data parallelism.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        seed: int = 0,
        num_samples: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or self.labels.size == 0:
            raise ValueError("a sampler needs a non-empty 1-D array of labels")
        self.seed = int(seed)
        self.num_samples = int(num_samples) if num_samples is not None else len(self.labels)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        counts = np.bincount(self.labels)
        self.class_counts = counts  # shape (C,)
        # Indices grouped by class: class c owns by_class[offsets[c] : offsets[c] + counts[c]].
        self._by_class = np.argsort(self.labels, kind="stable")
        self._offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` draw epoch ``epoch``'s order."""
        self.epoch = int(epoch)

    def class_probabilities(self) -> np.ndarray:
        """Probability of drawing each class, shape (C,)."""
        raise NotImplementedError

    def _global_order(self, rng: np.random.Generator) -> np.ndarray:
        p = self.class_probabilities()
        classes = rng.choice(len(p), size=self.num_samples, p=p)
        within = rng.integers(0, self.class_counts[classes])  # uniform image of the class
        return self._by_class[self._offsets[classes] + within]

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch])
        self.epoch += 1
        order = self._global_order(rng)[self.rank :: self.world_size]
        return iter(order.tolist())

    def __len__(self) -> int:
        # Ranks past the remainder get one index fewer, as the slicing in __iter__ gives.
        return len(range(self.rank, self.num_samples, self.world_size))


@SAMPLERS.register("instance")
class InstanceSampler(ClassAwareSampler):
    """Each image once per epoch, shuffled; more epochs' worth when num_samples > N."""

    def class_probabilities(self) -> np.ndarray:
        return self.class_counts / self.class_counts.sum()

    def _global_order(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.labels)
        reps = -(-self.num_samples // n)  # ceil: whole shuffled passes, then truncate
        return np.concatenate([rng.permutation(n) for _ in range(reps)])[: self.num_samples]


@SAMPLERS.register("class_balanced")
class ClassBalancedSampler(ClassAwareSampler):
    """Every class with images equally likely, then an image of it uniformly."""

    def class_probabilities(self) -> np.ndarray:
        present = (self.class_counts > 0).astype(np.float64)
        return present / present.sum()


@SAMPLERS.register("sqrt")
class SqrtSampler(ClassAwareSampler):
    """Class c drawn with probability proportional to sqrt(n_c)."""

    def class_probabilities(self) -> np.ndarray:
        w = np.sqrt(self.class_counts.astype(np.float64))
        return w / w.sum()


def build_sampler(
    name: str,
    labels: Sequence[int] | np.ndarray,
    seed: int,
    num_samples: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> ClassAwareSampler:
    """The sampler registered as ``name`` (see :data:`SAMPLERS`).

    Args:
        name: "instance", "class_balanced" or "sqrt".
        labels: class per training sample, shape (N,).
        seed: base seed; the order of epoch e depends only on (seed, e).
        num_samples: indices per epoch (default N).
        rank, world_size: data-parallel share.

    Returns:
        A ``torch.utils.data.Sampler`` with ``set_epoch(epoch)``.
    """
    return SAMPLERS.get(name)(labels, seed, num_samples, rank=rank, world_size=world_size)
