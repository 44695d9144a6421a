"""The classifier: a backbone, optional SAM fusion blocks, and a linear (or cosine) head."""

from __future__ import annotations

from torch import nn

from lvmlt.errors import UserError
from lvmlt.inputs import NORMS
from lvmlt.models.backbones import StagedBackbone, build_backbone
from lvmlt.models.fusion import LatentFusion, MapFusion
from lvmlt.models.heads import ClassScale, CosineClassifier

#: What the linear probe (``fusion.sam_only``) puts in front of its FC: a parameter-free
#: BatchNorm (the paper's probe), or a fixed map the feature dataset fits on the training
#: split (``cl2n``, ``l2``, ``standardize``; ``raw`` = none), :mod:`lvmlt.features.dataset`.
SAM_NORMS = ("batchnorm", *NORMS)
#: The latent-fused model's two branch logits in its output, mixed as (1 - alpha) z_sam + alpha z_cnn.
BRANCHES = ("z_cnn", "z_sam")
#: ``fusion.alpha_select``: keep the configured alpha, or choose it on validation after training.
ALPHA_SELECT = ("fixed", "val")


def mix_branches(z_cnn, z_sam, alpha: float):
    """The fused logits ``(1 - alpha) z_SAM + alpha z_CNN`` (eq. 3), of tensors or arrays alike."""
    return (1 - alpha) * z_sam + alpha * z_cnn


class LTClassifier(nn.Module):
    """Backbone + head, with the paper's SAM map and latent fusion as options.

    ``forward(batch)`` takes the batch dict (``image`` B x 3 x H x W, and ``sam_map``
    B x 1 x h x w / ``sam_vec`` B x 256 when the fusions are on) and returns a dict:
    ``logits`` (B x C), ``embedding`` (the feature the prototype loss acts on) and
    ``v_cnn`` (B x D, the pooled backbone vector); with latent fusion also its two branches'
    logits ``z_cnn`` and ``z_sam`` (B x C each).

    Logits are ``(1 - alpha) * z_SAM + alpha * z_CNN`` with latent fusion (eq. 3), else
    ``z_CNN``. With ``sam_only`` there is no CNN at all: ``logits = FC(BN(v_SAM))`` (table III),
    a linear probe with a parameter-free BatchNorm in front, as in MAE's linear probing: the
    raw vectors share a large offset (per-dimension mean ~0.05, spread ~0.01 on ELPV) that
    plain SGD on a linear head barely gets past in a few epochs. Any other ``sam_norm``
    drops the BatchNorm and asks the feature dataset for that map (``feature_norms``): the
    one linear probe on v_SAM, also of the synthetic-feature system (``cl2n``).
    """

    def __init__(
        self,
        backbone: StagedBackbone | None,
        num_classes: int,
        *,
        dropout: float = 0.0,
        cosine_head: bool = False,
        map_fusion: MapFusion | None = None,
        map_stage: int = -1,
        latent_fusion: LatentFusion | None = None,
        alpha: float = 0.5,
        sam_dim: int = 256,
        sam_norm: str = "batchnorm",
    ):
        super().__init__()
        if sam_norm not in SAM_NORMS:
            raise UserError(f"unknown fusion.sam_norm {sam_norm!r}", fix=f"choose one of: {', '.join(SAM_NORMS)}")
        self.backbone = backbone
        self.sam_dim = sam_dim
        in_dim = backbone.out_dim if backbone is not None else sam_dim
        self.drop = nn.Dropout(dropout)
        self.sam_bn = None
        if backbone is None:
            self.sam_bn = nn.BatchNorm1d(sam_dim, affine=False) if sam_norm == "batchnorm" else nn.Identity()
        # How the feature dataset normalises a stored vector before the model sees it.
        self.feature_norms = {"sam_vec": sam_norm} if backbone is None and sam_norm != "batchnorm" else {}
        self.head = CosineClassifier(in_dim, num_classes) if cosine_head else nn.Linear(in_dim, num_classes)
        self.map_fusion = map_fusion
        if backbone is not None:
            self.map_stage = map_stage % len(backbone.stages)
        self.latent_fusion = latent_fusion
        self.alpha = alpha
        self.class_scale: ClassScale | None = None  # LWS: one learned scale per class on a frozen classifier
        self._register_load_state_dict_pre_hook(_old_class_scale_key)
        self.frozen: list[nn.Module] = []  # stay in eval mode (BN statistics fixed) while training
        self.needs = {"image"} if backbone is not None else set()
        if map_fusion is not None:
            self.needs.add("sam_map")
        if latent_fusion is not None or backbone is None:
            self.needs.add("sam_vec")

    @property
    def embedding_dim(self) -> int:
        """Width D of ``out["embedding"]``, the vector the loss terms act on."""
        if self.latent_fusion is not None:
            return self.latent_fusion.out_dim
        return self.backbone.out_dim if self.backbone is not None else self.sam_dim

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def forward(self, batch: dict) -> dict:
        out = self._forward(batch)
        if self.class_scale is not None:  # a per-class scale commutes with the alpha mix
            for k in BRANCHES + ("logits",):
                if k in out:
                    out[k] = self.class_scale(out[k])
        return out

    def _forward(self, batch: dict) -> dict:
        if self.backbone is None:
            v = self.sam_bn(batch["sam_vec"].to(self.head.weight.dtype))
            return {"logits": self.head(self.drop(v)), "embedding": v, "v_cnn": v}
        hook = None
        if self.map_fusion is not None:
            sam_map = batch["sam_map"]

            def hook(i, f):
                return self.map_fusion(f, sam_map) if i == self.map_stage else f

        v_cnn = self.backbone(batch["image"], hook)
        z_cnn = self.head(self.drop(v_cnn))
        if self.latent_fusion is None:
            return {"logits": z_cnn, "embedding": v_cnn, "v_cnn": v_cnn}
        z_sam, emb = self.latent_fusion(v_cnn, batch["sam_vec"])
        logits = mix_branches(z_cnn, z_sam, self.alpha)
        return {"logits": logits, "embedding": emb, "v_cnn": v_cnn, "z_cnn": z_cnn, "z_sam": z_sam}


