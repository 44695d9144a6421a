"""The CNN classifier: a backbone, the paper's optional SAM fusion blocks, and a linear (or cosine) head."""

from __future__ import annotations

from torch import nn

from lvmlt import outputs as o
from lvmlt.inputs import IMAGE, SAM_MAP, SAM_VEC
from lvmlt.models.backbones import StagedBackbone, build_backbone
from lvmlt.models.fusion import LatentFusion, MapFusion
from lvmlt.models.heads import CosineClassifier
from lvmlt.models.stage import StagedModel


class LTClassifier(StagedModel):
    """Backbone + head, with the paper's SAM map and latent fusion as options.

    ``forward(batch)`` takes the batch dict (``image`` B x 3 x H x W, and ``sam_map``
    B x 1 x h x w / ``sam_vec`` B x 256 when the fusions are on) and returns a dict
    (keys in :mod:`lvmlt.outputs`): ``logits`` (B x C), ``embedding`` (the feature
    the prototype loss acts on) and ``v_cnn`` (B x D, the pooled backbone vector); with
    latent fusion also its two branches' logits ``z_cnn`` and ``z_sam`` (B x C each).

    Logits are ``(1 - alpha) * z_SAM + alpha * z_CNN`` with latent fusion (eq. 3), else
    ``z_CNN``.
    """

    def __init__(
        self,
        backbone: StagedBackbone,
        num_classes: int,
        *,
        dropout: float = 0.0,
        cosine_head: bool = False,
        map_fusion: MapFusion | None = None,
        map_stage: int = -1,
        latent_fusion: LatentFusion | None = None,
        alpha: float = 0.5,
    ):
        super().__init__()
        self.backbone = backbone
        in_dim = backbone.out_dim
        self.drop = nn.Dropout(dropout)
        self.head = CosineClassifier(in_dim, num_classes) if cosine_head else nn.Linear(in_dim, num_classes)
        self.map_fusion = map_fusion
        self.map_stage = map_stage % len(backbone.stages)
        self.latent_fusion = latent_fusion
        self.alpha = alpha

    @property
    def embedding_dim(self) -> int:
        """Width D of ``out["embedding"]``, the vector the loss terms act on."""
        return self.latent_fusion.out_dim if self.latent_fusion is not None else self.backbone.out_dim

    def classifier_layers(self) -> list[nn.Module]:
        """The linear head and the latent block's FC (what cRT re-trains)."""
        return [self.head] + ([self.latent_fusion.classifier] if self.latent_fusion is not None else [])

    def representation_layers(self) -> list[nn.Module]:
        """The backbone with its map fusion and the latent block's projections and attention."""
        out = [m for m in (self.backbone, self.map_fusion) if m is not None]
        return out + (self.latent_fusion.representation() if self.latent_fusion is not None else [])

    def _forward(self, batch: dict) -> dict:
        hook = None
        if self.map_fusion is not None:
            sam_map = batch[SAM_MAP]

            def hook(i, f):
                return self.map_fusion(f, sam_map) if i == self.map_stage else f

        v_cnn = self.backbone(batch[IMAGE], hook)
        z_cnn = self.head(self.drop(v_cnn))
        if self.latent_fusion is None:
            return {o.LOGITS: z_cnn, o.EMBEDDING: v_cnn, o.V_CNN: v_cnn}
        z_sam, emb = self.latent_fusion(v_cnn, batch[SAM_VEC])
        logits = o.mix_branches(z_cnn, z_sam, self.alpha)
        return {o.LOGITS: logits, o.EMBEDDING: emb, o.V_CNN: v_cnn, o.Z_CNN: z_cnn, o.Z_SAM: z_sam}


def build_cnn(m, fu, num_classes: int, sam_dim: int = 256) -> LTClassifier:
    """The classifier of the ``model`` section ``m`` with the SAM fusion the ``fusion`` section ``fu`` asks for.

    Args:
        sam_dim: width of the stored SAM vector (the latent fusion's input).
    """
    backbone = build_backbone(m.backbone, m.pretrained)
    map_fusion = latent = None
    if fu.map:
        map_fusion = MapFusion(backbone.feature_info[fu.map_stage % len(backbone.stages)].channels)
    if fu.latent:
        latent = LatentFusion(backbone.out_dim, sam_dim, num_classes, fu.latent_dim, fu.heads, m.dropout)
    return LTClassifier(
        backbone, num_classes, dropout=m.dropout, cosine_head=m.cosine_head, map_fusion=map_fusion,
        map_stage=fu.map_stage, latent_fusion=latent, alpha=fu.alpha,
    )


def build_cnn_system(cfg, spec) -> LTClassifier:
    """The ``cnn`` system's builder (:mod:`lvmlt.systems`): ``cfg.model`` and ``cfg.fusion`` over ``spec``."""
    return build_cnn(cfg.model, cfg.fusion, spec.num_classes, spec.sam_dim())
