"""The decoupled second stage (Kang et al. 2020) on any model that declares its parts.

A :class:`StagedModel` names its classifier layers and the layers that make its
representation; :func:`apply_stage` then loads a finished run's weights, freezes the
representation (cRT: ``stage.freeze_backbone``), re-initialises the classifier
(``stage.reset_head``) or learns one scale per class on the frozen classifier
(LWS: ``stage.lws``). Which systems take a second stage is their registry entry's
``stages`` (:mod:`lvmlt.systems`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lvmlt import outputs as o
from lvmlt.errors import UserError
from lvmlt.models.heads import ClassScale


class StagedModel(nn.Module):
    """Base of the models a second stage acts on: ``forward`` scales the logits (and the
    branch logits) by LWS's per-class scale when one is set; frozen layers stay in eval mode.

    Subclasses implement ``_forward(batch) -> dict``, :meth:`classifier_layers` and
    :meth:`representation_layers`.
    """

    def __init__(self):
        super().__init__()
        self.class_scale: ClassScale | None = None  # LWS: one learned scale per class on a frozen classifier
        self._register_load_state_dict_pre_hook(_old_class_scale_key)
        self.frozen: list[nn.Module] = []  # stay in eval mode (BN statistics fixed) while training

    def classifier_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def representation_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def forward(self, batch: dict) -> dict:
        out = self._forward(batch)
        if self.class_scale is not None:  # a per-class scale commutes with the alpha mix
            for k in (*o.BRANCHES, o.LOGITS):
                if k in out:
                    out[k] = self.class_scale(out[k])
        return out


def _old_class_scale_key(state_dict, prefix, *args):
    """Checkpoints before :class:`ClassScale` held LWS's scales as ``class_scale``."""
    old = prefix + "class_scale"
    if old in state_dict:
        state_dict[old + ".scale"] = state_dict.pop(old)


def _load_init(model: nn.Module, init_from: str, device) -> None:
    from lvmlt import rundir

    path = Path(init_from)
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


def apply_stage(model: nn.Module, stage, device=None) -> None:
    """Decoupled second stage: load a finished run, freeze its representation, reset or rescale the head."""
    if not stage.active:
        return
    if not isinstance(model, StagedModel):
        raise UserError(
            f"the stage.* options apply to the CNN and the probes, not to {type(model).__name__}",
            fix="drop stage.* for this system",
        )
    if stage.init_from:
        _load_init(model, stage.init_from, device)
    heads = model.classifier_layers()
    if stage.freeze_backbone or stage.lws:
        head_params = {id(p) for h in heads for p in h.parameters()}
        for p in model.parameters():
            if id(p) not in head_params:
                p.requires_grad_(False)
        model.frozen = model.representation_layers()
    if stage.reset_head:
        for h in heads:
            h.reset_parameters()
    if stage.lws:
        for h in heads:
            h.requires_grad_(False)
        weight = heads[0].weight
        model.class_scale = ClassScale(weight.shape[0], device=weight.device)
