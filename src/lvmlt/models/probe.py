"""The linear probe on the stored SAM vector (table III of the SAM-features paper): no CNN.

``logits = FC(norm(v_SAM))``. With ``norm=batchnorm`` a parameter-free BatchNorm sits in
front of the FC, as in MAE's linear probing: the raw vectors share a large offset
(per-dimension mean ~0.05, spread ~0.01 on ELPV) that plain SGD on a linear head barely
gets past in a few epochs. Any other norm (``cl2n``, ``l2``, ``standardize``, ``raw``) is a
fixed map fitted on the training split and applied by the feature dataset
(:mod:`lvmlt.features.dataset`): that is the probe of the synthetic-feature system too.
"""

from __future__ import annotations

from torch import nn

from lvmlt import outputs as o
from lvmlt.errors import UserError
from lvmlt.inputs import SAM_NORMS, SAM_VEC
from lvmlt.models.heads import CosineClassifier
from lvmlt.models.stage import StagedModel


class LinearProbe(StagedModel):
    """``forward(batch)`` reads ``sam_vec`` (B x D) and returns ``logits``, ``embedding`` and
    ``v_cnn`` (both the normalised vector)."""

    def __init__(self, sam_dim: int, num_classes: int, *, norm: str = "batchnorm", dropout: float = 0.0,
                 cosine_head: bool = False):
        super().__init__()
        if norm not in SAM_NORMS:
            raise UserError(f"unknown fusion.sam_norm {norm!r}", fix=f"choose one of: {', '.join(SAM_NORMS)}")
        self.sam_dim = self.embedding_dim = sam_dim
        self.sam_bn = nn.BatchNorm1d(sam_dim, affine=False) if norm == "batchnorm" else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.head = CosineClassifier(sam_dim, num_classes) if cosine_head else nn.Linear(sam_dim, num_classes)

    def classifier_layers(self) -> list[nn.Module]:
        return [self.head]

    def representation_layers(self) -> list[nn.Module]:
        return [self.sam_bn]

    def _forward(self, batch: dict) -> dict:
        v = self.sam_bn(batch[SAM_VEC].to(self.head.weight.dtype))
        return {o.LOGITS: self.head(self.drop(v)), o.EMBEDDING: v, o.V_CNN: v}


def build_probe(cfg, spec) -> LinearProbe:
    """The probes' builder (:mod:`lvmlt.systems`): ``fusion.sam_norm`` and ``model.dropout`` /
    ``model.cosine_head`` over ``spec``."""
    m = cfg.model
    return LinearProbe(spec.sam_dim(), spec.num_classes, norm=cfg.fusion.sam_norm, dropout=m.dropout,
                       cosine_head=m.cosine_head)
