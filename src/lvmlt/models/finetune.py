"""The SAM encoder itself trained on images (``system=sam_finetune``).

A TinyViT SAM encoder (MobileSAM) whose last ``finetune.stages`` stages and neck train
with a linear head on the pooled map; the earlier stages stay frozen. On a CPU the frozen
stages run through the extraction's engine (OpenVINO, cached, at the run's precision)
under no gradient, so a training step costs one engine forward plus the trained stages'
forward and backward (``benchmarks/finetune_step.py``: the last stage alone trains at
about the engine's forward rate). Augmentation needs no cache of activations: every step
encodes the augmented images afresh. With all 4 stages the patch embedding trains too
(full fine-tuning, in torch).

The input is the data pipeline's image at ``data.image_size`` (a multiple of 64),
normalised with the ImageNet mean and std, which is SAM's pixel normalisation divided by
255: the encoder sees what ``lvmlt extract`` would give it for a square image.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from lvmlt import outputs as o
from lvmlt.errors import UserError
from lvmlt.inputs import IMAGE
from lvmlt.models.stage import StagedModel

log = logging.getLogger("lvmlt")


class _Frozen:
    """The frozen stages' runner, held outside the module tree (not saved, not moved, built on first use)."""

    def __init__(self, encoder_name: str, img_size: int, checkpoint: str | None, level: str, engine: str):
        self.args = (encoder_name, img_size, checkpoint)
        self.level, self.engine, self.compiled, self.tried = level, engine, None, set()

    def __call__(self, x: torch.Tensor, precision: str) -> torch.Tensor | None:
        """The tokens entering the trained stages (B x L x C float32), or None where the
        engine cannot run (the caller then runs the frozen stages in torch)."""
        if x.device.type != "cpu" or self.engine == "torch":
            return None
        if precision not in self.tried:
            self.tried.add(precision)
            from lvmlt.encoders import build_encoder
            from lvmlt.features.engines import choose_engine, compile_encoder

            name = choose_engine(self.engine, x.device, precision, False, log.info)
            self.compiled = None
            if name != "torch":
                with torch.autocast(x.device.type, enabled=False):  # the build checks against torch float32
                    self.compiled = compile_encoder(build_encoder(*self.args), name, precision, (self.level,),
                                                    log=log.info)
            log.info("sam_finetune: frozen stages through %s (%s)", self.compiled.engine if self.compiled else "torch", precision)
        if self.compiled is None:
            return None
        fmap = self.compiled(x)[self.level]  # B x C x h x w
        return fmap.flatten(2).transpose(1, 2).contiguous()


