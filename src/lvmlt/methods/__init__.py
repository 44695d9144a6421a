"""The other systems of our references, on the same data, features and evaluation.

- :mod:`~lvmlt.methods.synthetic`: synthetic tail features in the encoder's latent space
  and a linear classifier (and the plain linear probe it is compared with);
- :mod:`~lvmlt.methods.scilt`: SciLT-style multi-level fusion with dual supervision, and
  LoRA for the frozen encoder;
- IFL is a registered loss term (:mod:`lvmlt.losses.ifl`, ``ifl.enabled``) and runs under
  the generalised long-tail protocol, a data protocol (:mod:`lvmlt.data.glt`);
- :mod:`~lvmlt.methods.compare`: the side-by-side comparison (``python -m lvmlt.methods.compare``).
"""

from lvmlt.losses.ifl import IFLTerm, environment_weights
from lvmlt.methods.scilt import AdaptiveFusion, LoRALinear, SciLTHead, apply_lora, fit_scilt
from lvmlt.methods.synthetic import fit_linear_probe, fit_synthetic, synthesize

__all__ = [
    "AdaptiveFusion",
    "IFLTerm",
    "LoRALinear",
    "SciLTHead",
    "apply_lora",
    "environment_weights",
    "fit_linear_probe",
    "fit_scilt",
    "fit_synthetic",
    "synthesize",
]
