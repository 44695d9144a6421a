"""Frozen SAM-family image encoders, registered by name.

>>> enc = build_encoder("mobilesam", img_size=512)     # weights: `lvmlt weights fetch mobilesam`
>>> x = enc.preprocess([pil_image])                    # 1 x 3 x 512 x 512
>>> enc(x).shape                                       # 1 x 256 x 32 x 32

Encoders: ``mobilesam`` (1024 native; 512/256 work), ``litemedsam`` (256), ``sam_vit_b``,
``sam_vit_l``, ``sam_vit_h`` (1024, user checkpoint), and the random ``tiny_test`` /
``tiny_test_vit`` for unit tests.
"""

from __future__ import annotations

from lvmlt.encoders import sam_vit, tinyvit  # noqa: F401  (register the encoders)
from lvmlt.encoders.base import (
    ENCODERS,
    FrozenEncoder,
    Preprocessing,
    file_sha256,
    load_state_dict,
    resolve_geometry,
)
from lvmlt.encoders.weights import SOURCES, cache_dir, cached_path, fetch_weights, resolve_weights


def build_encoder(name: str, img_size: int | None = None, checkpoint: str | None = None) -> FrozenEncoder:
    """A frozen encoder by registry name, at ``img_size`` (None or 0 = its native size).

    Args:
        name: one of :func:`ENCODERS.names`.
        img_size: input side S; the output grid is S / 16 (S / 4 for LiteMedSAM).
        checkpoint: a checkpoint path; None = the cached official weights.
    """
    return ENCODERS.get(name)(img_size=img_size or None, checkpoint=checkpoint)


__all__ = [
    "ENCODERS",
    "SOURCES",
    "FrozenEncoder",
    "Preprocessing",
    "build_encoder",
    "cache_dir",
    "cached_path",
    "fetch_weights",
    "file_sha256",
    "load_state_dict",
    "resolve_geometry",
    "resolve_weights",
]
