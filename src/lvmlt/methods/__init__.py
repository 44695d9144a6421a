"""The other systems of our references, on the same data, features and evaluation.

- :mod:`~lvmlt.methods.synthetic`: synthetic tail features in the encoder's latent space
  and a linear classifier (and the plain linear probe it is compared with);
- :mod:`~lvmlt.methods.scilt`: SciLT-style multi-level fusion with dual supervision, and
  LoRA for the frozen encoder;
- :mod:`~lvmlt.methods.glt` and :mod:`~lvmlt.methods.ifl`: a generalised long-tail protocol
  (ELPV's cell type as the attribute) and IFL as a registered loss term (``ifl.enabled``);
- :mod:`~lvmlt.methods.compare`: the side-by-side comparison (``python -m lvmlt.methods.compare``).

Importing this package registers the ``ifl`` term in :data:`lvmlt.training.terms.TERMS`.
"""

from lvmlt.methods import ifl  # noqa: F401  (registers the "ifl" loss term)
from lvmlt.methods.glt import GLTSpec, elpv_glt_bundles, glt_bundles
from lvmlt.methods.ifl import IFLTerm, environment_weights
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
