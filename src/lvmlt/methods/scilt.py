"""SciLT-style multi-level fusion with dual supervision, and LoRA for the frozen encoder.

SciLT (Chen & Su, arXiv 2604.03687) fuses a foundation model's penultimate- and final-layer
features adaptively and trains "with dual supervision"; only its abstract is public, so the
design below is **ours** (METHODS-NOTES 3), every choice behind a ``scilt.*`` setting:

- levels: pooled encoder stages from the feature store, penultimate first. For MobileSAM's
  TinyViT, ``stage3`` (penultimate stage, 320 channels) and ``stage4`` (final stage, 320);
  ``vec`` is v_SAM, the pooled neck output (256). Each level is standardised with training
  statistics (the stages' scales differ) and, when ``scilt.dim`` > 0, projected to that width.
- adaptive fusion: ``alpha(x) = softmax(W [f_1; ...; f_L] + b)`` over the L levels, one weight
  per level and image (``gate=sample``; for two levels this is the sigmoid gate
  g f_{L-1} + (1 - g) f_L with b = 0, i.e. g = 0.5, at the start) or per level and channel
  (``gate=channel``), or the uniform average (``gate=fixed``, an ablation).
  ``f_fuse = sum_l alpha_l(x) f_l``.
- dual supervision: a classifier on every level and on ``f_fuse``;
  ``L = L_lt(h_fuse) + beta sum_l L_lt(h_l)`` with beta = ``scilt.aux_weight`` (0.5) and
  ``L_lt`` a long-tail-aware loss (``scilt.loss``: logit-adjusted CE, tau = 1 = balanced softmax).
  Heads are cosine classifiers with temperature 0.07 (``scilt.head=linear`` for plain ones).
  Prediction uses the fused head (``scilt.inference=mean`` averages all heads' logits).
- PEFT: :func:`apply_lora` puts LoRA (rank 8 on the attention ``qkv`` and ``proj`` of every
  TinyViT / ViT block) into a frozen encoder and :class:`EncoderSciLT` runs the whole
  model end to end. On this CPU, fine-tuning MobileSAM is out of reach, so the reported
  experiments use stored features (frozen encoder) only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lvmlt.config import LossConfig, SciLTConfig
from lvmlt.errors import UserError
from lvmlt.evaluation.metrics import score
from lvmlt.methods.common import (
    FeatureNorm,
    HeadTraining,
    MethodResult,
    Timer,
    count_trainable,
    fit_head,
)
from lvmlt.models.heads import CosineClassifier

GATES = ("sample", "channel", "fixed")
HEADS = ("cosine", "linear")


# ----------------------------------------------------------------------------- fusion and heads


class AdaptiveFusion(nn.Module):
    """Input-dependent convex combination of L feature vectors of the same width.

    Args:
        num_levels: L.
        dim: D, the width of every level.
        mode: "sample" (B x L weights), "channel" (B x L x D weights, each channel its own
            mix) or "fixed" (uniform 1/L, no parameters).

    ``forward(feats)``: a list of L tensors B x D -> ``(fused B x D, weights)``; the weights
    are non-negative and sum to 1 over the levels.
    """

    def __init__(self, num_levels: int, dim: int, mode: str = "sample"):
        super().__init__()
        if mode not in GATES:
            raise UserError(f"unknown scilt.gate {mode!r}", fix=f"choose one of: {', '.join(GATES)}")
        self.num_levels, self.dim, self.mode = num_levels, dim, mode
        self.gate = None
        if mode != "fixed" and num_levels > 1:
            out = num_levels if mode == "sample" else num_levels * dim
            self.gate = nn.Linear(num_levels * dim, out)
            nn.init.zeros_(self.gate.bias)  # equal weights for an average input

    def weights(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """B x L (sample, fixed) or B x L x D (channel) fusion weights."""
        b = feats[0].shape[0]
        if self.gate is None:
            shape = (b, self.num_levels) if self.mode != "channel" else (b, self.num_levels, self.dim)
            return feats[0].new_full(shape, 1.0 / self.num_levels)
        z = self.gate(torch.cat(list(feats), dim=1))
        if self.mode == "channel":
            z = z.view(b, self.num_levels, self.dim)
        return z.softmax(dim=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(feats) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} levels, got {len(feats)}")
        w = self.weights(feats)
        stacked = torch.stack(list(feats), dim=1)  # B x L x D
        ww = w if w.ndim == 3 else w.unsqueeze(-1)
        return (ww * stacked).sum(dim=1), w


def _classifier(kind: str, dim: int, num_classes: int, temperature: float) -> nn.Module:
    if kind not in HEADS:
        raise UserError(f"unknown scilt.head {kind!r}", fix=f"choose one of: {', '.join(HEADS)}")
    return (
        CosineClassifier(dim, num_classes, temperature, init="unit")
        if kind == "cosine"
        else nn.Linear(dim, num_classes)
    )


class SciLTHead(nn.Module):
    """Per-level projection, adaptive fusion and L + 1 classifiers.

    Args:
        level_dims: width of each input level, penultimate first.
        num_classes: C.
        dim: common width; 0 = no projection (every level must then have the same width).
        gate: fusion mode (:class:`AdaptiveFusion`).
        head: "cosine" or "linear" classifiers.
        temperature: of the cosine classifiers.

    ``forward(*levels)`` (each B x D_l) returns ``{"logits": B x C (fused head),
    "level_logits": [B x C per level], "weights": fusion weights, "fused": B x D}``.
    """

    def __init__(
        self,
        level_dims: Sequence[int],
        num_classes: int,
        dim: int = 0,
        gate: str = "sample",
        head: str = "cosine",
        temperature: float = 0.07,
    ):
        super().__init__()
        level_dims = list(level_dims)
        if not level_dims:
            raise UserError(
                "scilt.levels is empty", fix="name at least one stored level, e.g. [stage3, stage4]"
            )
        if dim == 0 and len(set(level_dims)) > 1:
            raise UserError(
                f"the levels have different widths {level_dims}",
                fix="set scilt.dim (e.g. 256) to project them to one width",
            )
        width = dim or level_dims[0]
        self.proj = nn.ModuleList([nn.Linear(d, width) if dim else nn.Identity() for d in level_dims])
        self.fusion = AdaptiveFusion(len(level_dims), width, gate)
        self.level_heads = nn.ModuleList(
            [_classifier(head, width, num_classes, temperature) for _ in level_dims]
        )
        self.fused_head = _classifier(head, width, num_classes, temperature)

    def forward(self, *levels: torch.Tensor) -> dict:
        feats = [p(x) for p, x in zip(self.proj, levels, strict=True)]
        fused, w = self.fusion(feats)
        return {
            "logits": self.fused_head(fused),
            "level_logits": [h(f) for h, f in zip(self.level_heads, feats, strict=True)],
            "weights": w,
            "fused": fused,
        }


def dual_supervision_loss(
    out: dict, targets: torch.Tensor, loss_fn: nn.Module, aux_weight: float
) -> dict[str, torch.Tensor]:
    """``{"fused": L(h_fuse), "levels": sum_l L(h_l), "total": fused + aux_weight * levels}``.

    Args:
        out: :class:`SciLTHead` output.
        targets: B class indices.
        loss_fn: ``loss_fn(logits, targets) -> scalar`` (an lvmlt loss: CE, LA-CE, ...).
        aux_weight: beta, the weight of every per-level head's loss.
    """
    fused = loss_fn(out["logits"], targets)
    levels = sum(loss_fn(z, targets) for z in out["level_logits"])
    return {"fused": fused, "levels": levels, "total": fused + aux_weight * levels}


def inference_logits(out: dict, mode: str) -> torch.Tensor:
    """The fused head's logits, or (``mean``) the mean of all heads' logits."""
    if mode == "fused":
        return out["logits"]
    if mode == "mean":
        return torch.stack([out["logits"], *out["level_logits"]]).mean(dim=0)
    raise UserError(f"unknown scilt.inference {mode!r}", fix="choose fused or mean")


def build_scilt_head(cfg: SciLTConfig, level_dims: Sequence[int], num_classes: int) -> SciLTHead:
    """The only place the head reads ``cfg.scilt``."""
    return SciLTHead(level_dims, num_classes, cfg.dim, cfg.gate, cfg.head, cfg.temperature)


# ----------------------------------------------------------------------------- on stored features


def fit_scilt(
    levels: dict[str, dict[str, np.ndarray]],
    labels: dict[str, np.ndarray],
    num_classes: int,
    meta: dict,
    cfg: SciLTConfig,
    seed: int = 0,
    name: str = "SciLT fusion",
    ev=None,
) -> MethodResult:
    """Train the fusion head with dual supervision on stored multi-level features.

    Args:
        levels: ``{split: {level: N x D_l}}`` from :func:`~lvmlt.methods.common.load_levels`,
            with the levels of ``cfg.levels``.
        labels: ``{split: (N,)}``, -1 for skipped images.
        num_classes: C.
        meta: the bundle's meta (group thresholds).
        cfg: the ``scilt`` section.
        seed: seeds the head's initial weights and the batch order.
        ev: the run's ``cfg.eval`` (group thresholds; None = the dataset's).

    Returns:
        A :class:`MethodResult`; ``info`` has the mean fusion weight per level on the test split.
    """
    from lvmlt.losses import build_loss

    names = list(cfg.levels)
    with Timer() as t:
        norms = {lv: FeatureNorm("standardize").fit(levels["train"][lv]) for lv in names}
        xs = {s: [torch.from_numpy(norms[lv](levels[s][lv])) for lv in names] for s in levels}
        y = labels["train"]
        keep = torch.from_numpy(y >= 0)
        counts = np.bincount(y[y >= 0], minlength=num_classes)
        loss_fn = build_loss(LossConfig(name=cfg.loss, tau=cfg.tau), counts, cfg.epochs)
        torch.manual_seed(int(seed))
        head = build_scilt_head(cfg, [x.shape[1] for x in xs["train"]], num_classes)

        def train_loss(m, xb, yb, wb):
            return dual_supervision_loss(m(*xb), yb, loss_fn, cfg.aux_weight)["total"]

        def predict(m, xb):
            return inference_logits(m(*xb), cfg.inference)

        how = HeadTraining(
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            optimizer="sgd",
            momentum=cfg.momentum,
        )
        train = ([x[keep] for x in xs["train"]], torch.from_numpy(y)[keep], None)
        head, info = fit_head(head, train_loss, predict, train, (xs["val"], labels["val"]), how, seed)
    res = {}
    with torch.no_grad():
        for s in ("val", "test"):
            out = head(*xs[s])
            res[s] = score(inference_logits(out, cfg.inference), labels[s], counts, meta, ev)
            if s == "test":
                w = out["weights"]
                w = w.mean(dim=2) if w.ndim == 3 else w
                info["mean_fusion_weight"] = dict(zip(names, w.mean(dim=0).tolist(), strict=True))
    info.update(levels=names, gate=cfg.gate, loss=cfg.loss, aux_weight=cfg.aux_weight)
    return MethodResult(
        name, res["val"], res["test"], count_trainable(head), t.seconds, info["best_epoch"], info
    )


# ----------------------------------------------------------------------------- LoRA (PEFT)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al. 2021).

    ``y = base(x) + (alpha / r) * x A^T B^T`` with A (r x in) Kaiming-initialised and B
    (out x r) zero, so the wrapped layer starts as exactly the base layer.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        if rank < 1:
            raise UserError(f"LoRA rank {rank} must be at least 1", fix="set scilt.lora_rank >= 1")
        self.base = base
        base.requires_grad_(False)
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.rank, self.scale = rank, alpha / rank

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale


def apply_lora(
    model: nn.Module, rank: int = 8, alpha: float = 16.0, targets: Sequence[str] = ("qkv", "proj")
) -> int:
    """Freeze ``model`` and wrap the attention projections named ``targets`` with LoRA.

    An attention block is any submodule with an ``nn.Linear`` called ``qkv`` (TinyViT's and
    SAM ViT's ``Attention``); its linear children named in ``targets`` are wrapped. Call it
    after :meth:`FrozenEncoder.prepare` (which freezes every parameter again).

    Returns:
        The number of trainable parameters, sum of r * (in + out) over wrapped layers.

    Raises:
        UserError: no attention projection was found.
    """
    model.requires_grad_(False)
    blocks = [m for m in model.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)]
    n = 0
    for block in blocks:
        for name in targets:
            layer = getattr(block, name, None)
            if isinstance(layer, nn.Linear):
                setattr(block, name, LoRALinear(layer, rank, alpha))
                n += rank * (layer.in_features + layer.out_features)
    if n == 0:
        raise UserError(
            f"no attention projection named {list(targets)} found for LoRA",
            fix="set scilt.lora_targets to the names of the attention's linear layers (qkv, proj)",
        )
    return n


class EncoderSciLT(nn.Module):
    """End to end: a (LoRA-adapted) frozen encoder, pooled levels, and a :class:`SciLTHead`.

    Args:
        encoder: a :class:`~lvmlt.encoders.FrozenEncoder` (``forward_levels``).
        levels: stage names or "vec" (the pooled neck output), penultimate first.
        head: the fusion head over those levels' widths.

    ``forward(images B x 3 x S x S)`` returns the head's output dict. The levels are
    average-pooled over the whole grid (images are assumed square, so there is no padding).
    """

    def __init__(self, encoder: nn.Module, levels: Sequence[str], head: SciLTHead):
        super().__init__()
        self.encoder, self.levels, self.head = encoder, list(levels), head
        self._stages = [lv for lv in self.levels if lv != "vec"]
        encoder.check_levels(self._stages)

    def pooled(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps = self.encoder.forward_levels(images, self._stages)
        return [maps["out" if lv == "vec" else lv].float().mean(dim=(2, 3)) for lv in self.levels]

    def forward(self, images: torch.Tensor) -> dict:
        return self.head(*self.pooled(images))


def build_encoder_scilt(
    cfg: SciLTConfig, encoder: nn.Module, num_classes: int, lora: bool = True
) -> tuple[EncoderSciLT, int]:
    """Encoder + LoRA (``cfg.lora_*``) + fusion head; returns the model and its LoRA parameter count."""
    encoder.check_levels([lv for lv in cfg.levels if lv != "vec"])
    n_lora = apply_lora(encoder, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets) if lora else 0
    dims = [encoder.out_channels if lv == "vec" else encoder.level_channels[lv] for lv in cfg.levels]
    model = EncoderSciLT(encoder, cfg.levels, build_scilt_head(cfg, dims, num_classes))
    return model, n_lora