def _old_class_scale_key(state_dict, prefix, *args):
    """Checkpoints before :class:`ClassScale` held LWS's scales as ``class_scale``."""
    old = prefix + "class_scale"
    if old in state_dict:
        state_dict[old + ".scale"] = state_dict.pop(old)


def build_model(cfg, num_classes: int, sam_dim: int = 256, feature_dims: dict | None = None) -> nn.Module:
    """Builds the classifier from ``cfg.model`` and ``cfg.fusion`` (the only place reading config),
    or SciLT's fusion head on stored levels (``cfg.scilt.enabled``, :mod:`lvmlt.models.scilt`).

    Args:
        feature_dims: widths of the stored vectors (``{"sam_vec": 256, "level/stage3": 320}``),
            from the feature store; the SciLT head needs those of its levels.
    """
    if cfg.scilt.enabled:
        from lvmlt.models.scilt import build_scilt

        return build_scilt(cfg.scilt, num_classes, feature_dims or {})
    sam_dim = (feature_dims or {}).get("sam_vec", sam_dim)
    m, fu = cfg.model, cfg.fusion
    if fu.alpha_select not in ALPHA_SELECT:
        raise UserError(f"unknown fusion.alpha_select {fu.alpha_select!r}", fix=f"choose one of: {', '.join(ALPHA_SELECT)}")
    if (fu.aux_weight > 0 or fu.alpha_select != "fixed") and not (fu.latent and not fu.sam_only):
        raise UserError(
            "fusion.aux_weight and fusion.alpha_select act on the latent fusion's two branches",
            fix="set fusion.latent=true (with a backbone), or drop them",
        )
    backbone = None if fu.sam_only else build_backbone(m.backbone, m.pretrained)
    map_fusion = latent = None
    if backbone is not None and fu.map:
        stage = fu.map_stage % len(backbone.stages)
        map_fusion = MapFusion(backbone.feature_info[stage].channels)
    if backbone is not None and fu.latent:
        latent = LatentFusion(backbone.out_dim, sam_dim, num_classes, fu.latent_dim, fu.heads, m.dropout)
    return LTClassifier(
        backbone,
        num_classes,
        dropout=m.dropout,
        cosine_head=m.cosine_head,
        map_fusion=map_fusion,
        map_stage=fu.map_stage,
        latent_fusion=latent,
        alpha=fu.alpha,
        sam_dim=sam_dim,
        sam_norm=fu.sam_norm,
    )


def apply_stage(model: LTClassifier, stage, device=None) -> None:
    """Decoupled second stage: load a finished run, freeze its representation, reset or rescale the head.

    The representation is the backbone with its map fusion and the latent block's
    projections and attention; the classifier is the linear head and the latent block's FC.
    """
    from pathlib import Path

    from lvmlt import rundir

    if not (stage.init_from or stage.freeze_backbone or stage.reset_head or stage.lws):
        return
    if not isinstance(model, LTClassifier):
        raise UserError(
            f"the stage.* options apply to the classifier, not to {type(model).__name__}",
            fix="drop stage.* for this model (e.g. scilt.enabled)",
        )
    if stage.init_from:
        path = Path(stage.init_from)
        if path.is_dir():
            path = path / rundir.BEST
        if not path.is_file():
            raise UserError(f"stage.init_from: no checkpoint at {path}", fix="pass a finished run directory")
        state = rundir.load_checkpoint(path, map_location=device or "cpu")
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        if unexpected or [k for k in missing if not k.startswith("class_scale")]:
            raise UserError(
                f"stage.init_from: the checkpoint {path} was made by a different model",
                fix=f"use the same model/fusion settings (mismatched keys: {(missing + unexpected)[:4]})",
            )
    heads = [model.head] + ([model.latent_fusion.classifier] if model.latent_fusion is not None else [])
    if stage.freeze_backbone or stage.lws:
        head_params = {id(p) for h in heads for p in h.parameters()}
        for p in model.parameters():
            if id(p) not in head_params:
                p.requires_grad_(False)
        model.frozen = [m for m in (model.backbone, model.map_fusion) if m is not None]
        if model.latent_fusion is not None:
            model.frozen += model.latent_fusion.representation()
    if stage.reset_head:
        for h in heads:
            h.reset_parameters()
    if stage.lws:
        for h in heads:
            h.requires_grad_(False)
        n = model.head.weight.shape[0]
        model.class_scale = ClassScale(n, device=model.head.weight.device)
