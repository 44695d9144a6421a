"""The strong recipe's training-loop parts: mixup / cutmix, an EMA of the weights, MaxNorm.

Each is built from the config by its ``build_*`` function and is ``None`` when off, so the
trainer's loop reads the same with or without them:

- :class:`BatchDihedral` turns each image of a batch by one of the 8 symmetries of the
  square, and its stored SAM map with it (a map turned apart from its image would point the
  fusion at the wrong cells).
- :class:`BatchMixer` mixes a batch's images with timm's :class:`timm.data.Mixup` (one
  Beta(alpha, alpha) draw per batch, each image paired with the batch's reverse) and
  returns the mixing weight. The objective is then ``lam * L(y) + (1 - lam) * L(y_rev)``
  with every loss term as it is; for a softmax cross-entropy this equals timm's soft-target
  loss, and it serves balanced softmax, LDAM or the prototype loss just as well.
- :func:`build_ema` wraps timm's :class:`timm.utils.ModelEmaV3` (weights and buffers).
- :func:`max_norm_` projects each class's classifier weights into an L2 ball after a step
  (weight balancing, Alshammari et al., CVPR 2022).
"""

from __future__ import annotations

import torch

from lvmlt.config import Config
from lvmlt.errors import UserError

#: Terms whose forward updates their own state: called twice per mixed step they would
#: count each batch twice, so mixing is refused with them.
_STATEFUL_FORWARD = ("proco", "ifl")


class BatchDihedral:
    """Each sample's spatial inputs (every float B x C x H x W tensor with H = W: the image,
    a stored SAM map) turned by one of the 8 dihedral symmetries, drawn uniformly per sample
    from torch's generator; exact (a permutation of pixels)."""

    def __call__(self, batch: dict) -> dict:
        keys = [k for k, v in batch.items() if torch.is_tensor(v) and v.is_floating_point() and v.dim() == 4
                and v.shape[-1] == v.shape[-2]]
        n = batch[keys[0]].shape[0] if keys else 0
        if n == 0:
            return batch
        ops = torch.randint(8, (n,)).tolist()
        out = dict(batch)
        for k in keys:
            x = batch[k]
            cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            turned = torch.stack([_dihedral(x[i], op) for i, op in enumerate(ops)])
            out[k] = turned.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        return out


def _dihedral(x: torch.Tensor, op: int) -> torch.Tensor:
    """Symmetry ``op`` (0..7) of a C x H x W tensor: op % 4 quarter turns, then a mirror for op >= 4."""
    x = torch.rot90(x, op % 4, dims=(1, 2))
    return x.flip(2) if op >= 4 else x


def build_dihedral(cfg: Config, meta: dict) -> BatchDihedral | None:
    """The batch symmetries when ``data.dihedral`` applies to this dataset, else None."""
    from lvmlt.data.build import dihedral_on

    return BatchDihedral() if dihedral_on(cfg.data, meta) else None


class BatchMixer:
    """Mixup / cutmix of a batch's images (timm's ``Mixup`` in batch mode).

    Other per-image float inputs (stored SAM maps and vectors) are mixed linearly with the
    same weight, so a fused model sees a consistent pair (for cutmix an approximation: the
    box's area is the weight).
    """

    def __init__(self, mixup: float, cutmix: float, prob: float, num_classes: int):
        from timm.data import Mixup

        self.num_classes = num_classes
        self.mix = Mixup(
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            prob=prob,
            switch_prob=0.5,
            mode="batch",
            label_smoothing=0.0,  # smoothing belongs to the loss (loss.label_smoothing)
            num_classes=num_classes,
        )

    def __call__(self, batch: dict) -> tuple[dict, dict, float] | None:
        """``(mixed batch, the same with the paired labels, lam)``; None for an odd batch
        (timm pairs images with the batch's reverse, which needs an even count)."""
        x, y = batch["image"], batch["label"]
        if x.shape[0] % 2 or x.shape[0] < 2:
            return None
        safe = y.clamp_min(0)
        x = x.clone()
        x, soft = self.mix(x, safe)
        rev = safe.flip(0)
        differ = safe != rev
        # timm returns lam * onehot(y) + (1 - lam) * onehot(y_rev): lam is the weight of the
        # true class in any row whose pair has another class (any lam is right otherwise).
        lam = float(soft[differ.nonzero()[0, 0], safe[differ][0]]) if bool(differ.any()) else 1.0
        mixed = {**batch, "image": x}
        if lam < 1.0:
            for k, v in batch.items():
                if k != "image" and torch.is_tensor(v) and v.is_floating_point() and v.shape[:1] == y.shape:
                    mixed[k] = lam * v + (1.0 - lam) * v.flip(0)
        paired = {**mixed, "label": y.flip(0)}
        return mixed, paired, lam


def build_mixer(cfg: Config, num_classes: int) -> BatchMixer | None:
    """The mixer of ``data.mixup`` / ``data.cutmix``, or None when both are 0."""
    d = cfg.data
    if d.mixup <= 0 and d.cutmix <= 0:
        return None
    on = [name for name in _STATEFUL_FORWARD if getattr(getattr(cfg, name), "enabled", False)]
    if on:
        raise UserError(
            f"data.mixup / data.cutmix cannot be combined with {on[0]}.enabled=true (its term updates its state from each batch)",
            fix=f"set data.mixup=0 data.cutmix=0, or {on[0]}.enabled=false",
        )
    return BatchMixer(d.mixup, d.cutmix, d.mix_prob, num_classes)


def build_ema(model: torch.nn.Module, decay: float):
    """timm's ``ModelEmaV3`` of ``model`` (weights and float buffers), or None for decay 0."""
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


@torch.no_grad()
def max_norm_(layers, threshold: float) -> None:
    """Project each row (one class) of every layer's ``weight`` into the L2 ball of radius
    ``threshold``, in place; a no-op for ``threshold <= 0``."""
    if threshold <= 0:
        return
    for layer in layers:
        w = getattr(layer, "weight", None)
        if w is not None and w.dim() == 2:
            w.copy_(torch.renorm(w, p=2, dim=0, maxnorm=threshold))
