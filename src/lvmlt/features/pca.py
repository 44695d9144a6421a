"""The one-channel SAM map F_PCA: the encoder output reduced to its first principal component.

Each spatial cell of the encoder output is a C-dimensional vector (C = 256). The map keeps,
per cell, that vector's coordinate along the first principal direction.

* ``global`` (default): one direction fitted on the spatial vectors of a sample of
  *training* images, so maps of different images share one axis and are comparable.
* ``per_image``: each image's own first direction (the paper's text admits both readings).

An eigenvector's sign is arbitrary, so we fix it: the loading with the largest magnitude is
made positive. Without this, two fits on similar data could return mirror-image maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def fix_sign(w: torch.Tensor) -> torch.Tensor:
    """Flip a direction (..., C) so that its largest-magnitude entry is positive."""
    idx = w.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(torch.gather(w, -1, idx))
    return w * torch.where(sign == 0, torch.ones_like(sign), sign)


@dataclass(frozen=True)
class PcaBasis:
    """The first principal direction of a set of C-dim vectors.

    Attributes:
        mean: (C,) float64, the vectors' mean.
        component: (C,) float64, unit norm, sign fixed by :func:`fix_sign`.
        variance: variance along the component (the largest eigenvalue).
        explained: share of the total variance it explains, in [0, 1].
        n_vectors: how many vectors were used.
    """

    mean: np.ndarray
    component: np.ndarray
    variance: float
    explained: float
    n_vectors: int

    def project(self, fmap: torch.Tensor) -> torch.Tensor:
        """C x h x w (or B x C x h x w) float -> 1 x h x w (or B x 1 x h x w), in float32."""
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=fmap.device)
        w = torch.as_tensor(self.component, dtype=torch.float32, device=fmap.device)
        c_dim = fmap.dim() - 3
        shape = [1] * fmap.dim()
        shape[c_dim] = -1
        return ((fmap.float() - mean.view(shape)) * w.view(shape)).sum(dim=c_dim, keepdim=True)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean,
            "component": self.component,
            "variance": np.float64(self.variance),
            "explained": np.float64(self.explained),
            "n_vectors": np.int64(self.n_vectors),
        }

    @classmethod
    def from_arrays(cls, a) -> PcaBasis:
        return cls(
            np.asarray(a["mean"], dtype=np.float64),
            np.asarray(a["component"], dtype=np.float64),
            float(a["variance"]),
            float(a["explained"]),
            int(a["n_vectors"]),
        )


class CovarianceAccumulator:
    """Streams vectors into float64 sums, so fitting needs memory O(C^2), not O(N C)."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, vectors: torch.Tensor) -> None:
        """vectors: N x C."""
        v = vectors.detach().to("cpu", torch.float64)
        self.n += v.shape[0]
        self.sum += v.sum(0)
        self.outer += v.T @ v

    def fit(self) -> PcaBasis:
        if self.n < 2:
            raise ValueError("PCA needs at least two vectors")
        mean = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mean, mean)) / (self.n - 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        w = fix_sign(evecs[:, -1])
        total = float(evals.clamp(min=0).sum())
        top = float(evals[-1])
        return PcaBasis(mean.numpy(), w.numpy(), top, top / total if total > 0 else 0.0, self.n)


def image_pca_map(fmap: torch.Tensor) -> torch.Tensor:
    """Per-image PCA: C x h x w -> 1 x h x w along the image's own first direction."""
    c, h, w = fmap.shape
    x = fmap.reshape(c, h * w).T.double()  # cells x C
    if x.shape[0] < 2:
        return torch.zeros(1, h, w, device=fmap.device)
    x = x - x.mean(0)
    _, evecs = torch.linalg.eigh(x.T @ x)
    direction = fix_sign(evecs[:, -1])
    return (x @ direction).float().reshape(1, h, w)
