"""What the other systems of our references add beyond the core's pieces.

The linear probe (``system=sam_probe``), the synthetic tail features
(:mod:`lvmlt.features.synthetic`, ``system=synthetic_probe``), SciLT's multi-level fusion
(:mod:`lvmlt.models.scilt` with its loss term :mod:`lvmlt.losses.scilt`,
``system=scilt``), each an entry of :mod:`lvmlt.systems`, and IFL (:mod:`lvmlt.losses.ifl`, ``ifl.enabled``, under the GLT data
protocol :mod:`lvmlt.data.glt`) are all trained by the one trainer, and compared side by
side by ``lvmlt compare`` (:mod:`lvmlt.experiments.compare`). Left here:

- :mod:`~lvmlt.methods.scilt`: LoRA for the frozen encoder and SciLT end to end on images
  (PEFT; not run in the reported experiments).
"""

from lvmlt.methods.scilt import EncoderSciLT, LoRALinear, apply_lora, build_encoder_scilt

__all__ = ["EncoderSciLT", "LoRALinear", "apply_lora", "build_encoder_scilt"]
