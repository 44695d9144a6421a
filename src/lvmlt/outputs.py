"""The names of what a model returns: one definition of every key of ``model(batch)``.

A model's ``forward(batch)`` returns a dict; loss terms, evaluation and the systems'
hooks read it by these keys. Which keys a system's model returns is declared by its
registry entry (:mod:`lvmlt.systems`), so a loss term can tell whether it fits a model
from the declaration alone.
"""

from __future__ import annotations

#: B x C logits the model predicts with (what metrics, calibration and predict read).
LOGITS = "logits"
#: B x D vector the representation terms (prototype loss, ProCo, IFL) act on.
EMBEDDING = "embedding"
#: B x D pooled backbone vector (the CNN's; a probe's normalised input vector).
V_CNN = "v_cnn"
#: The latent-fused model's two branch logits, mixed as ``(1 - alpha) z_sam + alpha z_cnn``.
Z_CNN = "z_cnn"
Z_SAM = "z_sam"
BRANCHES = (Z_CNN, Z_SAM)


def mix_branches(z_cnn, z_sam, alpha: float):
    """The fused logits ``(1 - alpha) z_SAM + alpha z_CNN`` (eq. 3 of the SAM-features paper),
    of tensors or arrays alike."""
    return (1 - alpha) * z_sam + alpha * z_cnn

#: SciLT: a list of per-level heads' B x C logits, and the fusion weights.
LEVEL_LOGITS = "level_logits"
LEVEL_WEIGHTS = "weights"
