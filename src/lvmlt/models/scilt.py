"""SciLT-style multi-level fusion (Chen & Su, arXiv 2604.03687) as a model on stored levels.

SciLT fuses a foundation model's penultimate- and final-layer features adaptively and
trains "with dual supervision"; only its abstract is public, so the design below is
**ours** (docs/methods-other.md, "SciLT"), every choice behind a ``scilt.*`` setting:

- levels: pooled encoder stages from the feature store, penultimate first. For MobileSAM's
  TinyViT, ``stage3`` (penultimate stage, 320 channels) and ``stage4`` (final stage, 320);
  ``vec`` is v_SAM, the pooled neck output (256). Each level is standardised with training
  statistics by the feature dataset (the stages' scales differ) and, when ``scilt.dim`` > 0,
  projected to that width.
- adaptive fusion: ``alpha(x) = softmax(W [f_1; ...; f_L] + b)`` over the L levels, one weight
  per level and image (``gate=sample``; for two levels this is the sigmoid gate
  g f_{L-1} + (1 - g) f_L with b = 0, i.e. g = 0.5, at the start) or per level and channel
  (``gate=channel``), or the uniform average (``gate=fixed``, an ablation).
  ``f_fuse = sum_l alpha_l(x) f_l``.
- dual supervision: a classifier on every level and on ``f_fuse``;
  ``L = L_lt(h_fuse) + beta sum_l L_lt(h_l)``: ``L_lt`` is the run's baseline loss
  (``loss.*``; the recipe: logit-adjusted CE, tau = 1) on the fused head, and the term
  ``scilt_levels`` (:mod:`lvmlt.losses.scilt`) adds the per-level heads' with beta =
  ``scilt.aux_weight`` (0.5). Heads are cosine classifiers with temperature 0.07
  (``scilt.head=linear`` for plain ones). Prediction uses the fused head
  (``scilt.inference=mean`` averages all heads' logits).

The same head end to end on images over a LoRA-adapted encoder is :class:`EncoderSciLT`
(LoRA: :mod:`lvmlt.encoders.lora`); with the encoder's last stages trained instead,
``system=sam_finetune`` with ``finetune.head=scilt`` (:mod:`lvmlt.models.finetune`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lvmlt import outputs as o
from lvmlt.config.sections import SciLTConfig
from lvmlt.encoders.lora import apply_lora
from lvmlt.errors import UserError
from lvmlt.inputs import level_key
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


class SciLTModel(nn.Module):
    """The fusion head as a model of the trainer: ``forward(batch)`` reads the levels' keys.

    Returns ``{"logits", "level_logits", "weights", "embedding"}``: ``logits`` is the fused
    head's in training, and in evaluation those of ``inference`` (:func:`inference_logits`);
    ``embedding`` is the fused vector.
    """

    def __init__(self, levels: Sequence[str], head: SciLTHead, inference: str = "fused"):
        super().__init__()
        if inference not in ("fused", "mean"):
            raise UserError(f"unknown scilt.inference {inference!r}", fix="choose fused or mean")
        self.levels, self.head, self.inference = list(levels), head, inference
        self.keys = [level_key(lv) for lv in self.levels]
        self.embedding_dim = head.fusion.dim

    def forward(self, batch: dict) -> dict:
        out = self.head(*[batch[k].float() for k in self.keys])
        mode = "fused" if self.training else self.inference
        return {
            o.LOGITS: inference_logits(out, mode),
            o.LEVEL_LOGITS: out["level_logits"],
            o.LEVEL_WEIGHTS: out["weights"],
            o.EMBEDDING: out["fused"],
        }


def build_scilt(cfg: SciLTConfig, num_classes: int, feature_dims: dict[str, int]) -> SciLTModel:
    """The SciLT model of ``cfg`` (the ``scilt`` section) over stored levels of the given widths."""
    keys = [level_key(lv) for lv in cfg.levels]
    missing = [lv for lv, k in zip(cfg.levels, keys, strict=True) if k not in feature_dims]
    if missing:
        have = ", ".join(sorted(k.removeprefix("level/") for k in feature_dims if k != "sam_vec")) or "none"
        wanted = ",".join(lv for lv in cfg.levels if lv != "vec")
        raise UserError(
            f"scilt.levels needs the pooled level(s) {missing}; the feature store has {have}"
            + ("" if feature_dims else " (no fusion.store set)"),
            fix="set fusion.store to a store extracted with the levels, e.g. `lvmlt extract --dataset elpv "
            f"--encoder mobilesam --img-size 256 --out NEW_DIR 'levels=[{wanted}]'`",
        )
    head = build_scilt_head(cfg, [feature_dims[k] for k in keys], num_classes)
    return SciLTModel(cfg.levels, head, cfg.inference)


def build_scilt_system(cfg, spec) -> SciLTModel:
    """The ``scilt`` system's builder (:mod:`lvmlt.systems`): ``cfg.scilt`` over ``spec``."""
    return build_scilt(cfg.scilt, spec.num_classes, spec.dims)


# ----------------------------------------------------------------------------- end to end on images


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
