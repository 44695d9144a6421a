"""The other systems of our references, on the same data, features and evaluation.

- :mod:`~lvmlt.methods.synthetic`: synthetic tail features in the encoder's latent space
  and a linear classifier (and the plain linear probe it is compared with);
- :mod:`~lvmlt.methods.scilt`: SciLT-style multi-level fusion with dual supervision, and
  LoRA for the frozen encoder;
- :mod:`~lvmlt.methods.glt`: a generalised long-tail protocol (ELPV's cell type as the
  attribute), under which IFL runs; IFL itself is a registered loss term
  (:mod:`lvmlt.losses.ifl`, ``ifl.enabled``);
- :mod:`~lvmlt.methods.compare`: the side-by-side comparison (``python -m lvmlt.methods.compare``).
"""

from lvmlt.losses.ifl import IFLTerm, environment_weights
from lvmlt.methods.glt import GLTSpec, elpv_glt_bundles, glt_bundles
from lvmlt.methods.scilt import AdaptiveFusion, LoRALinear, SciLTHead, apply_lora, fit_scilt
from lvmlt.methods.synthetic import fit_linear_probe, fit_synthetic, synthesize

__all__ = [
    "AdaptiveFusion",
    "GLTSpec",
    "IFLTerm",
    "LoRALinear",
    "SciLTHead",
    "apply_lora",
    "elpv_glt_bundles",
    "environment_weights",
    "fit_linear_probe",
    "fit_scilt",
    "fit_synthetic",
    "glt_bundles",
    "synthesize",
]