class EncoderFinetune(StagedModel):
    """``forward(batch)`` reads ``image`` (B x 3 x S x S) and returns ``logits``, ``embedding``
    and ``v_cnn`` (the pooled neck output, 256-d for MobileSAM).

    Args:
        encoder: a :class:`~lvmlt.encoders.tinyvit.TinyViTEncoder` at the input size.
        stages: how many of the last stages train (1..len(stages); all = full fine-tuning).
        num_classes: C. dropout: before the head. engine: auto | torch | openvino | onnxruntime
            for the frozen stages on the CPU.
        checkpoint: the encoder weights the engine is built from (None = the official ones).
    """

    def __init__(self, encoder, stages: int, num_classes: int, dropout: float = 0.0, engine: str = "auto",
                 checkpoint: str | None = None, scilt=None):
        super().__init__()
        vit = encoder.vit
        n = len(vit.layers)
        if not 1 <= stages <= n:
            raise UserError(f"finetune.stages={stages} must be between 1 and {n}", fix="e.g. finetune.stages=1")
        if encoder.preprocessing.norm != "sam":
            raise UserError(f"encoder {encoder.name} normalises each image by its own range; sam_finetune takes "
                            "ImageNet-normalised images", fix="use finetune.encoder=mobilesam")
        self.first = n - stages
        self.vit = vit
        self.vit.requires_grad_(False)
        trained = [*vit.layers[self.first:], vit.neck] + ([vit.patch_embed] if self.first == 0 else [])
        for m in trained:
            m.requires_grad_(True)
        self.frozen = [vit.patch_embed, *vit.layers[: self.first]] if self.first else []
        self.embedding_dim = encoder.out_channels
        self.grid = encoder.grid  # the last stage's token grid side (input size / 16 for MobileSAM)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.out_channels, num_classes)
        self.scilt = None
        if scilt is not None:  # SciLT end to end: the pooled penultimate and final stages, fused
            from lvmlt.models.scilt import SciLTHead

            dims = [vit.layers[-2].downsample.out_dim if vit.layers[-2].downsample is not None
                    else vit.layers[-2].dim, vit.layers[-1].dim]
            self.level_norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)  # the stages' scales differ
            self.scilt = SciLTHead(dims, num_classes, dim=scilt.dim, gate=scilt.gate, head=scilt.head,
                                   temperature=scilt.temperature)
            self.scilt_inference = scilt.inference
            self.embedding_dim = scilt.dim or dims[0]
        level = f"stage{self.first}" if self.first else ""
        self._runner = _Frozen(encoder.name, encoder.img_size, checkpoint, level, engine) if self.first else None
        self.train()

    def classifier_layers(self) -> list[nn.Module]:
        return [self.head] if self.scilt is None else [self.scilt]

    def representation_layers(self) -> list[nn.Module]:
        return [self.vit]

    def _frozen_tokens(self, x: torch.Tensor) -> torch.Tensor:
        precision = "bf16" if torch.is_autocast_enabled(x.device.type) and \
            torch.get_autocast_dtype(x.device.type) == torch.bfloat16 else "fp32"
        # Traced for export (ONNX), the frozen stages are part of the graph: torch's path.
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        with torch.no_grad():
            tokens = None if tracing else self._runner(x, precision)
            if tokens is None:  # torch: the same stages, no gradient
                tokens = self.vit.patch_embed(x)
                for layer in self.vit.layers[: self.first]:
                    tokens = layer(tokens)
        return tokens.detach()

    def _forward(self, batch: dict) -> dict:
        x = batch[IMAGE]
        h = self._frozen_tokens(x) if self.first else self.vit.patch_embed(x)
        levels = []
        for i, layer in enumerate(self.vit.layers):
            if i >= self.first:
                h = layer(h)
            if i >= len(self.vit.layers) - 2:
                levels.append(h)  # the penultimate and final stages' tokens
        if self.scilt is not None:
            return self._scilt(levels)
        b, _, c = h.shape
        fmap = self.vit.neck(h.transpose(1, 2).reshape(b, c, self.grid, self.grid))
        v = fmap.float().mean(dim=(2, 3))
        return {o.LOGITS: self.head(self.drop(v)), o.EMBEDDING: v, o.V_CNN: v}


    def _scilt(self, levels) -> dict:
        from lvmlt.models.scilt import inference_logits

        pooled = [norm(t.float().mean(dim=1)) for norm, t in zip(self.level_norms, levels, strict=True)]
        out = self.scilt(*pooled)
        mode = "fused" if self.training else self.scilt_inference
        return {o.LOGITS: inference_logits(out, mode), o.LEVEL_LOGITS: out["level_logits"],
                o.LEVEL_WEIGHTS: out["weights"], o.EMBEDDING: out["fused"], o.V_CNN: out["fused"]}


def build_finetune_system(cfg, spec) -> EncoderFinetune:
    """The ``sam_finetune`` system's builder (:mod:`lvmlt.systems`): ``cfg.finetune`` at ``data.image_size``."""
    from lvmlt.encoders import build_encoder

    f = cfg.finetune
    encoder = build_encoder(f.encoder, cfg.data.image_size, f.checkpoint)
    encoder.requires_grad_(True)  # the encoder is frozen on build; EncoderFinetune chooses what trains
    return EncoderFinetune(encoder, f.stages, spec.num_classes, cfg.model.dropout, f.engine, f.checkpoint,
                           cfg.scilt if f.head == "scilt" else None)
